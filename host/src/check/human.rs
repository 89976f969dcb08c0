//! The human report: one block per finding, rustc style, then a verdict.

use sinew_core::diag::{Diagnostic, Position};
use sinew_core::risk::{FixOutcome, Level, Report};
use sinew_core::spec::location::{find, locate_nearest};
use std::fmt::Write;
use std::path::Path;

use super::Checked;

struct Paint(bool);

impl Paint {
    fn code(&self, s: &str, code: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn level(&self, l: Level, s: &str) -> String {
        let c = match l {
            Level::Green => "1;32",
            Level::Yellow => "1;33",
            Level::Red | Level::Invalid => "1;31",
        };
        self.code(s, c)
    }
    fn bold(&self, s: &str) -> String {
        self.code(s, "1")
    }
    fn dim(&self, s: &str) -> String {
        self.code(s, "2")
    }
    fn blue(&self, s: &str) -> String {
        self.code(s, "1;34")
    }
}

/// Where a diagnostic or finding stands in the text.
pub fn position(text: &str, path: &str, at: Option<Position>, span: Option<[u32; 2]>) -> Position {
    if let Some(at) = at {
        return at;
    }
    let mut pos = locate_nearest(text, path);
    if let (Some([start, _]), Some(s)) = (span, find(text, path)) {
        // Inside an expression string: move to the offending part
        // (escapes aside, bytes of the string map to characters of the line).
        let inner = text.get(s.start + 1..).unwrap_or_default();
        let chars = inner.get(..start as usize).map_or(0, |p| p.chars().count());
        pos.column += 1 + u32::try_from(chars).unwrap_or(0);
    }
    pos
}

fn diag(out: &mut String, p: &Paint, file: &Path, text: &str, d: &Diagnostic, warning: bool) {
    let head = if warning {
        p.level(Level::Yellow, "warning")
    } else {
        p.level(Level::Red, "error")
    };
    let _ = writeln!(
        out,
        "{head}{}: {}",
        p.bold(&format!("[{}]", d.code)),
        p.bold(&d.message)
    );
    let pos = position(text, &d.path, d.at, d.span);
    let at = if d.path.is_empty() {
        String::new()
    } else {
        format!("  {}", p.dim(&format!("at {}", d.path)))
    };
    let _ = writeln!(
        out,
        "  {} {}:{}:{}{at}",
        p.blue("-->"),
        file.display(),
        pos.line,
        pos.column
    );
    if !d.help.is_empty() {
        let _ = writeln!(out, "   {} {}", p.blue("= help:"), d.help);
    }
    out.push('\n');
}

/// Writes the report on one file.
pub fn report(out: &mut String, c: &Checked, color: bool) {
    let p = Paint(color);
    let r = &c.report;
    for d in &r.errors {
        diag(out, &p, &c.path, &c.text, d, false);
    }
    for d in &r.warnings {
        diag(out, &p, &c.path, &c.text, d, true);
    }
    for f in r.findings() {
        let word = f.level.word().to_lowercase();
        let ack = if f.acknowledged {
            p.dim(" (acknowledged)")
        } else {
            String::new()
        };
        let head = if f.acknowledged {
            p.dim(&word)
        } else {
            p.level(f.level, &word)
        };
        let _ = writeln!(
            out,
            "{head}{}{ack}: {}",
            p.bold(&format!("[{}]", f.code)),
            p.bold(&f.message)
        );
        let pos = position(&c.text, &f.path, None, None);
        let _ = writeln!(
            out,
            "  {} {}:{}:{}  {}",
            p.blue("-->"),
            c.path.display(),
            pos.line,
            pos.column,
            p.dim(&format!("at {}", f.path))
        );
        let how = if f.fix.patch.is_some() {
            " (mechanical: `sinew check --fix` applies it)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "   {} {}{}",
            p.blue("= fix:"),
            f.fix.summary,
            p.dim(how)
        );
        out.push('\n');
    }
    verdict(out, &p, &c.path, r);
}

fn verdict(out: &mut String, p: &Paint, file: &Path, r: &Report) {
    if r.level == Level::Invalid {
        let n = r.errors.len();
        let _ = writeln!(
            out,
            "{}: {} — {n} spec error{}; the spec does not load until {} fixed",
            p.bold(&file.display().to_string()),
            p.level(Level::Invalid, "Invalid"),
            if n == 1 { "" } else { "s" },
            if n == 1 { "it is" } else { "they are" },
        );
        return;
    }
    let _ = writeln!(
        out,
        "{}: {}",
        p.bold(&file.display().to_string()),
        p.level(r.level, r.level.word())
    );
    let width = r.tools.keys().map(String::len).max().unwrap_or(0);
    for (name, t) in &r.tools {
        let acked = t.findings.iter().filter(|f| f.acknowledged).count();
        let open: Vec<String> = t
            .findings
            .iter()
            .filter(|f| !f.acknowledged)
            .map(|f| f.code.clone())
            .collect();
        let mut note = Vec::new();
        if !open.is_empty() {
            note.push(open.join(", "));
        }
        if acked > 0 {
            note.push(format!("{acked} acknowledged"));
        }
        let note = if note.is_empty() {
            String::new()
        } else {
            p.dim(&format!("  ({})", note.join("; ")))
        };
        let _ = writeln!(
            out,
            "  {name:width$}  {}{note}",
            p.level(t.level, t.level.word())
        );
    }
    if r.tools.is_empty() {
        let _ = writeln!(out, "  (no tools)");
    }
    out.push('\n');
}

/// The last line for several files.
pub fn overall(out: &mut String, all: &[Checked], color: bool) {
    let p = Paint(color);
    let worst = all
        .iter()
        .map(|c| c.report.level)
        .max()
        .unwrap_or(Level::Green);
    let mut counts = [0usize; 4];
    for c in all {
        if let Some(n) = counts.get_mut(c.report.level as usize) {
            *n += 1;
        }
    }
    let parts: Vec<String> = [Level::Green, Level::Yellow, Level::Red, Level::Invalid]
        .iter()
        .zip(counts)
        .filter(|(_, n)| *n > 0)
        .map(|(l, n)| format!("{n} {}", l.word()))
        .collect();
    let _ = writeln!(
        out,
        "{} files: {} (worst: {})",
        all.len(),
        parts.join(", "),
        p.level(worst, worst.word())
    );
}

/// What `--fix` did (or would do, with `--dry-run`).
pub fn fix_summary(
    out: &mut String,
    file: &Path,
    before: &str,
    outcome: &FixOutcome,
    dry_run: bool,
    color: bool,
) {
    let p = Paint(color);
    if outcome.applied.is_empty() {
        let _ = writeln!(
            out,
            "{}: no mechanical fixes to apply\n",
            p.bold(&file.display().to_string())
        );
        return;
    }
    let verb = if dry_run { "would apply" } else { "applied" };
    let _ = writeln!(
        out,
        "{}: {verb} {} fix{}:",
        p.bold(&file.display().to_string()),
        outcome.applied.len(),
        if outcome.applied.len() == 1 { "" } else { "es" }
    );
    for a in &outcome.applied {
        let _ = writeln!(
            out,
            "  {} [{}] {}: {}  {}",
            p.level(Level::Green, "fixed"),
            a.code,
            a.tool,
            a.summary,
            p.dim(&format!("at {}", a.path))
        );
    }
    if outcome.reformatted {
        let _ = writeln!(
            out,
            "  {}",
            p.dim("(a fix could not be applied in place: the file was re-formatted)")
        );
    }
    if dry_run {
        let name = file.display().to_string();
        let diff = similar::TextDiff::from_lines(before, &outcome.text);
        let _ = write!(
            out,
            "{}",
            diff.unified_diff()
                .context_radius(3)
                .header(&name, &format!("{name} (fixed)"))
        );
    }
    out.push('\n');
}
