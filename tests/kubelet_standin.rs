//! The kubelet stand-in (tests/support/kubelet.rs) against the real control plane: the real
//! ReplicaSet, Job, PV, namespace and garbage-collection controllers act on what it reports.

use crate::support;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::kubelet::Kubelet;
use support::objects::create;
use support::wait::eventually;

const WAIT: Duration = Duration::from_secs(120);
const IMAGE: &str = "ghcr.io/berth/berth:test";

async fn namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

async fn claim(client: &kube::Client, ns: &str, name: &str, size: &str) -> PersistentVolumeClaim {
    create(
        client,
        ns,
        json!({"metadata": {"name": name}, "spec": {"accessModes": ["ReadWriteOnce"],
               "resources": {"requests": {"storage": size}}}}),
    )
    .await
}

async fn bound(client: &kube::Client, ns: &str, name: &str) -> PersistentVolumeClaim {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    eventually(&format!("claim {ns}/{name} Bound"), WAIT, || async {
        let pvc = api.get(name).await.ok()?;
        (pvc.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(pvc)
    })
    .await
}

/// A Job with one container running `berth <args>` and the claim `data` at /data.
fn job(name: &str, args: &[&str], security: Value, extra: Value) -> Value {
    let mut pod = json!({
        "restartPolicy": "Never",
        "securityContext": security,
        "containers": [{"name": "main", "image": IMAGE, "command": ["berth"], "args": args,
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
    });
    if let (Some(pod), Some(extra)) = (pod.as_object_mut(), extra.as_object()) {
        pod.extend(extra.clone());
    }
    json!({"metadata": {"name": name}, "spec": {"backoffLimit": 0, "template": {"spec": pod}}})
}

/// The Job once it has a `Complete` or `Failed` condition: `(type, reason)`.
async fn finished(client: &kube::Client, ns: &str, name: &str) -> (String, String) {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    eventually(&format!("Job {ns}/{name} to finish"), WAIT, || async {
        let job = api.get(name).await.ok()?;
        let c = job
            .status?
            .conditions?
            .into_iter()
            .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
        Some((c.type_, c.reason.unwrap_or_default()))
    })
    .await
}

async fn job_pods(client: &kube::Client, ns: &str, job: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
    Api::<Pod>::namespaced(client.clone(), ns).list(&lp).await.unwrap().items
}

fn condition(pod: &Pod, ty: &str) -> Option<String> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == ty).map(|c| c.status.clone())
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0, "mkfifo {}", path.display());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_pods_become_ready_unless_refused_and_namespaces_delete() {
    let cluster = Cluster::start().await;
    let client = cluster.client();
    let kubelet = cluster.kubelet();
    let ns = "shop";
    namespace(&client, ns).await;

    // The node: Ready, with its lease held.
    let node = Api::<Node>::all(client.clone()).get(Kubelet::NODE).await.unwrap();
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["topology.kubernetes.io/zone"], "zone-a");
    assert_eq!(labels["kubernetes.io/hostname"], Kubelet::NODE);
    let ready = node.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.status, "True");
    let lease: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let lease = lease.get(Kubelet::NODE).await.unwrap().spec.unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some(Kubelet::NODE));

    // A Deployment becomes available through the real ReplicaSet controller.
    let _: Deployment = create(
        &client,
        ns,
        json!({"metadata": {"name": "web"}, "spec": {"replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "containers": [{"name": "web", "image": "example.com/web:1"}]}}}}),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually("Deployment web with 2 available replicas", WAIT, || async {
        let d = deployments.get("web").await.ok()?;
        (d.status?.available_replicas == Some(2)).then_some(())
    })
    .await;
    let pods =
        Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default().labels("app=web")).await.unwrap().items;
    assert_eq!(pods.len(), 2);
    let mut ips = Vec::new();
    for p in &pods {
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some(Kubelet::NODE));
        let status = p.status.as_ref().unwrap();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(condition(p, "PodScheduled").as_deref(), Some("True"), "bound through pods/binding");
        let cs = &status.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready && cs.started == Some(true) && cs.state.as_ref().unwrap().running.is_some(), "{cs:?}");
        ips.push(status.pod_ip.clone().unwrap());
    }
    assert!(ips.iter().all(|ip| ip.starts_with("10.244.")), "{ips:?}");
    assert_ne!(ips[0], ips[1]);

    // A pod the scheduler cannot place stays unbound, with the reason; it is bound once it fits.
    let _: Pod = create(
        &client,
        ns,
        json!({"metadata": {"name": "ssd-only"}, "spec": {"nodeSelector": {"disk": "ssd"},
            "containers": [{"name": "app", "image": "example.com/app:1"}]}}),
    )
    .await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let p = eventually("ssd-only Unschedulable", WAIT, || async {
        let p = pods_api.get("ssd-only").await.ok()?;
        let c = p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "PodScheduled")?.clone();
        (c.reason.as_deref() == Some("Unschedulable")).then_some((p, c))
    })
    .await;
    assert!(p.0.spec.unwrap().node_name.is_none());
    assert!(p.1.message.unwrap().contains("didn't match Pod's node affinity/selector"));
    Api::<Node>::all(client.clone())
        .patch(Kubelet::NODE, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"disk": "ssd"}}})))
        .await
        .unwrap();
    eventually("ssd-only Running", WAIT, || async {
        let p = pods_api.get("ssd-only").await.ok()?;
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;

    // runAsNonRoot against the image's USER, as the kubelet checks it.
    kubelet.set_image_user("example.com/root-name", "root");
    kubelet.set_image_user("example.com/root-uid:2", "0");
    let non_root = |name: &str, image: &str, run_as_user: Option<i64>| {
        json!({"metadata": {"name": name}, "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": run_as_user},
            "containers": [{"name": "app", "image": image}]}})
    };
    let a: Pod = create(&client, ns, non_root("root-name", "example.com/root-name:1", None)).await;
    let b: Pod = create(&client, ns, non_root("root-uid", "example.com/root-uid:2", None)).await;
    let _: Pod = create(&client, ns, non_root("explicit-user", "example.com/root-name:1", Some(1000))).await;
    let _: Pod = create(&client, ns, non_root("default-user", "example.com/other:1", None)).await;
    let waiting = |name: &'static str| {
        let pods_api = pods_api.clone();
        async move {
            eventually(&format!("{name} waiting"), WAIT, || async {
                let p = pods_api.get(name).await.ok()?;
                let w = p.status.as_ref()?.container_statuses.as_ref()?[0].state.as_ref()?.waiting.clone()?;
                Some((p, w))
            })
            .await
        }
    };
    let (p, w) = waiting("root-name").await;
    assert_eq!(w.reason.as_deref(), Some("CreateContainerConfigError"));
    assert_eq!(
        w.message.unwrap(),
        format!(
            "container has runAsNonRoot and image has non-numeric user (root), cannot verify user is non-root (pod: \"root-name_shop({})\", container: app)",
            a.metadata.uid.unwrap()
        )
    );
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Pending"));
    assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));
    let (p, w) = waiting("root-uid").await;
    assert_eq!(w.reason.as_deref(), Some("CreateContainerConfigError"));
    assert_eq!(
        w.message.unwrap(),
        format!(
            "container has runAsNonRoot and image will run as root (pod: \"root-uid_shop({})\", container: app)",
            b.metadata.uid.unwrap()
        )
    );
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
    for name in ["explicit-user", "default-user"] {
        eventually(&format!("{name} Ready"), WAIT, || async {
            let p = pods_api.get(name).await.ok()?;
            (condition(&p, "Ready").as_deref() == Some("True")).then_some(())
        })
        .await;
    }

    // Deleting the namespace finishes: pods (a running Job's too, whose process is killed),
    // claims and their volumes go.
    let _ = claim(&client, ns, "data", "1Gi").await;
    let pvc = bound(&client, ns, "data").await;
    let pv = pvc.spec.unwrap().volume_name.unwrap();
    let dir = kubelet.pvc_dir(ns, "data").await.expect("the claim's directory");
    let fifo = dir.join("never-written-fifo");
    mkfifo(&fifo);
    let _: Job = create(
        &client,
        ns,
        job("blocked", &["render", "-f", "/data/never-written-fifo"], json!({"runAsUser": 1000}), json!({})),
    )
    .await;
    let needle = fifo.display().to_string();
    eventually("the Job's process blocked on the FIFO", WAIT, || async {
        (!processes_with(&needle).is_empty()).then_some(())
    })
    .await;
    let pod = &job_pods(&client, ns, "blocked").await[0];
    assert_eq!(pod.status.as_ref().unwrap().phase.as_deref(), Some("Running"));

    Api::<Namespace>::all(client.clone()).delete(ns, &DeleteParams::default()).await.unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    eventually("namespace shop deleted", WAIT, || async {
        matches!(namespaces.get_opt(ns).await, Ok(None)).then_some(())
    })
    .await;
    assert!(processes_with(&needle).is_empty(), "the deleted pod's process still runs");
    let runs = kubelet.runs_of("blocked");
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0].exit_code, None, "killed: {runs:#?}");
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    eventually("the released volume deleted", WAIT, || async {
        matches!(pvs.get_opt(&pv).await, Ok(None)).then_some(())
    })
    .await;
    assert!(!dir.exists(), "the volume's directory removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_pods_run_berth_as_their_user_and_the_job_controller_finishes_them() {
    let cluster = Cluster::start().await;
    let client = cluster.client();
    let kubelet = cluster.kubelet();
    let ns = "jobs";
    namespace(&client, ns).await;

    // With an fsGroup the fresh volume is the group's; the process runs as runAsUser.
    claim(&client, ns, "data", "1Gi").await;
    let _: Job = create(
        &client,
        ns,
        job(
            "write-crds",
            &["crds", "--dir", "/data/crds"],
            json!({"runAsNonRoot": true, "runAsUser": 1234, "runAsGroup": 2345, "fsGroup": 3456}),
            json!({}),
        ),
    )
    .await;
    let (ty, reason) = finished(&client, ns, "write-crds").await;
    assert_eq!(ty, "Complete", "{reason}: {:#?}", kubelet.runs_of("write-crds"));
    let runs = kubelet.runs_of("write-crds");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].exit_code, Some(0));
    assert_eq!(
        runs[0].args,
        ["crds", "--dir", &format!("{}/crds", kubelet.pvc_dir(ns, "data").await.unwrap().display())]
    );
    let dir = kubelet.pvc_dir(ns, "data").await.unwrap().join("crds");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!files.is_empty(), "berth crds wrote nothing into {}", dir.display());
    for f in &files {
        let m = std::fs::metadata(f).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (1234, 3456),
            "{}: the runAsUser's, in the fsGroup's setgid directory",
            f.display()
        );
    }
    let pod = &job_pods(&client, ns, "write-crds").await[0];
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Succeeded"));
    let terminated = status.container_statuses.as_ref().unwrap()[0].state.as_ref().unwrap().terminated.clone().unwrap();
    assert_eq!((terminated.exit_code, terminated.reason.as_deref()), (0, Some("Completed")));

    // Without an fsGroup the same user cannot write into the volume's root (root, 0755): the
    // pod fails with the process's stderr, and the Job controller fails the Job.
    claim(&client, ns, "fresh", "1Gi").await;
    let mut spec = job("no-fsgroup", &["crds", "--dir", "/data/crds"], json!({"runAsUser": 1234}), json!({}));
    spec["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = json!("fresh");
    let _: Job = create(&client, ns, spec).await;
    let (ty, reason) = finished(&client, ns, "no-fsgroup").await;
    assert_eq!((ty.as_str(), reason.as_str()), ("Failed", "BackoffLimitExceeded"));
    let pod = &job_pods(&client, ns, "no-fsgroup").await[0];
    let status = pod.status.as_ref().unwrap();
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let terminated = status.container_statuses.as_ref().unwrap()[0].state.as_ref().unwrap().terminated.clone().unwrap();
    assert_eq!(terminated.exit_code, 1);
    assert_eq!(terminated.reason.as_deref(), Some("Error"));
    assert!(terminated.message.as_deref().unwrap_or("").contains("Permission denied"), "{terminated:?}");
    let fresh = kubelet.pvc_dir(ns, "fresh").await.unwrap();
    assert!(!fresh.join("crds").exists());
    assert_eq!(kubelet.runs_of("no-fsgroup")[0].user, Some((1234, 1234)));

    // The pod's activeDeadlineSeconds: the kubelet kills it and fails it DeadlineExceeded.
    let dir = kubelet.pvc_dir(ns, "data").await.unwrap();
    mkfifo(&dir.join("deadline-fifo"));
    let _: Job = create(
        &client,
        ns,
        job(
            "deadline",
            &["render", "-f", "/data/deadline-fifo"],
            json!({"runAsUser": 1234}),
            json!({"activeDeadlineSeconds": 3}),
        ),
    )
    .await;
    let (ty, _) = finished(&client, ns, "deadline").await;
    assert_eq!(ty, "Failed");
    let pod = &job_pods(&client, ns, "deadline").await[0];
    let status = pod.status.as_ref().unwrap();
    assert_eq!((status.phase.as_deref(), status.reason.as_deref()), (Some("Failed"), Some("DeadlineExceeded")));
    assert_eq!(kubelet.runs_of("deadline")[0].exit_code, None);
    assert!(processes_with(&dir.join("deadline-fifo").display().to_string()).is_empty());

    // A Secret named by the pod but missing: the container waits (CreateContainerConfigError),
    // and starts once the Secret exists.
    let mut spec = job("needs-secret", &["--version"], json!({"runAsUser": 1234}), json!({}));
    spec["spec"]["template"]["spec"]["containers"][0]["env"] =
        json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]);
    let _: Job = create(&client, ns, spec).await;
    eventually("needs-secret waiting for its Secret", WAIT, || async {
        let pod = job_pods(&client, ns, "needs-secret").await.into_iter().next()?;
        let w = pod.status?.container_statuses?[0].state.clone()?.waiting?;
        (w.reason.as_deref() == Some("CreateContainerConfigError")
            && w.message.as_deref().is_some_and(|m| m.contains("\"late\" not found")))
        .then_some(())
    })
    .await;
    let _: Secret = create(&client, ns, json!({"metadata": {"name": "late"}, "stringData": {"token": "s3cret"}})).await;
    let (ty, _) = finished(&client, ns, "needs-secret").await;
    assert_eq!(ty, "Complete");
    let run = &kubelet.runs_of("needs-secret")[0];
    assert_eq!(run.env["TOKEN"], "s3cret");
    assert!(run.stdout.starts_with("berth "), "{run:?}");
    // The service account volume the real admission plugin added: a bound token from the
    // TokenRequest API, the cluster CA the controller-manager published, the namespace.
    let pod = &job_pods(&client, ns, "needs-secret").await[0];
    let volume =
        pod.spec.as_ref().unwrap().volumes.as_ref().unwrap().iter().find(|v| v.name.starts_with("kube-api-access-"));
    let volume = cluster
        .dir()
        .join("kubelet/pods")
        .join(pod.metadata.uid.as_deref().unwrap())
        .join(format!("vol-{}", volume.expect("an automounted token volume").name));
    let token = std::fs::read_to_string(volume.join("token")).unwrap();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert!(std::fs::read_to_string(volume.join("ca.crt")).unwrap().contains("BEGIN CERTIFICATE"));
    assert_eq!(std::fs::read_to_string(volume.join("namespace")).unwrap(), ns);

    // restartPolicy OnFailure restarts in place; the real Job controller counts the restart
    // against backoffLimit 0, fails the Job and deletes the pod.
    let mut spec = job("crashing", &["render", "-f", "/data/missing.yaml"], json!({"runAsUser": 1234}), json!({}));
    spec["spec"]["template"]["spec"]["restartPolicy"] = json!("OnFailure");
    let _: Job = create(&client, ns, spec).await;
    let (ty, reason) = finished(&client, ns, "crashing").await;
    assert_eq!((ty.as_str(), reason.as_str()), ("Failed", "BackoffLimitExceeded"));
    let runs = kubelet.runs_of("crashing");
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_ne!(runs[0].exit_code, Some(0));
    eventually("the crashing pod deleted", WAIT, || async {
        job_pods(&client, ns, "crashing").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_provisioned_grown_and_reclaimed_and_certificates_issued() {
    let cluster = Cluster::start().await;
    let client = cluster.client();
    let kubelet = cluster.kubelet();
    let ns = "store";
    namespace(&client, ns).await;

    // Provisioned by the stand-in, bound by the real PV controller, default class assigned by
    // the real admission plugin.
    let created = claim(&client, ns, "data", "1Gi").await;
    assert_eq!(created.spec.as_ref().unwrap().storage_class_name.as_deref(), Some("standard"));
    let pvc = bound(&client, ns, "data").await;
    let pv_name = pvc.spec.as_ref().unwrap().volume_name.clone().unwrap();
    assert_eq!(pv_name, format!("pvc-{}", created.metadata.uid.unwrap()));
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs.get(&pv_name).await.unwrap();
    assert_eq!(pv.metadata.annotations.as_ref().unwrap()["pv.kubernetes.io/provisioned-by"], "berth.test/hostpath");
    let spec = pv.spec.unwrap();
    assert_eq!(spec.capacity.unwrap()["storage"].0, "1Gi");
    assert_eq!(spec.csi.unwrap().driver, "hostpath.berth.test");
    assert_eq!(pvc.status.as_ref().unwrap().capacity.as_ref().unwrap()["storage"].0, "1Gi");
    let dir = kubelet.pvc_dir(ns, "data").await.unwrap();
    let m = std::fs::metadata(&dir).unwrap();
    assert!(m.is_dir());
    assert_eq!((m.uid(), m.mode() & 0o7777), (0, 0o755), "a fresh volume's root");

    // Grown through the real expansion admission (allowVolumeExpansion) and the stand-in's resizer.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    claims
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": "3Gi"}}}})),
        )
        .await
        .unwrap();
    eventually("claim data at 3Gi", WAIT, || async {
        let pvc = claims.get("data").await.ok()?;
        (pvc.status?.capacity?.get("storage")?.0 == "3Gi").then_some(())
    })
    .await;
    assert_eq!(pvs.get(&pv_name).await.unwrap().spec.unwrap().capacity.unwrap()["storage"].0, "3Gi");

    // Deleted with its claim (reclaim policy Delete), directory and all.
    claims.delete("data", &DeleteParams::default()).await.unwrap();
    eventually("the volume deleted", WAIT, || async { matches!(pvs.get_opt(&pv_name).await, Ok(None)).then_some(()) })
        .await;
    assert!(!dir.exists());

    // cert-manager: a Certificate gets its TLS Secret and Ready=True; new dnsNames, new certificate.
    cluster
        .install_crds_from_file(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cluster/cert-manager-certificate-crd.yaml"),
        )
        .await;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    );
    let certs: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let cert: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "web"},
        "spec": {"secretName": "web-tls", "dnsNames": ["web.example.com"],
                 "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}},
    }))
    .unwrap();
    certs.create(&PostParams::default(), &cert).await.unwrap();
    let ready = |generation: i64| {
        let certs = certs.clone();
        async move {
            eventually(&format!("Certificate web Ready at generation {generation}"), WAIT, || async {
                let c = certs.get("web").await.ok()?;
                let status = c.data.get("status")?.clone();
                status["conditions"]
                    .as_array()?
                    .iter()
                    .any(|c| {
                        c["type"] == "Ready"
                            && c["status"] == "True"
                            && c["reason"] == "Ready"
                            && c["observedGeneration"] == generation
                    })
                    .then_some(status)
            })
            .await
        }
    };
    let status = ready(1).await;
    assert!(status["notAfter"].is_string(), "{status}");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = secrets.get("web-tls").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(secret.metadata.annotations.as_ref().unwrap()["cert-manager.io/certificate-name"], "web");
    let (sans, key_matches) = inspect_tls(&secret);
    assert_eq!(sans, "DNS:web.example.com");
    assert!(key_matches, "tls.key is the key of tls.crt");

    certs
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dnsNames": ["web.example.org", "www.example.org"]}})),
        )
        .await
        .unwrap();
    let status = ready(2).await;
    assert_eq!(status["revision"], 2);
    let (sans, key_matches) = inspect_tls(&secrets.get("web-tls").await.unwrap());
    assert_eq!(sans, "DNS:web.example.org, DNS:www.example.org");
    assert!(key_matches);
}

/// `(subjectAltName as openssl prints it, whether tls.key belongs to tls.crt)`.
fn inspect_tls(secret: &Secret) -> (String, bool) {
    let data: &BTreeMap<String, k8s_openapi::ByteString> = secret.data.as_ref().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let crt = tmp.path().join("tls.crt");
    let key = tmp.path().join("tls.key");
    std::fs::write(&crt, &data["tls.crt"].0).unwrap();
    std::fs::write(&key, &data["tls.key"].0).unwrap();
    assert_eq!(data["ca.crt"].0, data["tls.crt"].0, "self-signed: its own CA");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let crt_s = crt.to_str().unwrap();
    let text = openssl(&["x509", "-noout", "-ext", "subjectAltName", "-in", crt_s]);
    let sans = text.lines().nth(1).unwrap_or("").trim().to_string();
    let from_cert = openssl(&["x509", "-noout", "-pubkey", "-in", crt_s]);
    let from_key = openssl(&["pkey", "-pubout", "-in", key.to_str().unwrap()]);
    (sans, from_cert == from_key)
}

/// A served pod (`Kubelet::run_image`) whose process exits is restarted with the kubelet's
/// back-off and reports it; deleting it stops the process before the pod goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_pods_restart_after_an_exit_and_stop_when_deleted() {
    let cluster = Cluster::start().await;
    let client = cluster.client();
    let kubelet = cluster.kubelet();
    kubelet.run_image("example.com/operator");
    namespace(&client, "ops").await;
    // No service-account token, so no KUBECONFIG: the operator cannot build its client and exits 1.
    let _: Pod = create(
        &client,
        "ops",
        json!({"metadata": {"name": "op"}, "spec": {"automountServiceAccountToken": false,
            "containers": [{"name": "operator", "image": "example.com/operator:1", "args": ["operator"],
                "ports": [{"containerPort": 8080}]}]}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "ops");
    let status = eventually("op in CrashLoopBackOff after its first exit", WAIT, || async {
        let cs = pods.get("op").await.ok()?.status?.container_statuses?.remove(0);
        let waiting = cs.state.as_ref()?.waiting.as_ref()?;
        (waiting.reason.as_deref() == Some("CrashLoopBackOff") && cs.restart_count >= 1).then_some(cs)
    })
    .await;
    assert!(!status.ready, "{status:?}");
    let last = status.last_state.and_then(|s| s.terminated).expect("lastState.terminated");
    assert_eq!(last.exit_code, 1);
    assert!(last.message.unwrap_or_default().contains("cannot configure the Kubernetes client"));
    let served = kubelet.served_pods();
    assert_eq!(served.len(), 1);
    assert_ne!(served[0].ports[&8080], 8080, "the containerPort is moved to a free loopback port");

    pods.delete("op", &DeleteParams::default()).await.unwrap();
    eventually("op deleted and its process gone", WAIT, || async {
        (pods.get_opt("op").await.ok()?.is_none() && kubelet.served_pods().is_empty()).then_some(())
    })
    .await;
}
