//! `berth rollback APP [--to-revision N]`: re-applies a revision recorded in `status.history`
//! as a normal change of the spec (a merge patch by the field manager `berth-cli`), so the
//! operator records it as a new revision. It prints the diff first, and warns when a GitOps
//! tool owns the object (it would revert the change).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, ResourceExt};

use super::error::get_opt;
use super::spec_change::{self, diff, gitops_warning, render};
use super::{CliError, Connection, ExitKind};
use crate::api::AppEnvironment;
use crate::api::appenvironment::Revision;
use crate::resources::appenvironment::history;

#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// The AppEnvironment to roll back.
    pub app: String,
    /// The revision to go back to (`status.history`); default: the newest earlier revision
    /// that became Ready.
    #[arg(long, value_name = "N")]
    pub to_revision: Option<i64>,
}

pub async fn run(args: RollbackArgs) -> Result<ExitKind, CliError> {
    let session = args.connection.connect().await?;
    let ns = session.namespace.as_str();
    let api: Api<AppEnvironment> = Api::namespaced(session.client.clone(), ns);
    let app = get_opt(&api, "AppEnvironment", &args.app, ns).await?.ok_or_else(|| {
        CliError::not_found(
            "AppEnvironment",
            &args.app,
            ns,
            &format!("`kubectl get appenvironments -n {ns}` lists them; -n picks another namespace"),
        )
    })?;
    let revisions = app.status.as_ref().map(|s| s.history.as_slice()).unwrap_or_default();
    let target = choose(&app, revisions, args.to_revision)?;
    let stored = match &target.spec_ref {
        Some(r) => {
            let config_maps: Api<ConfigMap> = Api::namespaced(session.client.clone(), ns);
            get_opt(&config_maps, "ConfigMap", &r.config_map, ns).await?.and_then(|c| c.binary_data)
        }
        None => None,
    };
    let spec = history::spec_of(target, stored.as_ref()).map_err(|e| {
        CliError::new(
            ExitKind::NotFound,
            format!("AppEnvironment {ns}/{}: {e}; choose another revision with --to-revision", app.name_any()),
        )
    })?;
    let changes = diff(&app.spec, &spec);
    let what = format!("revision {} (generation {}, image {})", target.revision, target.generation, target.image);
    if changes.is_empty() {
        println!("AppEnvironment {ns}/{}: the spec already equals {what}; nothing to do.", app.name_any());
        return Ok(ExitKind::Ok);
    }
    println!("Rolling back AppEnvironment {ns}/{} to {what}:", app.name_any());
    print!("{}", render(&changes));
    if let Some(warning) = gitops_warning(&app) {
        eprintln!("{warning}");
    }
    let patched = spec_change::apply(&api, &app, &spec).await?;
    println!(
        "AppEnvironment {ns}/{} patched (generation {}); the operator records it as a new revision: `berth status -n {ns}` follows the rollout.",
        app.name_any(),
        patched.metadata.generation.unwrap_or_default()
    );
    Ok(ExitKind::Ok)
}

/// The revision to go back to: `--to-revision N`, or the last good one. The errors list the
/// revisions there are.
pub fn choose<'a>(
    app: &AppEnvironment,
    revisions: &'a [Revision],
    wanted: Option<i64>,
) -> Result<&'a Revision, CliError> {
    let (name, ns) = (app.name_any(), app.namespace().unwrap_or_default());
    let listed = || {
        revisions
            .iter()
            .map(|r| {
                let state = match (&r.ready_at, &r.superseded_at) {
                    (Some(_), _) => "",
                    (None, Some(_)) => " never Ready",
                    (None, None) => " not Ready yet",
                };
                format!("{} ({}{state})", r.revision, r.image)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if revisions.is_empty() {
        return Err(CliError::new(
            ExitKind::NotFound,
            format!(
                "AppEnvironment {ns}/{name} has no recorded revisions (status.history is empty): the operator records one when it applies the spec; check that it runs"
            ),
        ));
    }
    match wanted {
        Some(n) => revisions.iter().find(|r| r.revision == n).ok_or_else(|| {
            CliError::new(
                ExitKind::NotFound,
                format!(
                    "AppEnvironment {ns}/{name} has no revision {n}: the recorded revisions are {}; pass one of them to --to-revision",
                    listed()
                ),
            )
        }),
        None => history::last_good(revisions).ok_or_else(|| {
            CliError::new(
                ExitKind::NotFound,
                format!(
                    "AppEnvironment {ns}/{name} has no earlier revision that became Ready (recorded: {}); pass --to-revision N to choose one",
                    listed()
                ),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::appenvironment::AppEnvironmentSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn revision(n: i64, ready: bool, superseded: bool) -> Revision {
        let t = Time(jiff::Timestamp::from_second(n).unwrap());
        Revision {
            revision: n,
            generation: n,
            image: format!("web:{n}"),
            hash: n.to_string(),
            created_at: t.clone(),
            ready_at: ready.then(|| t.clone()),
            superseded_at: superseded.then_some(t),
            spec: Some("{}".into()),
            spec_ref: None,
        }
    }

    fn app() -> AppEnvironment {
        let mut app = AppEnvironment::new("web", AppEnvironmentSpec::default());
        app.metadata.namespace = Some("shop".into());
        app
    }

    #[test]
    fn the_default_is_the_last_good_revision_and_errors_list_the_others() {
        let revisions = [revision(4, true, true), revision(5, false, true), revision(6, false, false)];
        assert_eq!(choose(&app(), &revisions, None).unwrap().revision, 4);
        assert_eq!(choose(&app(), &revisions, Some(5)).unwrap().revision, 5);
        let e = choose(&app(), &revisions, Some(9)).unwrap_err();
        assert_eq!(e.kind, ExitKind::NotFound);
        assert_eq!(
            e.message,
            "AppEnvironment shop/web has no revision 9: the recorded revisions are 4 (web:4), 5 (web:5 never Ready), 6 (web:6 not Ready yet); pass one of them to --to-revision"
        );
        let e = choose(&app(), &revisions[1..], None).unwrap_err();
        assert!(e.message.contains("no earlier revision that became Ready") && e.message.contains("--to-revision"));
        assert!(choose(&app(), &[], None).unwrap_err().message.contains("status.history is empty"));
    }
}
