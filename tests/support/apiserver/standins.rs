//! Stand-ins for the built-in controllers (and cert-manager), driven by the store's change
//! feed (no polling). Their writes go straight to the store: not counted as requests, but
//! they bump resourceVersions and produce watch events like real controllers' writes.
//! A stand-in writes only when the status it computes differs, so it settles.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use super::store::{EvType, Inner, ResKey, WriteCtx, meta_str, now_rfc3339};
use super::{JobOutcome, Shared, StandIn};

fn key(g: &str, p: &str) -> ResKey {
    (g.to_string(), p.to_string())
}

fn which(k: &ResKey) -> Option<StandIn> {
    match (k.0.as_str(), k.1.as_str()) {
        ("apps", "deployments") => Some(StandIn::Deployments),
        ("apps", "statefulsets") => Some(StandIn::StatefulSets),
        ("cert-manager.io", "certificates") => Some(StandIn::Certificates),
        ("batch", "jobs") => Some(StandIn::Jobs),
        _ => None,
    }
}

/// Jobs already started (by uid).
fn started() -> &'static Mutex<HashSet<String>> {
    static S: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    S.get_or_init(Default::default)
}

pub async fn run(sh: Arc<Shared>) {
    let mut rx = sh.store.all_tx.subscribe();
    sweep(&sh);
    loop {
        match rx.recv().await {
            Ok(ev) => {
                if ev.ty == EvType::Deleted {
                    continue;
                }
                if let Some(w) = which(&ev.key) {
                    let name = ev.name().to_string();
                    schedule(&sh, w, ev.key.clone(), ev.ns.clone(), name);
                }
            }
            Err(RecvError::Lagged(_)) => sweep(&sh),
            Err(RecvError::Closed) => break,
        }
    }
}

/// Re-examine every object the stand-ins care about (after a lag or when one is switched on).
pub fn kick(sh: &Arc<Shared>) {
    sweep(sh);
}

fn sweep(sh: &Arc<Shared>) {
    for (g, p) in
        [("apps", "deployments"), ("apps", "statefulsets"), ("cert-manager.io", "certificates"), ("batch", "jobs")]
    {
        let k = key(g, p);
        let objs = sh.store.lock().list(&k, None);
        for o in objs {
            let ns = meta_str(&o, "namespace").unwrap_or("").to_string();
            let name = meta_str(&o, "name").unwrap_or("").to_string();
            schedule(sh, which(&k).unwrap(), k.clone(), ns, name);
        }
    }
}

fn schedule(sh: &Arc<Shared>, w: StandIn, k: ResKey, ns: String, name: String) {
    if !sh.standin_on(w) {
        return;
    }
    let delay = sh.opts.standin_delay;
    if delay.is_zero() {
        act(sh, w, &k, &ns, &name);
    } else {
        let sh = sh.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if sh.standin_on(w) {
                act(&sh, w, &k, &ns, &name);
            }
        });
    }
}

fn act(sh: &Arc<Shared>, w: StandIn, k: &ResKey, ns: &str, name: &str) {
    let mut store = sh.store.lock();
    let Some(obj) = store.get(k, ns, name) else {
        return;
    };
    if obj["metadata"].get("deletionTimestamp").is_some() {
        return;
    }
    match w {
        StandIn::Deployments => {
            let st = deployment_status(&obj);
            store.write_status(k, ns, name, st);
        }
        StandIn::StatefulSets => {
            statefulset_pvcs(&mut store, &obj, ns);
            let st = statefulset_status(&obj);
            store.write_status(k, ns, name, st);
        }
        StandIn::Certificates => {
            certificate_secret(&mut store, &obj, ns);
            let st = certificate_status(&obj);
            store.write_status(k, ns, name, st);
        }
        StandIn::Jobs => {
            drop(store);
            job(sh, k, ns, &obj);
        }
    }
}

fn gen_of(o: &Value) -> i64 {
    o["metadata"]["generation"].as_i64().unwrap_or(1)
}

fn replicas(o: &Value) -> i64 {
    o["spec"]["replicas"].as_i64().unwrap_or(1)
}

/// A condition, keeping the old transition time when the status did not change.
fn condition(old: &Value, ty: &str, status: &str, reason: &str, message: &str, extra: Value) -> Value {
    let prev = old["status"]["conditions"].as_array().and_then(|cs| cs.iter().find(|c| c["type"] == ty));
    let ts = match prev {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now_rfc3339()),
    };
    let mut c = json!({"type": ty, "status": status, "reason": reason, "message": message, "lastTransitionTime": ts});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            let v = if v == "$keep" {
                prev.and_then(|p| p.get(k).cloned()).unwrap_or_else(|| ts.clone())
            } else {
                v.clone()
            };
            c.insert(k.clone(), v);
        }
    }
    c
}

fn set_nonzero(st: &mut Value, k: &str, n: i64) {
    if n != 0 {
        st[k] = json!(n);
    }
}

fn deployment_status(o: &Value) -> Value {
    let n = replicas(o);
    let name = meta_str(o, "name").unwrap_or("");
    let mut st = json!({"observedGeneration": gen_of(o)});
    for f in ["replicas", "readyReplicas", "availableReplicas", "updatedReplicas"] {
        set_nonzero(&mut st, f, n);
    }
    let keep = json!({"lastUpdateTime": "$keep"});
    st["conditions"] = json!([
        condition(
            o,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            keep.clone()
        ),
        condition(
            o,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{name}-{}\" has successfully progressed.", revision_hash(&o["spec"]["template"])),
            keep
        ),
    ]);
    st
}

fn revision_hash(v: &Value) -> String {
    let s = v.to_string();
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("{:x}", h & 0xff_ffff_ffff)
}

fn statefulset_status(o: &Value) -> Value {
    let n = replicas(o);
    let name = meta_str(o, "name").unwrap_or("");
    let rev = format!("{name}-{}", revision_hash(&o["spec"]["template"]));
    let mut st = json!({"observedGeneration": gen_of(o), "replicas": n, "currentRevision": rev, "updateRevision": rev, "collisionCount": 0});
    for f in ["readyReplicas", "currentReplicas", "updatedReplicas", "availableReplicas"] {
        set_nonzero(&mut st, f, n);
    }
    st
}

fn statefulset_pvcs(store: &mut Inner, sts: &Value, ns: &str) {
    let Some(tmpls) = sts["spec"]["volumeClaimTemplates"].as_array() else {
        return;
    };
    let pvc_key = key("", "persistentvolumeclaims");
    let Some(rt) = store.types.get(&pvc_key).cloned() else {
        return;
    };
    let sts_name = meta_str(sts, "name").unwrap_or("");
    for t in tmpls {
        let tname = meta_str(t, "name").unwrap_or("data");
        for i in 0..replicas(sts) {
            let name = format!("{tname}-{sts_name}-{i}");
            if store.get(&pvc_key, ns, &name).is_some() {
                continue;
            }
            let mut labels = sts["spec"]["selector"]["matchLabels"].clone();
            if let (Some(l), Some(tl)) = (labels.as_object_mut(), t["metadata"]["labels"].as_object()) {
                for (k, v) in tl {
                    l.insert(k.clone(), v.clone());
                }
            }
            let mut pvc = json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": ns},
                "spec": t["spec"].clone(),
            });
            if labels.is_object() {
                pvc["metadata"]["labels"] = labels;
            }
            if pvc["spec"].get("volumeName").is_none() {
                pvc["spec"]["volumeName"] = json!(format!("pv-{ns}-{name}"));
            }
            let mut ctx = WriteCtx::default();
            if store.create(&rt, ns, pvc, &mut ctx).is_ok() {
                let st = json!({
                    "phase": "Bound",
                    "accessModes": t["spec"]["accessModes"].clone(),
                    "capacity": t["spec"]["resources"]["requests"].clone(),
                });
                store.write_status(&pvc_key, ns, &name, st);
            }
        }
    }
}

fn certificate_status(o: &Value) -> Value {
    let created = meta_str(o, "creationTimestamp").unwrap_or("").to_string();
    let not_after = created
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| t.checked_add(jiff::SignedDuration::from_hours(24 * 90)).ok())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default();
    json!({
        "conditions": [condition(o, "Ready", "True", "Ready", "Certificate is up to date and has not expired",
            json!({"observedGeneration": gen_of(o)}))],
        "notBefore": created,
        "notAfter": not_after,
        "revision": 1,
    })
}

fn certificate_secret(store: &mut Inner, cert: &Value, ns: &str) {
    let Some(secret_name) = cert["spec"]["secretName"].as_str() else {
        return;
    };
    let sk = key("", "secrets");
    if store.get(&sk, ns, secret_name).is_some() {
        return;
    }
    let Some(rt) = store.types.get(&sk).cloned() else {
        return;
    };
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": secret_name, "namespace": ns, "annotations": {
            "cert-manager.io/certificate-name": meta_str(cert, "name").unwrap_or(""),
        }},
        // base64 of "test-certificate" / "test-key"
        "data": {"tls.crt": "dGVzdC1jZXJ0aWZpY2F0ZQ==", "tls.key": "dGVzdC1rZXk=", "ca.crt": "dGVzdC1jZXJ0aWZpY2F0ZQ=="},
    });
    let _ = store.create(&rt, ns, secret, &mut WriteCtx::default());
}

fn job(sh: &Arc<Shared>, k: &ResKey, ns: &str, obj: &Value) {
    let uid = meta_str(obj, "uid").unwrap_or("").to_string();
    if obj["status"].get("startTime").is_some() || !started().lock().unwrap().insert(uid) {
        return;
    }
    let name = meta_str(obj, "name").unwrap_or("").to_string();
    let start = now_rfc3339();
    sh.store.lock().write_status(
        k,
        ns,
        &name,
        json!({"startTime": start, "active": 1, "ready": 0, "terminating": 0, "uncountedTerminatedPods": {}}),
    );
    let runner = sh.job_runner.read().unwrap().clone();
    let default = sh.opts.job_default.clone();
    let (sh2, k2, ns2, job) = (sh.clone(), k.clone(), ns.to_string(), obj.clone());
    let finish = move |outcome: JobOutcome| {
        let end = now_rfc3339();
        let cond = |ty: &str, reason: &str, msg: &str| json!({"type": ty, "status": "True", "reason": reason, "message": msg, "lastProbeTime": end, "lastTransitionTime": end});
        let st = match outcome {
            JobOutcome::Pending => return,
            JobOutcome::Succeeded => json!({
                "startTime": start, "completionTime": end, "succeeded": 1, "ready": 0, "terminating": 0,
                "uncountedTerminatedPods": {},
                "conditions": [
                    cond("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                    cond("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
                ],
            }),
            JobOutcome::Failed(msg) => json!({
                "startTime": start, "failed": 1, "ready": 0, "terminating": 0,
                "uncountedTerminatedPods": {},
                "conditions": [
                    cond("FailureTarget", "BackoffLimitExceeded", &msg),
                    cond("Failed", "BackoffLimitExceeded", &msg),
                ],
            }),
        };
        sh2.store.lock().write_status(&k2, &ns2, &name, st);
    };
    match runner {
        Some(r) => {
            tokio::spawn(async move {
                let outcome = r(job).await;
                finish(outcome);
            });
        }
        None => finish(default),
    }
}
