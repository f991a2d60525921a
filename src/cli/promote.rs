//! `berth promote APP --from NS --to NS [--env] [--config-volumes] [--yes]`: copies the image,
//! and the chosen fields, from one environment's AppEnvironment to another's. Everything else
//! (tier and its defaults, replicas, ingress, claims) stays the target's. It shows the diff and
//! asks on a terminal; without one it needs `--yes`.

use std::io::{BufRead, IsTerminal, Write};

use kube::{Api, ResourceExt};

use super::error::get_opt;
use super::spec_change::{self, diff, gitops_warning, render};
use super::{CliError, Connection, ExitKind};
use crate::api::AppEnvironment;
use crate::api::appenvironment::{AppEnvironmentSpec, AppVolume};

#[derive(clap::Args, Debug)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// The AppEnvironment (the same name in both namespaces).
    pub app: String,
    /// Namespace to promote from (e.g. staging).
    #[arg(long, value_name = "NS")]
    pub from: String,
    /// Namespace to promote to (e.g. production).
    #[arg(long, value_name = "NS")]
    pub to: String,
    /// Copy `spec.env` and `spec.envFrom` too.
    #[arg(long)]
    pub env: bool,
    /// Copy the ConfigMap and Secret volumes of `spec.volumes` too (the target's claims and
    /// emptyDirs stay).
    #[arg(long)]
    pub config_volumes: bool,
    /// Apply without asking.
    #[arg(short = 'y', long)]
    pub yes: bool,
}

/// The fields `promote` copies besides the image.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields {
    pub env: bool,
    pub config_volumes: bool,
}

/// `target` with `source`'s image and chosen fields.
pub fn promoted(source: &AppEnvironmentSpec, target: &AppEnvironmentSpec, fields: Fields) -> AppEnvironmentSpec {
    let mut out = target.clone();
    out.image = source.image.clone();
    if fields.env {
        out.env = source.env.clone();
        out.env_from = source.env_from.clone();
    }
    if fields.config_volumes {
        let is_config = |v: &AppVolume| v.config_map.is_some() || v.secret.is_some();
        let copied: Vec<&AppVolume> = source.volumes.iter().filter(|v| is_config(v)).collect();
        // In place where the target has a volume of the same name (a short diff), the others
        // after; the target's own config volumes go.
        let mut volumes: Vec<AppVolume> = target
            .volumes
            .iter()
            .filter_map(|v| match copied.iter().find(|c| c.name == v.name) {
                Some(c) => Some((*c).clone()),
                None => (!is_config(v)).then(|| v.clone()),
            })
            .collect();
        volumes
            .extend(copied.iter().filter(|c| !target.volumes.iter().any(|v| v.name == c.name)).map(|c| (*c).clone()));
        out.volumes = volumes;
    }
    out
}

fn copied(fields: Fields) -> String {
    let mut names = vec!["image"];
    if fields.env {
        names.push("env, envFrom");
    }
    if fields.config_volumes {
        names.push("ConfigMap and Secret volumes");
    }
    names.join(", ")
}

pub async fn run(args: PromoteArgs) -> Result<ExitKind, CliError> {
    if args.from == args.to {
        return Err(CliError::new(
            ExitKind::Invalid,
            format!("--from and --to are both {:?}: name two different namespaces", args.from),
        ));
    }
    let session = args.connection.connect().await?;
    let fetch = |ns: String| {
        let api: Api<AppEnvironment> = Api::namespaced(session.client.clone(), &ns);
        let name = args.app.clone();
        async move {
            let app = get_opt(&api, "AppEnvironment", &name, &ns).await?.ok_or_else(|| {
                CliError::not_found(
                    "AppEnvironment",
                    &name,
                    &ns,
                    &format!(
                        "`kubectl get appenvironments -n {ns}` lists them; promote copies between apps of the same name"
                    ),
                )
            })?;
            Ok::<_, CliError>((api, app))
        }
    };
    let (_, source) = fetch(args.from.clone()).await?;
    let (api, target) = fetch(args.to.clone()).await?;
    let fields = Fields { env: args.env, config_volumes: args.config_volumes };
    let spec = promoted(&source.spec, &target.spec, fields);
    let changes = diff(&target.spec, &spec);
    let (name, to) = (target.name_any(), args.to.as_str());
    if changes.is_empty() {
        println!(
            "AppEnvironment {to}/{name} already has the {} of {}/{name}; nothing to promote.",
            copied(fields),
            args.from
        );
        return Ok(ExitKind::Ok);
    }
    println!(
        "Promoting AppEnvironment {name} from {} to {to} ({}; the target's tier {} and its defaults stay):",
        args.from,
        copied(fields),
        target.spec.tier.as_str()
    );
    print!("{}", render(&changes));
    if let Some(warning) = gitops_warning(&target) {
        eprintln!("{warning}");
    }
    if !args.yes && !confirm(&format!("Apply these changes to AppEnvironment {to}/{name}?"))? {
        println!("Not applied: nothing changed.");
        return Ok(ExitKind::Ok);
    }
    let patched = spec_change::apply(&api, &target, &spec).await?;
    println!(
        "AppEnvironment {to}/{name} patched (generation {}): `berth status -n {to}` follows the rollout.",
        patched.metadata.generation.unwrap_or_default()
    );
    Ok(ExitKind::Ok)
}

/// Asks `question` on the terminal; without one (a pipe, CI) it refuses: a change to another
/// environment is never made without a yes.
fn confirm(question: &str) -> Result<bool, CliError> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CliError::new(
            ExitKind::Invalid,
            "refusing to apply without confirmation: standard input is not a terminal. Review the diff above and run again with --yes to apply it",
        ));
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush().ok();
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::new(ExitKind::Other, format!("cannot read the answer: {e}")))?;
    Ok(matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> AppEnvironmentSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn only_the_image_and_the_chosen_fields_move() {
        let staging = spec(json!({
            "tier": "staging", "image": "web:2", "replicas": 1, "args": ["--debug"],
            "env": [{"name": "FEATURE", "value": "on"}], "envFrom": [{"configMapRef": {"name": "web-env"}}],
            "volumes": [{"name": "config", "mountPath": "/etc/web", "configMap": {"name": "web-config-v2"}},
                        {"name": "scratch", "mountPath": "/tmp", "emptyDir": {}}]
        }));
        let production = spec(json!({
            "tier": "production", "image": "web:1", "autoscaling": {"maxReplicas": 6},
            "env": [{"name": "FEATURE", "value": "off"}],
            "volumes": [{"name": "data", "mountPath": "/data", "claim": {"size": "10Gi"}},
                        {"name": "config", "mountPath": "/etc/web", "configMap": {"name": "web-config-v1"}},
                        {"name": "tls", "mountPath": "/tls", "secret": {"name": "old-tls"}}]
        }));
        let image_only = promoted(&staging, &production, Fields::default());
        assert_eq!(image_only, AppEnvironmentSpec { image: "web:2".into(), ..production.clone() });

        let all = promoted(&staging, &production, Fields { env: true, config_volumes: true });
        let expected = spec(json!({
            "tier": "production", "image": "web:2", "autoscaling": {"maxReplicas": 6},
            "env": [{"name": "FEATURE", "value": "on"}], "envFrom": [{"configMapRef": {"name": "web-env"}}],
            "volumes": [{"name": "data", "mountPath": "/data", "claim": {"size": "10Gi"}},
                        {"name": "config", "mountPath": "/etc/web", "configMap": {"name": "web-config-v2"}}]
        }));
        assert_eq!(all, expected);
    }
}
