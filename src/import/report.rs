//! The migration report: every compose key that was not carried over as it was, with the
//! service, the key and the reason (and what to do), plus notes on what was changed.

use std::fmt::Write as _;

/// How a line of the report counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Not carried over: the user must act (or accept the loss).
    Unmapped,
    /// Carried over differently, or a placeholder to fill in.
    Changed,
    /// Carried over as Berth does it; nothing to do.
    Note,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Unmapped => "not mapped",
            Kind::Changed => "changed",
            Kind::Note => "note",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub kind: Kind,
    /// The compose service, or `(project)` for top-level keys.
    pub service: String,
    /// The compose key, e.g. `privileged` or `volumes[0]`.
    pub key: String,
    pub reason: String,
}

/// The report of one import.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub lines: Vec<Line>,
    /// Keys that were carried over (service, key), for the counts.
    pub mapped: Vec<(String, String)>,
}

impl Report {
    pub fn unmapped(&mut self, service: &str, key: impl Into<String>, reason: impl Into<String>) {
        self.push(Kind::Unmapped, service, key, reason);
    }
    pub fn changed(&mut self, service: &str, key: impl Into<String>, reason: impl Into<String>) {
        self.push(Kind::Changed, service, key, reason);
    }
    pub fn note(&mut self, service: &str, key: impl Into<String>, reason: impl Into<String>) {
        self.push(Kind::Note, service, key, reason);
    }
    pub fn mapped(&mut self, service: &str, key: &str) {
        self.mapped.push((service.to_string(), key.to_string()));
    }
    fn push(&mut self, kind: Kind, service: &str, key: impl Into<String>, reason: impl Into<String>) {
        self.lines.push(Line { kind, service: service.to_string(), key: key.into(), reason: reason.into() });
    }

    /// The lines of `kind`.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &Line> {
        self.lines.iter().filter(move |l| l.kind == kind)
    }

    /// Markdown: a summary, then one table row per line, the ones to act on first.
    pub fn markdown(&self, sources: &[String], objects: &[(String, String)]) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Migration report\n");
        let _ = writeln!(out, "Source: {}\n", sources.join(", "));
        let _ = writeln!(
            out,
            "{} objects written; {} keys mapped, {} not mapped, {} changed, {} notes.\n",
            objects.len(),
            self.mapped.len(),
            self.of(Kind::Unmapped).count(),
            self.of(Kind::Changed).count(),
            self.of(Kind::Note).count()
        );
        for (kind, name) in objects {
            let _ = writeln!(out, "- {kind} {name}");
        }
        let _ = writeln!(out, "\n| | service | key | reason |\n|---|---|---|---|");
        let mut lines = self.lines.clone();
        lines.sort_by(|a, b| a.kind.cmp(&b.kind).then(a.service.cmp(&b.service)));
        for l in lines {
            let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
            let _ = writeln!(
                out,
                "| {} | {} | `{}` | {} |",
                l.kind.as_str(),
                cell(&l.service),
                cell(&l.key),
                cell(&l.reason)
            );
        }
        out
    }
}
