//! `berth --version`: the crate version and the git commit the binary was built from.

use std::process::Command;

#[test]
fn version_names_the_release_and_the_commit() {
    let out = Command::new(env!("CARGO_BIN_EXE_berth")).arg("--version").output().expect("berth runs");
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let re = regex::Regex::new(r"^berth (\S+) \(([0-9a-f]{12,40}|unknown)\)\n$").unwrap();
    let caps = re.captures(&line).unwrap_or_else(|| panic!("not `berth <version> (<commit>)`: {line:?}"));
    assert_eq!(&caps[1], env!("CARGO_PKG_VERSION"));

    // build.rs: BERTH_GIT_COMMIT wins, else the checkout's HEAD.
    let expected = match std::env::var("BERTH_GIT_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => commit.trim().to_string(),
        _ => {
            let git = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output();
            match git {
                Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().to_string(),
                _ => "unknown".into(), // a source tarball without git
            }
        }
    };
    assert_eq!(&caps[2], expected, "the commit in {line:?}");
}
