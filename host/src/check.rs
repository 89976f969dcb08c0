//! `sinew check`: spec errors and risk signals, for people and for tools.

mod human;
mod sarif;

use clap::{Args as ClapArgs, ValueEnum};
use sinew_core::diag::Diagnostic;
use sinew_core::risk::{self, Level, Report};
use sinew_core::spec;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Judge specs: spec errors, then every tool Green, Yellow or Red.
///
/// Exit status: 0 Green (or Yellow with every signal acknowledged),
/// 1 Yellow not acknowledged, 2 Red, 3 spec errors (or a file that cannot be
/// read). With several files, the worst one decides.
///
/// Examples:
///   sinew check specs/examples/shop.json
///   sinew check --format json spec.json > report.json
///   sinew check --fix --dry-run spec.json     # show the mechanical fixes as a diff
///   sinew check --fix spec.json               # apply them
#[derive(ClapArgs)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Spec files to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Apply the mechanical fixes (JSON Patches) to the files, then check again.
    #[arg(long)]
    fix: bool,
    /// With --fix: print the changes as a unified diff instead of writing.
    #[arg(long, requires = "fix")]
    dry_run: bool,
    /// When to color the human output.
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    color: Color,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// For people: findings with file:line:column, fixes and a verdict.
    Human,
    /// The report as JSON (the shape documented in the README).
    Json,
    /// SARIF 2.1.0, for code-scanning tools.
    Sarif,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Color {
    /// Color when writing to a terminal and NO_COLOR is not set.
    Auto,
    /// Always color.
    Always,
    /// Never color.
    Never,
}

/// One checked file.
pub struct Checked {
    /// The path as given.
    pub path: PathBuf,
    /// Its text ("" when it could not be read).
    pub text: String,
    /// The verdict.
    pub report: Report,
}

/// Reads a spec file with clear errors for everything that can go wrong.
pub fn read_spec(path: &Path) -> Result<String, Diagnostic> {
    let io = |message: String, help: &str| Diagnostic::new("unreadable", "", message).help(help);
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => io(
            format!("`{}` does not exist", path.display()),
            "check the path",
        ),
        _ => io(
            format!("cannot read `{}`: {e}", path.display()),
            "check the file's permissions",
        ),
    })?;
    if meta.is_dir() {
        return Err(io(
            format!("`{}` is a directory, not a spec file", path.display()),
            "name a .json file, e.g. `dir/*.json`",
        ));
    }
    if meta.len() > spec::source::MAX_SPEC_BYTES as u64 {
        let mut d = io(
            format!(
                "`{}` is {} MiB, more than the {} MiB limit",
                path.display(),
                meta.len() >> 20,
                spec::source::MAX_SPEC_BYTES >> 20
            ),
            "split the backend into several specs",
        );
        d.code = "too-large".into();
        return Err(d);
    }
    let bytes = std::fs::read(path).map_err(|e| {
        io(
            format!("cannot read `{}`: {e}", path.display()),
            "check the file's permissions",
        )
    })?;
    spec::source::decode(&bytes).map(str::to_string)
}

fn invalid(d: Diagnostic) -> Report {
    Report {
        level: Level::Invalid,
        errors: vec![d],
        warnings: Vec::new(),
        tools: Default::default(),
    }
}

/// Runs `sinew check`; returns the exit code.
pub fn run(args: &Args) -> u8 {
    let color = match args.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let mut checked = Vec::new();
    let mut out = String::new();
    for path in &args.files {
        let (text, report) = match read_spec(path) {
            Ok(text) => {
                let report = risk::check(&text);
                (text, report)
            }
            Err(d) => (String::new(), invalid(d)),
        };
        if args.fix && report.level != Level::Invalid {
            let outcome = risk::fix(&text);
            human::fix_summary(&mut out, path, &text, &outcome, args.dry_run, color);
            if !args.dry_run
                && outcome.text != text
                && let Err(e) = std::fs::write(path, &outcome.text)
            {
                let d = Diagnostic::new(
                    "unwritable",
                    "",
                    format!("cannot write `{}`: {e}", path.display()),
                )
                .help("check the file's permissions");
                checked.push(Checked {
                    path: path.clone(),
                    text,
                    report: invalid(d),
                });
                continue;
            }
            if !args.dry_run {
                checked.push(Checked {
                    path: path.clone(),
                    text: outcome.text,
                    report: outcome.report,
                });
                continue;
            }
        }
        checked.push(Checked {
            path: path.clone(),
            text,
            report,
        });
    }
    match args.format {
        Format::Human => {
            for c in &checked {
                human::report(&mut out, c, color);
            }
            if checked.len() > 1 {
                human::overall(&mut out, &checked, color);
            }
        }
        Format::Json => {
            let json = if let [one] = checked.as_slice() {
                serde_json::to_value(&one.report).unwrap_or_default()
            } else {
                serde_json::Value::Array(
                    checked
                        .iter()
                        .map(|c| serde_json::json!({"file": c.path.display().to_string(), "report": c.report}))
                        .collect(),
                )
            };
            out.push_str(&serde_json::to_string_pretty(&json).unwrap_or_default());
            out.push('\n');
        }
        Format::Sarif => {
            out.push_str(&serde_json::to_string_pretty(&sarif::log(&checked)).unwrap_or_default());
            out.push('\n');
        }
    }
    if let Err(e) = crate::write_stdout(&out) {
        eprintln!("error: cannot write the report to stdout: {e}");
    }
    checked
        .iter()
        .map(|c| c.report.exit_code())
        .max()
        .unwrap_or(0) as u8
}
