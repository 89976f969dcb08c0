//! `sinew run`: one call of a tool, in memory, against a JSON state file.

use anyhow::{Context, Result, anyhow, bail};
use clap::Args as ClapArgs;
use serde_json::{Value, json};
use sinew_core::bundle::Bundle;
use sinew_core::contract::{Auth, Request, execute};
use sinew_core::expr::value::parse_timestamp;
use sinew_core::ports::memory::{FixedClock, MemoryStorage};
use sinew_core::ports::script::ScriptedExternal;
use sinew_core::ports::world::World;
use std::path::{Path, PathBuf};

/// Run one tool call without a database: a dry run in memory.
///
/// The store is seeded from the state file (created when missing) and saved
/// back after the call, so successive runs see each other's writes. Prints
/// one JSON object: {"status": …, "body": …, "audit": …}.
///
/// The state file: {"rows": {"Entity": [rows…]}, "externals": {…}, …}.
/// Rows you add by hand need only an "id" (a UUID) and their fields; the
/// implicit columns are filled in. "externals" scripts answers of external
/// calls per "service.operation": [{"ok": …}, {"declined": …}, {"failed": "…"}];
/// unscripted calls succeed.
///
/// Exit status: 0 the tool answered 2xx, 1 it answered an error (the
/// response is still printed), 2 bad usage or input (nothing written), 3 the
/// spec cannot run (errors, or Red / unacknowledged Yellow tools).
///
/// Examples:
///   sinew run specs/examples/bank.json --tool open_account --input '{"currency": "EUR"}' \
///     --auth '{"sub": "alice", "roles": ["customer"]}' --state bank-state.json
#[derive(ClapArgs)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The spec.
    spec: PathBuf,
    /// The tool to call.
    #[arg(long)]
    tool: String,
    /// The input, as JSON.
    #[arg(long, default_value = "{}")]
    input: String,
    /// The caller, as JSON: {"sub": "...", "roles": [...], "claims": {...}}.
    /// Without it the call is anonymous.
    #[arg(long)]
    auth: Option<String>,
    /// The state file (created when missing, rewritten after the call).
    #[arg(long)]
    state: Option<PathBuf>,
    /// The request's Idempotency-Key. Default, for a tool whose key is
    /// that header (which the contract then requires): the request id, so
    /// every run is a new request; give one to try a retry.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// The request id (new row ids derive from it). Default: derived from
    /// the time and the state.
    #[arg(long)]
    request_id: Option<String>,
    /// The time of the call, RFC 3339 (default: now).
    #[arg(long)]
    now: Option<String>,
}

/// The outcome of `sinew run`, for the exit code.
pub enum Outcome {
    /// The tool answered 2xx.
    Ok,
    /// The tool answered an error.
    Error,
}

/// Errors that make `sinew run` exit 3 (the spec cannot run).
#[derive(Debug)]
pub struct NotRunnable(pub String);

impl std::fmt::Display for NotRunnable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotRunnable {}

fn read_state(
    path: &Path,
    bundle: &Bundle,
    now_ms: i64,
) -> Result<(MemoryStorage, ScriptedExternal)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fresh(bundle, &json!({}), now_ms);
        }
        Err(e) => bail!("cannot read the state file `{}`: {e}", path.display()),
    };
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("the state file `{}` is not valid JSON", path.display()))?;
    if !v.is_object() {
        bail!(
            "the state file `{}` must hold a JSON object",
            path.display()
        );
    }
    fresh(bundle, &v, now_ms)
        .with_context(|| format!("the state file `{}` is not valid", path.display()))
}

/// Builds the store from a state object, completing hand-written rows.
fn fresh(bundle: &Bundle, state: &Value, now_ms: i64) -> Result<(MemoryStorage, ScriptedExternal)> {
    let mut state = state.clone();
    if let Some(Value::Object(rows)) = state.get_mut("rows") {
        for (entity, list) in rows.iter_mut() {
            let Value::Array(list) = list else {
                bail!("`rows.{entity}` must be an array of rows")
            };
            for row in list.iter_mut() {
                let Value::Object(r) = row else {
                    bail!("a row of `{entity}` is not an object")
                };
                *r = bundle
                    .complete_row(entity, r, now_ms)
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
    }
    let World {
        mut storage,
        external,
    } = World::from_json(&state).map_err(|e| anyhow!("{e}"))?;
    storage.declare(&bundle.spec);
    Ok((storage, external))
}

/// Runs `sinew run`.
pub fn run(args: &Args) -> Result<Outcome> {
    let text = crate::check::read_spec(&args.spec).map_err(|d| NotRunnable(d.message))?;
    let bundle = Bundle::load(&text)
        .map_err(|e| NotRunnable(format!("`{}` cannot run: {e}", args.spec.display())))?;
    if bundle.tool(&args.tool).is_none() {
        let names: Vec<&str> = bundle.spec.tools.keys().map(String::as_str).collect();
        let help =
            sinew_core::diag::suggest(&args.tool, names.iter().copied(), "the spec has no tools");
        bail!(
            "`{}` has no tool `{}` ({help})",
            args.spec.display(),
            args.tool
        );
    }
    let input: Value = sinew_core::spec::source::strict_from_slice(args.input.as_bytes())
        .context("--input is not valid JSON (or holds a key twice)")?;
    let auth = match &args.auth {
        None => None,
        Some(a) => {
            let v: Value = serde_json::from_str(a).context("--auth is not valid JSON")?;
            let Some(fields) = v.as_object() else {
                bail!(
                    "--auth must be an object: {{\"sub\": …, \"roles\": […], \"claims\": {{…}}}}"
                );
            };
            if let Some(k) = fields
                .keys()
                .find(|k| !matches!(k.as_str(), "sub" | "roles" | "claims"))
            {
                bail!(
                    "--auth has an unknown key `{k}`: it takes `sub`, `roles` and `claims` (other claims go inside `claims`)"
                );
            }
            if v.get("claims").is_some_and(|c| !c.is_object()) {
                bail!("--auth `claims` must be an object");
            }
            let sub = v
                .get("sub")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("--auth needs a string `sub`"))?;
            let roles = match v.get("roles") {
                None => Vec::new(),
                Some(Value::Array(r)) => r
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(String::from)
                            .ok_or_else(|| anyhow!("--auth `roles` must be strings"))
                    })
                    .collect::<Result<_>>()?,
                Some(_) => bail!("--auth `roles` must be an array of strings"),
            };
            Some(Auth {
                sub: sub.to_string(),
                roles,
                claims: v.get("claims").cloned().unwrap_or(json!({})),
            })
        }
    };
    let now_ms = match &args.now {
        Some(t) => {
            parse_timestamp(t).ok_or_else(|| anyhow!("--now `{t}` is not an RFC 3339 time"))? / 1000
        }
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0),
    };
    let (mut storage, mut external) = match &args.state {
        Some(p) => read_state(p, &bundle, now_ms)?,
        None => fresh(&bundle, &json!({}), now_ms)?,
    };
    if args
        .request_id
        .as_deref()
        .is_some_and(|r| r.trim().is_empty())
    {
        bail!("--request-id is empty: give an id, or leave it out for a new one");
    }
    if args.idempotency_key.as_deref().is_some_and(str::is_empty) {
        bail!("--idempotency-key is empty: give a key, or leave it out");
    }
    let id = args
        .request_id
        .clone()
        .unwrap_or_else(|| format!("run-{now_ms}-{}", storage.audit_len() + 1));
    let key_from_header = bundle
        .spec
        .tools
        .get(&args.tool)
        .is_some_and(sinew_core::spec::Tool::key_from_header);
    let idempotency_key = args
        .idempotency_key
        .clone()
        .or_else(|| key_from_header.then(|| id.clone()));
    let request = Request {
        tool: args.tool.clone(),
        input,
        auth,
        id,
        idempotency_key,
        scheduled: None,
    };
    let mut clock = FixedClock::new(now_ms);
    let response = execute(&bundle, &request, &mut storage, &mut clock, &mut external);
    if let Some(path) = &args.state {
        let state = World { storage, external }.to_json();
        let text = serde_json::to_string_pretty(&state)? + "\n";
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).with_context(|| format!("cannot write `{}`", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot replace `{}`", path.display()))?;
    }
    let out = json!({"status": response.status, "body": response.body, "audit": response.audit});
    crate::write_stdout(&(serde_json::to_string_pretty(&out)? + "\n"))
        .context("cannot write the response to stdout")?;
    Ok(if (200..300).contains(&response.status) {
        Outcome::Ok
    } else {
        Outcome::Error
    })
}
