//! The real `kubectl` binary, from `<repo>/.tools/bin` (`BERTH_TOOLS_DIR` overrides
//! `<repo>/.tools`), installed by `scripts/install-tools.sh`. Tests that need it fail, never
//! skip, when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Directory of the installed tools.
pub fn tools_bin() -> PathBuf {
    std::env::var_os("BERTH_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools"))
        .join("bin")
}

/// kubectl bound to one kubeconfig, with its own HOME and cache directory.
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

impl Kubectl {
    pub fn new(kubeconfig: &Path) -> Kubectl {
        let bin = tools_bin().join("kubectl");
        assert!(bin.is_file(), "kubectl not found at {}: run scripts/install-tools.sh", bin.display());
        Kubectl { bin, kubeconfig: kubeconfig.to_path_buf(), home: tempfile::tempdir().unwrap() }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.path())
            .env("KUBECACHEDIR", self.home.path().join("cache"))
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run kubectl");
        eprintln!(
            "$ kubectl {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
