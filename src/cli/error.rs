//! What can go wrong in a command, each with its own exit code and a message that names the
//! object and the fix. Never a backtrace: the API server's answer is turned into words here.

use std::process::ExitCode;

/// The outcome of a command, as its exit code. Documented in the README ("CLI").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// 0: done; with `--wait`, the Backup or Restore Completed.
    Ok = 0,
    /// 1: an error none of the others describes (a server error, an interrupted watch).
    Other = 1,
    // 2 is clap's: a usage error (unknown flag, missing argument).
    /// 3: the Backup or Restore waited for ended Failed.
    Failed = 3,
    /// 4: the Backup or Restore waited for ended PartiallyFailed.
    PartiallyFailed = 4,
    /// 5: a named object does not exist.
    NotFound = 5,
    /// 6: the cluster refused the request (RBAC).
    Forbidden = 6,
    /// 7: there is no completed Backup to restore.
    NoCompletedBackup = 7,
    /// 8: the request is invalid (a flag's value, or the API server refused the object).
    Invalid = 8,
    /// 9: no cluster could be reached or the credentials were refused.
    Connection = 9,
}

impl ExitKind {
    pub fn code(self) -> ExitCode {
        ExitCode::from(self as u8)
    }

    /// The exit code of a finished Backup or Restore in `phase`.
    pub fn of_phase(phase: Option<&str>) -> ExitKind {
        match phase {
            Some("Completed") => ExitKind::Ok,
            Some("PartiallyFailed") => ExitKind::PartiallyFailed,
            _ => ExitKind::Failed,
        }
    }
}

/// A failed command: its exit code and what to tell the user.
#[derive(Debug)]
pub struct CliError {
    pub kind: ExitKind,
    pub message: String,
}

impl CliError {
    pub fn new(kind: ExitKind, message: impl Into<String>) -> CliError {
        CliError { kind, message: message.into() }
    }

    /// A refused or failed API request. `action` says what was tried ("list backups.berth.dev
    /// in namespace \"shop\"") and `namespace` is where (for the hints).
    pub fn api(e: kube::Error, action: &str) -> CliError {
        match e {
            kube::Error::Api(s) => match s.code {
                403 => CliError::new(
                    ExitKind::Forbidden,
                    format!(
                        "forbidden: you may not {action} ({}). Ask a cluster admin to bind you a role that allows it (the namespace's `edit` role includes Berth's kinds), or use -n with a namespace you work in",
                        s.message
                    ),
                ),
                401 => CliError::new(
                    ExitKind::Connection,
                    format!(
                        "unauthorized: the cluster refused your credentials when trying to {action}; log in again or check --kubeconfig and --context"
                    ),
                ),
                404 => CliError::new(ExitKind::NotFound, format!("cannot {action}: {}", s.message)),
                400 | 409 | 422 => {
                    CliError::new(ExitKind::Invalid, format!("the API server refused to {action}: {}", s.message))
                }
                code => CliError::new(
                    ExitKind::Other,
                    format!("cannot {action}: the API server answered {code}: {}", s.message),
                ),
            },
            other => CliError::new(
                ExitKind::Connection,
                format!("cannot {action}: {other}; is the cluster reachable? Check --kubeconfig and --context"),
            ),
        }
    }

    /// `kind "name"` is not in `namespace`; `fix` says how to find the right name.
    pub fn not_found(kind: &str, name: &str, namespace: &str, fix: &str) -> CliError {
        CliError::new(ExitKind::NotFound, format!("{kind} \"{name}\" not found in namespace \"{namespace}\": {fix}"))
    }
}

/// `get_opt` with the errors of this module: `Ok(None)` when absent.
pub async fn get_opt<K>(api: &kube::Api<K>, kind: &str, name: &str, namespace: &str) -> Result<Option<K>, CliError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(|e| CliError::api(e, &format!("get {kind} \"{name}\" in namespace \"{namespace}\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("backups.berth.dev is forbidden: User \"dev\" cannot create", "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn refusals_get_their_own_codes_and_a_fix() {
        let e = CliError::api(status(403), "create backups.berth.dev in namespace \"shop\"");
        assert_eq!(e.kind, ExitKind::Forbidden);
        assert!(e.message.contains("create backups.berth.dev in namespace \"shop\""), "{}", e.message);
        assert!(e.message.contains("`edit` role"), "{}", e.message);
        assert_eq!(CliError::api(status(404), "get x").kind, ExitKind::NotFound);
        assert_eq!(CliError::api(status(422), "create x").kind, ExitKind::Invalid);
        assert_eq!(CliError::api(status(401), "list x").kind, ExitKind::Connection);
        assert_eq!(CliError::api(status(500), "list x").kind, ExitKind::Other);
    }

    #[test]
    fn the_exit_code_follows_the_phase() {
        assert_eq!(ExitKind::of_phase(Some("Completed")), ExitKind::Ok);
        assert_eq!(ExitKind::of_phase(Some("PartiallyFailed")), ExitKind::PartiallyFailed);
        assert_eq!(ExitKind::of_phase(Some("Failed")), ExitKind::Failed);
        let codes = [ExitKind::Other, ExitKind::Failed, ExitKind::NotFound, ExitKind::Connection];
        assert_eq!(codes.map(|k| k as u8), [1, 3, 5, 9]);
    }
}
