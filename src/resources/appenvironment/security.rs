//! The application container's securityContext: the user's `spec.securityContext` merged field
//! by field over Berth's defaults, which pass the Pod Security `restricted` profile.
//!
//! A user field wins where it keeps the pod within `restricted` (a numeric `runAsUser`, a
//! writable root file system, a Localhost seccomp profile, `NET_BIND_SERVICE`, ...). A field
//! that would weaken the profile is never applied silently: it is a [`FieldError`], which the
//! controller reports as `Ready=False` with reason `InvalidSpec` (a namespace that enforces
//! `restricted` would reject the pods otherwise, and one that does not would run them with
//! less protection than the user sees in Berth's defaults).
//!
//! The rules are those of <https://kubernetes.io/docs/concepts/security/pod-security-standards/>
//! (baseline and restricted, Kubernetes 1.33), container level.

use k8s_openapi::api::core::v1::{
    AppArmorProfile, Capabilities, SELinuxOptions, SeccompProfile, SecurityContext, WindowsSecurityContextOptions,
};

use crate::api::validation::FieldError;

/// Path of the field in the AppEnvironment.
const FIELD: &str = "spec.securityContext";
/// The one capability `restricted` lets a container add.
const ADDABLE_CAPABILITY: &str = "NET_BIND_SERVICE";
/// SELinux types baseline allows (`""` too).
const SELINUX_TYPES: &[&str] = &["container_t", "container_init_t", "container_kvm_t", "container_engine_t"];

/// Berth's defaults: the `restricted` profile, with a read-only root filesystem.
pub fn restricted_defaults() -> SecurityContext {
    crate::resources::meta::restricted_container_context()
}

fn refuse(errors: &mut Vec<FieldError>, field: &str, value: impl std::fmt::Display, fix: &str) {
    errors.push(FieldError::new(
        format!("{FIELD}.{field}"),
        format!("{value} is not allowed under Pod Security 'restricted'; {fix}"),
    ));
}

/// `user` merged over [`restricted_defaults`], or every field of `user` that would weaken the
/// `restricted` profile.
pub fn merge(user: Option<&SecurityContext>) -> Result<SecurityContext, Vec<FieldError>> {
    let mut merged = restricted_defaults();
    let Some(user) = user else { return Ok(merged) };
    let mut errors = Vec::new();
    // Destructured without `..`: a field added to SecurityContext must be judged here.
    let SecurityContext {
        allow_privilege_escalation,
        app_armor_profile,
        capabilities,
        privileged,
        proc_mount,
        read_only_root_filesystem,
        run_as_group,
        run_as_non_root,
        run_as_user,
        se_linux_options,
        seccomp_profile,
        windows_options,
    } = user;

    if *privileged == Some(true) {
        refuse(&mut errors, "privileged", "true", "remove it");
    }
    merged.privileged = privileged.filter(|p| !p);
    if *allow_privilege_escalation == Some(true) {
        refuse(&mut errors, "allowPrivilegeEscalation", "true", "remove it (Berth sets false)");
    }
    if *run_as_non_root == Some(false) {
        refuse(
            &mut errors,
            "runAsNonRoot",
            "false",
            "remove it; if the image runs as root or names its user, set spec.securityContext.runAsUser to a numeric non-root UID",
        );
    }
    match run_as_user {
        Some(0) => refuse(&mut errors, "runAsUser", "0 (root)", "use a non-root UID such as 1000, or remove it"),
        Some(uid) => merged.run_as_user = Some(*uid),
        None => {}
    }
    merged.run_as_group = *run_as_group;
    if let Some(read_only) = read_only_root_filesystem {
        merged.read_only_root_filesystem = Some(*read_only);
    }

    if let Some(Capabilities { add, drop }) = capabilities {
        for (i, cap) in add.iter().flatten().enumerate() {
            if cap.trim_start_matches("CAP_") != ADDABLE_CAPABILITY {
                refuse(
                    &mut errors,
                    &format!("capabilities.add[{i}]"),
                    format!("{cap:?}"),
                    "only NET_BIND_SERVICE may be added; remove it",
                );
            }
        }
        let added: Vec<String> =
            add.iter().flatten().filter(|c| c.trim_start_matches("CAP_") == ADDABLE_CAPABILITY).cloned().collect();
        // ALL stays dropped; the user's own drops are kept too (they only narrow).
        let mut dropped = vec!["ALL".to_string()];
        dropped.extend(drop.iter().flatten().filter(|c| c.as_str() != "ALL").cloned());
        merged.capabilities = Some(Capabilities { add: (!added.is_empty()).then_some(added), drop: Some(dropped) });
    }

    if let Some(SeccompProfile { type_, localhost_profile }) = seccomp_profile {
        match type_.as_str() {
            "RuntimeDefault" => {}
            "Localhost" if localhost_profile.as_deref().is_some_and(|p| !p.is_empty()) => {}
            "Localhost" => errors.push(FieldError::new(
                format!("{FIELD}.seccompProfile.localhostProfile"),
                "is required when seccompProfile.type is Localhost: the path of the profile on the node",
            )),
            other => refuse(
                &mut errors,
                "seccompProfile.type",
                format!("{other:?}"),
                "use RuntimeDefault or Localhost, or remove it",
            ),
        }
        merged.seccomp_profile = seccomp_profile.clone();
    }

    if let Some(AppArmorProfile { type_, .. }) = app_armor_profile {
        if type_ == "Unconfined" {
            refuse(
                &mut errors,
                "appArmorProfile.type",
                "\"Unconfined\"",
                "use RuntimeDefault or Localhost, or remove it",
            );
        }
        merged.app_armor_profile = app_armor_profile.clone();
    }

    if let Some(SELinuxOptions { level: _, role, type_, user }) = se_linux_options {
        if let Some(u) = user {
            refuse(&mut errors, "seLinuxOptions.user", format!("{u:?}"), "remove it");
        }
        if let Some(r) = role {
            refuse(&mut errors, "seLinuxOptions.role", format!("{r:?}"), "remove it");
        }
        if let Some(t) = type_.as_deref().filter(|t| !t.is_empty() && !SELINUX_TYPES.contains(t)) {
            refuse(
                &mut errors,
                "seLinuxOptions.type",
                format!("{t:?}"),
                "use container_t, container_init_t, container_kvm_t or container_engine_t, or remove it",
            );
        }
        merged.se_linux_options = se_linux_options.clone();
    }

    if let Some(mount) = proc_mount.as_deref().filter(|m| *m != "Default") {
        refuse(&mut errors, "procMount", format!("{mount:?}"), "remove it");
    }
    merged.proc_mount = proc_mount.clone().filter(|m| m == "Default");

    if let Some(WindowsSecurityContextOptions { host_process, .. }) = windows_options {
        if *host_process == Some(true) {
            refuse(&mut errors, "windowsOptions.hostProcess", "true", "remove it");
        }
        merged.windows_options = windows_options.clone();
    }

    if errors.is_empty() { Ok(merged) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(json: serde_json::Value) -> SecurityContext {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn no_user_context_gives_the_restricted_defaults() {
        assert_eq!(merge(None).unwrap(), restricted_defaults());
    }

    #[test]
    fn user_fields_merge_over_the_defaults() {
        let merged = merge(Some(&ctx(serde_json::json!({
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "readOnlyRootFilesystem": false,
            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["NET_RAW"]},
        }))))
        .unwrap();
        assert_eq!(merged.run_as_user, Some(1000));
        assert_eq!(merged.run_as_group, Some(1000));
        assert_eq!(merged.read_only_root_filesystem, Some(false));
        // What the user did not set stays restricted.
        assert_eq!(merged.allow_privilege_escalation, Some(false));
        assert_eq!(merged.run_as_non_root, Some(true));
        assert_eq!(merged.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let caps = merged.capabilities.unwrap();
        assert_eq!(caps.drop.unwrap(), ["ALL", "NET_RAW"]);
        assert_eq!(caps.add.unwrap(), ["NET_BIND_SERVICE"]);

        let localhost = merge(Some(&ctx(serde_json::json!({
            "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/app.json"},
        }))))
        .unwrap();
        assert_eq!(localhost.seccomp_profile.unwrap().localhost_profile.as_deref(), Some("profiles/app.json"));
    }

    #[test]
    fn every_weakening_field_is_refused_by_name() {
        let errors = merge(Some(&ctx(serde_json::json!({
            "privileged": true,
            "allowPrivilegeEscalation": true,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "capabilities": {"add": ["NET_BIND_SERVICE", "SYS_ADMIN"]},
            "seccompProfile": {"type": "Unconfined"},
            "appArmorProfile": {"type": "Unconfined"},
            "seLinuxOptions": {"user": "system_u", "type": "spc_t"},
            "procMount": "Unmasked",
            "windowsOptions": {"hostProcess": true},
        }))))
        .unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.securityContext.privileged",
                "spec.securityContext.allowPrivilegeEscalation",
                "spec.securityContext.runAsNonRoot",
                "spec.securityContext.runAsUser",
                "spec.securityContext.capabilities.add[1]",
                "spec.securityContext.seccompProfile.type",
                "spec.securityContext.appArmorProfile.type",
                "spec.securityContext.seLinuxOptions.user",
                "spec.securityContext.seLinuxOptions.type",
                "spec.securityContext.procMount",
                "spec.securityContext.windowsOptions.hostProcess",
            ]
        );
        assert_eq!(
            errors[0].to_string(),
            "spec.securityContext.privileged: true is not allowed under Pod Security 'restricted'; remove it"
        );
    }

    #[test]
    fn explicit_safe_values_are_accepted() {
        let merged = merge(Some(&ctx(serde_json::json!({
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "runAsNonRoot": true,
            "procMount": "Default",
            "seLinuxOptions": {"level": "s0:c123,c456", "type": "container_t"},
        }))))
        .unwrap();
        assert_eq!(merged.privileged, Some(false));
        assert_eq!(merged.proc_mount.as_deref(), Some("Default"));
    }
}
