//! Argo CD health checks of Berth's kinds (`deploy/gitops/argocd`): every Lua script runs under a
//! real Lua 5.1 interpreter (Argo CD embeds gopher-lua, a Lua 5.1) against the status fixtures
//! its `health_test.yaml` lists, in Argo CD's own `resource_customizations` layout and test
//! convention; the `argocd-cm` snippet must embed exactly those scripts; and the fixtures must be
//! statuses Berth writes (typed, with the `Reconciling` / `Stalled` that `conditions::kstatus`
//! derives).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use berth::api::conditions::{self, DesiredCondition, RECONCILING, STALLED};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde_json::Value;

const KINDS: [&str; 5] = ["AppEnvironment", "DatabaseInstance", "BackupPolicy", "Backup", "Restore"];

fn argocd() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gitops/argocd")
}

fn kind_dir(kind: &str) -> PathBuf {
    argocd().join("resource_customizations/berth.dev").join(kind)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// `value` as a Lua table constructor: objects and arrays become tables (arrays 1-based, as
/// Argo CD converts them), `null` becomes `nil`.
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter().map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// A double-quoted Lua string; every byte that is not printable ASCII as a decimal escape.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => write!(out, "\\{b:03}").unwrap(),
        }
    }
    out.push('"');
    out
}

/// The interpreter, or a failure that says how to install it.
fn lua() -> &'static str {
    let found = Command::new("lua5.1").arg("-v").output().is_ok_and(|o| o.status.success());
    assert!(found, "lua5.1 is not installed: `apt-get install lua5.1` (scripts/test.sh installs it)");
    "lua5.1"
}

/// Runs `script` as Argo CD does, with the object as the global `obj` and only the libraries
/// Argo CD opens (base, table, string, math; no io, os or require), and returns the health
/// status and message it returns.
fn run_health_script(script: &Path, object: &Value) -> Result<(String, String), String> {
    let driver = format!(
        r#"local script = assert(loadfile({path}))
local env = {{ obj = {object} }}
for _, name in ipairs({{ "assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber", "tostring", "type", "unpack" }}) do
  env[name] = _G[name]
end
env.string, env.table, env.math = string, table, math
setfenv(script, env)
local hs = script()
assert(type(hs) == "table", "the script returned " .. type(hs) .. ", not a table")
io.write(tostring(hs.status), "\n", tostring(hs.message))
"#,
        path = lua_string(&script.display().to_string()),
        object = lua_literal(object),
    );
    let mut child = Command::new(lua())
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lua5.1 starts");
    child.stdin.take().unwrap().write_all(driver.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (status, message) = stdout.split_once('\n').ok_or_else(|| format!("unexpected output {stdout:?}"))?;
    Ok((status.to_string(), message.to_string()))
}

/// `(inputPath, expected status, expected message)` of a kind's `health_test.yaml`.
fn health_tests(kind: &str) -> Vec<(String, String, String)> {
    let tests = yaml(&kind_dir(kind).join("health_test.yaml"));
    tests["tests"]
        .as_array()
        .unwrap_or_else(|| panic!("{kind}/health_test.yaml: no `tests` list"))
        .iter()
        .map(|t| {
            let field = |v: &Value, name: &str| {
                v.as_str().unwrap_or_else(|| panic!("{kind}/health_test.yaml: a test has no {name}")).to_string()
            };
            (
                field(&t["inputPath"], "inputPath"),
                field(&t["healthStatus"]["status"], "healthStatus.status"),
                field(&t["healthStatus"]["message"], "healthStatus.message"),
            )
        })
        .collect()
}

#[test]
fn every_script_passes_its_health_tests_under_lua_5_1() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for kind in KINDS {
        let script = kind_dir(kind).join("health.lua");
        let cases = health_tests(kind);
        // One fixture per outcome the kind can have; only two kinds can be paused.
        let mut outcomes: Vec<&str> = cases.iter().map(|(_, status, _)| status.as_str()).collect();
        outcomes.sort();
        outcomes.dedup();
        let expected: &[&str] = match kind {
            "AppEnvironment" | "BackupPolicy" => &["Degraded", "Healthy", "Progressing", "Suspended"],
            _ => &["Degraded", "Healthy", "Progressing"],
        };
        assert_eq!(outcomes, expected, "{kind}/health_test.yaml must cover every outcome");
        for (input, status, message) in &cases {
            let object = yaml(&kind_dir(kind).join(input));
            ran += 1;
            match run_health_script(&script, &object) {
                Ok(got) if got == (status.clone(), message.clone()) => {}
                Ok((got_status, got_message)) => failures.push(format!(
                    "{kind}/{input}: expected {status} {message:?}, the script says {got_status} {got_message:?}"
                )),
                Err(e) => failures.push(format!("{kind}/{input}: the script failed: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{} of {ran} health tests failed:\n{}", failures.len(), failures.join("\n"));
    assert!(ran >= 20, "only {ran} health tests ran");
}

#[test]
fn the_argocd_cm_snippet_embeds_exactly_the_scripts() {
    let path = argocd().join("argocd-cm-health.yaml");
    let cm = yaml(&path);
    assert_eq!((cm["apiVersion"].as_str(), cm["kind"].as_str()), (Some("v1"), Some("ConfigMap")));
    assert_eq!(cm["metadata"]["name"], "argocd-cm", "Argo CD reads health customizations from argocd-cm only");
    let data = cm["data"].as_object().expect("argocd-cm-health.yaml has data");
    let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
    keys.sort();
    let mut wanted: Vec<String> =
        KINDS.iter().map(|k| format!("resource.customizations.health.berth.dev_{k}")).collect();
    wanted.sort();
    assert_eq!(keys, wanted, "argocd-cm-health.yaml: one health key per Berth kind and nothing else");
    for kind in KINDS {
        let key = format!("resource.customizations.health.berth.dev_{kind}");
        let script = read(&kind_dir(kind).join("health.lua"));
        assert!(
            data[&key].as_str() == Some(script.as_str()),
            "argocd-cm-health.yaml: data[{key}] differs from resource_customizations/berth.dev/{kind}/health.lua; \
             copy the script into it (a `|` block, indented by four spaces)"
        );
    }
}

/// A fixture's conditions as a controller computes them (the derived kstatus ones left out).
fn desired(conditions: &[Condition]) -> Vec<DesiredCondition> {
    conditions
        .iter()
        .filter(|c| c.type_ != RECONCILING && c.type_ != STALLED)
        .map(|c| {
            let type_: &'static str = Box::leak(c.type_.clone().into_boxed_str());
            DesiredCondition::new(type_, c.status == "True", &c.reason, c.message.clone())
        })
        .collect()
}

fn typed<K: serde::de::DeserializeOwned>(object: &Value, what: &str) -> K {
    serde_json::from_value(object.clone()).unwrap_or_else(|e| panic!("{what} is no valid object of its kind: {e}"))
}

#[test]
fn fixtures_are_statuses_berth_writes() {
    use berth::api::{AppEnvironment, Backup, BackupPolicy, DatabaseInstance, Restore};
    let mut checked = 0;
    for kind in KINDS {
        for (input, _, _) in health_tests(kind) {
            let what = format!("{kind}/{input}");
            let object = yaml(&kind_dir(kind).join(&input));
            assert_eq!(object["kind"], kind, "{what}");
            let conditions: Vec<Condition> = match kind {
                "AppEnvironment" => typed::<AppEnvironment>(&object, &what).status.map(|s| s.conditions),
                "DatabaseInstance" => typed::<DatabaseInstance>(&object, &what).status.map(|s| s.conditions),
                "BackupPolicy" => typed::<BackupPolicy>(&object, &what).status.map(|s| s.conditions),
                "Backup" => typed::<Backup>(&object, &what).status.map(|s| s.conditions),
                _ => typed::<Restore>(&object, &what).status.map(|s| s.conditions),
            }
            .unwrap_or_default();
            // Statuses an older Berth wrote (before Degraded on failed Backups and Restores, and
            // before Reconciling and Stalled) are kept to show the scripts still read them.
            if conditions.is_empty() || input.contains("legacy-") {
                continue;
            }
            let derived: Vec<(&str, &str, &str)> = conditions
                .iter()
                .filter(|c| c.type_ == RECONCILING || c.type_ == STALLED)
                .map(|c| (c.type_.as_str(), c.status.as_str(), c.message.as_str()))
                .collect();
            let expected = conditions::kstatus(&desired(&conditions));
            let expected: Vec<(&str, &str, &str)> =
                expected.iter().map(|d| (d.type_, "True", d.message.as_str())).collect();
            assert_eq!(derived, expected, "{what}: Reconciling/Stalled differ from what Berth writes");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} fixtures checked");
}
