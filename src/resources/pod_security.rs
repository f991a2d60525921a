//! Test-only: a checker of the Pod Security `restricted` profile (Kubernetes 1.33, as the
//! PodSecurity admission plugin enforces it), and the test that every pod template Berth builds
//! passes it — for the inputs in `deploy/examples/` and for every kind of agent Job.
//!
//! Independent of the builders' own defaults on purpose: it restates the rules of
//! <https://kubernetes.io/docs/concepts/security/pod-security-standards/>, so a builder that
//! drifts from them fails here.

use k8s_openapi::api::core::v1::{Container, PodSpec, SecurityContext};

/// Volume types `restricted` allows.
const ALLOWED_VOLUMES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

/// Every violation of `restricted` in `pod`, as `field: problem`; empty when it passes.
pub fn restricted_violations(pod: &PodSpec) -> Vec<String> {
    let mut out = Vec::new();
    for (flag, name) in [(pod.host_network, "hostNetwork"), (pod.host_pid, "hostPID"), (pod.host_ipc, "hostIPC")] {
        if flag == Some(true) {
            out.push(format!("spec.{name}: must not be true"));
        }
    }
    for v in pod.volumes.iter().flatten() {
        let json = serde_json::to_value(v).expect("a Volume serializes");
        let types: Vec<&String> =
            json.as_object().into_iter().flatten().map(|(k, _)| k).filter(|k| *k != "name").collect();
        for t in types {
            if !ALLOWED_VOLUMES.contains(&t.as_str()) {
                out.push(format!("spec.volumes[{}]: type {t} is not allowed", v.name));
            }
        }
    }
    let pod_ctx = pod.security_context.clone().unwrap_or_default();
    if pod_ctx.run_as_user == Some(0) {
        out.push("spec.securityContext.runAsUser: must not be 0".into());
    }
    if pod_ctx.run_as_non_root == Some(false) {
        out.push("spec.securityContext.runAsNonRoot: must not be false".into());
    }
    let pod_seccomp = pod_ctx.seccomp_profile.as_ref().map(|s| s.type_.as_str());
    if pod_seccomp.is_some_and(|t| t != "RuntimeDefault" && t != "Localhost") {
        out.push(format!("spec.securityContext.seccompProfile.type: {pod_seccomp:?} is not allowed"));
    }
    if pod_ctx.sysctls.is_some_and(|s| !s.is_empty()) {
        out.push("spec.securityContext.sysctls: Berth sets none".into());
    }
    let containers = pod.containers.iter().chain(pod.init_containers.iter().flatten());
    for c in containers {
        check_container(c, pod_ctx.run_as_non_root, pod_seccomp, &mut out);
    }
    if pod.ephemeral_containers.as_ref().is_some_and(|e| !e.is_empty()) {
        out.push("spec.ephemeralContainers: Berth builds none".into());
    }
    out
}

fn check_container(c: &Container, pod_non_root: Option<bool>, pod_seccomp: Option<&str>, out: &mut Vec<String>) {
    let at = |field: &str| format!("container {:?} securityContext.{field}", c.name);
    let sc = c.security_context.clone().unwrap_or_default();
    let SecurityContext {
        allow_privilege_escalation,
        capabilities,
        privileged,
        proc_mount,
        run_as_non_root,
        run_as_user,
        seccomp_profile,
        se_linux_options,
        app_armor_profile,
        windows_options,
        ..
    } = sc;
    if privileged == Some(true) {
        out.push(format!("{}: must not be true", at("privileged")));
    }
    if allow_privilege_escalation != Some(false) {
        out.push(format!("{}: must be false", at("allowPrivilegeEscalation")));
    }
    let caps = capabilities.unwrap_or_default();
    if !caps.drop.iter().flatten().any(|d| d == "ALL") {
        out.push(format!("{}: must include ALL", at("capabilities.drop")));
    }
    for add in caps.add.iter().flatten().filter(|a| a.as_str() != "NET_BIND_SERVICE") {
        out.push(format!("{}: {add} is not allowed", at("capabilities.add")));
    }
    // runAsNonRoot: true at the container, or at the pod and not overridden by the container.
    let non_root = run_as_non_root == Some(true) || (run_as_non_root.is_none() && pod_non_root == Some(true));
    if !non_root {
        out.push(format!("{}: must be true (here or at the pod)", at("runAsNonRoot")));
    }
    if run_as_user == Some(0) {
        out.push(format!("{}: must not be 0", at("runAsUser")));
    }
    let seccomp = seccomp_profile.as_ref().map(|s| s.type_.as_str()).or(pod_seccomp);
    if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
        out.push(format!(
            "{}: must be RuntimeDefault or Localhost (here or at the pod), is {seccomp:?}",
            at("seccompProfile")
        ));
    }
    if proc_mount.as_deref().is_some_and(|m| m != "Default") {
        out.push(format!("{}: must be Default", at("procMount")));
    }
    if let Some(se) = se_linux_options
        && (se.user.is_some() || se.role.is_some())
    {
        out.push(format!("{}: user and role must be unset", at("seLinuxOptions")));
    }
    if app_armor_profile.is_some_and(|a| a.type_ == "Unconfined") {
        out.push(format!("{}: must not be Unconfined", at("appArmorProfile")));
    }
    if windows_options.and_then(|w| w.host_process) == Some(true) {
        out.push(format!("{}: must not be true", at("windowsOptions.hostProcess")));
    }
    for p in c.ports.iter().flatten() {
        if p.host_port.is_some_and(|h| h != 0) {
            out.push(format!("container {:?} ports: hostPort is not allowed", c.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::Value;

    use super::*;
    use crate::api::backuppolicy::StorageLocation;
    use crate::resources::backup::{AgentTask, JobSettings, agent_job};

    /// The pod template of a rendered object, if it has one.
    fn pod_template(doc: &Value) -> Option<PodSpec> {
        let spec = match doc["kind"].as_str()? {
            "Deployment" | "StatefulSet" | "Job" | "DaemonSet" | "ReplicaSet" => doc.pointer("/spec/template/spec")?,
            "CronJob" => doc.pointer("/spec/jobTemplate/spec/template/spec")?,
            "Pod" => doc.get("spec")?,
            _ => return None,
        };
        Some(serde_json::from_value(spec.clone()).expect("a pod spec deserializes"))
    }

    fn describe(doc: &Value) -> String {
        format!("{} {}", doc["kind"].as_str().unwrap_or("?"), doc["metadata"]["name"].as_str().unwrap_or("?"))
    }

    #[test]
    fn the_checker_catches_what_restricted_rejects() {
        let pod: PodSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "c", "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_ADMIN"]}}}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        }))
        .unwrap();
        let v = restricted_violations(&pod).join("\n");
        for expected in [
            "hostPath is not allowed",
            "privileged: must not be true",
            "allowPrivilegeEscalation: must be false",
            "capabilities.drop: must include ALL",
            "SYS_ADMIN is not allowed",
            "runAsNonRoot: must be true",
            "seccompProfile: must be RuntimeDefault or Localhost",
        ] {
            assert!(v.contains(expected), "{expected:?} missing from\n{v}");
        }
    }

    #[test]
    fn every_pod_built_for_the_examples_passes_restricted() {
        let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
        let yaml = crate::render::render(&[examples]).expect("the examples render");
        let mut checked = Vec::new();
        for doc in yaml.split("\n---\n").map(|d| d.trim_start_matches("---\n")) {
            let Ok(value) = serde_saphyr::from_str::<Value>(doc) else { continue };
            let Some(pod) = pod_template(&value) else { continue };
            let violations = restricted_violations(&pod);
            assert!(
                violations.is_empty(),
                "{} fails Pod Security restricted:\n{}",
                describe(&value),
                violations.join("\n")
            );
            checked.push(value["kind"].as_str().unwrap_or_default().to_string());
        }
        for kind in ["Deployment", "StatefulSet", "Job"] {
            assert!(checked.iter().any(|k| k == kind), "no {kind} among the rendered examples: {checked:?}");
        }
    }

    #[test]
    fn an_app_with_its_own_security_context_passes_restricted() {
        use crate::resources::appenvironment::{DatabaseLinks, build, validate};
        let app: crate::api::AppEnvironment = serde_saphyr::from_str(
            "apiVersion: berth.dev/v1alpha1\nkind: AppEnvironment\nmetadata: {name: web, namespace: team}\nspec:\n  tier: production\n  image: x:1\n  securityContext:\n    runAsUser: 10001\n    readOnlyRootFilesystem: false\n",
        )
        .unwrap();
        let links = DatabaseLinks { linked: vec![], missing: vec![], not_ready: vec![] };
        let pod = build(&validate(&app).unwrap(), &links).deployment.spec.unwrap().template.spec.unwrap();
        let violations = restricted_violations(&pod);
        assert!(violations.is_empty(), "{}", violations.join("\n"));
    }

    #[test]
    fn every_agent_job_passes_restricted() {
        let owner = OwnerReference {
            api_version: "berth.dev/v1alpha1".into(),
            kind: "Restore".into(),
            name: "r".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let storage: StorageLocation = serde_json::from_value(serde_json::json!({
            "bucket": "b", "credentialsSecret": "s3", "caSecret": "ca", "encryptionKeySecret": "key"
        }))
        .unwrap();
        let (instance, pvc, snapshot) = ("db".to_string(), "data".to_string(), "abc".to_string());
        for task in [
            AgentTask::BackupPostgres { instance: instance.clone() },
            AgentTask::BackupRabbitmq { instance: instance.clone() },
            AgentTask::BackupVolume { pvc: pvc.clone() },
            AgentTask::RestorePostgres { instance: instance.clone(), snapshot: snapshot.clone() },
            AgentTask::RestoreRabbitmq { instance: instance.clone(), snapshot: snapshot.clone() },
            AgentTask::RestoreVolume { pvc: pvc.clone(), snapshot: snapshot.clone() },
            AgentTask::CountVolume { pvc: pvc.clone(), recorded: Default::default() },
        ] {
            let settings = JobSettings {
                owner: &owner,
                namespace: "ns",
                name: "job",
                image: "berth:test",
                storage: &storage,
                tags: vec![],
                consumer: Some(crate::resources::backup::jobs::VolumeConsumer {
                    node_name: Some("node-1".into()),
                    ..Default::default()
                }),
                deadline_seconds: 60,
                backoff_limit: 1,
                service_account: Some("berth-backup"),
            };
            let job = agent_job(&task, &settings);
            let pod = job.spec.unwrap().template.spec.unwrap();
            let violations = restricted_violations(&pod);
            assert!(violations.is_empty(), "{} Job fails restricted:\n{}", task.name(), violations.join("\n"));
        }
    }
}
