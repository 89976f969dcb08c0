//! `sinew audit replay`: recorded executions run again, in the component,
//! on the answers their audit entries recorded (no database write, no
//! outbound call), and compared with what was recorded.
//!
//! The spec an entry names (`bundle`) is read from `sinew_bundle`, where
//! every `sinew serve` records the spec it serves; `--spec` runs the
//! entries on another spec instead: a shadow test of a change on recorded
//! traffic.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sinew_core::ports::{CallRequest, CallResult};
use sinew_core::replay::{Replay, Replayer, Shapes, Verdict};

use crate::runtime::storage::MemoryBackend;
use crate::runtime::{Backends, Engine, Executor};

/// Records the spec a server serves (its text as served) under the hash its
/// entries name (the SHA-256 of its canonical JSON). Idempotent: the first
/// text recorded under a hash stays.
///
/// # Errors
/// When the database refuses (no `sinew_bundle` table: not migrated).
pub async fn record_bundle(client: &tokio_postgres::Client, spec_text: &str) -> Result<String> {
    let hash = bundle_hash(spec_text)?;
    client
        .execute(
            "INSERT INTO sinew_bundle (hash, spec) VALUES ($1, $2) ON CONFLICT (hash) DO NOTHING",
            &[&hash, &spec_text],
        )
        .await
        .context("recording the spec in sinew_bundle")?;
    Ok(hash)
}

/// A spec's bundle hash.
pub(crate) fn bundle_hash(spec_text: &str) -> Result<String> {
    let v: Value = serde_json::from_str(spec_text).context("the spec is not JSON")?;
    let canonical = sinew_core::hash::canonical(&v);
    Ok(format!(
        "sha256:{}",
        sinew_core::hash::sha256_hex(canonical.as_bytes())
    ))
}

/// Which recorded executions to replay.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    /// These executions (request ids).
    pub ids: Vec<String>,
    /// Recorded at or after this time (RFC 3339).
    pub since: Option<String>,
    /// Of this tool.
    pub tool: Option<String>,
    /// At most this many, the latest.
    pub limit: i64,
}

/// The final entries selected, oldest first: chained ones, then those
/// still queued. The latest first from each table (the chain by its
/// primary key, or by execution for ids), so that a long log is not read
/// whole.
pub async fn entries(client: &tokio_postgres::Client, s: &Selection) -> Result<Vec<Value>> {
    let since: Option<std::time::SystemTime> = match &s.since {
        Some(t) => {
            let ts: jiff::Timestamp = t
                .parse()
                .with_context(|| format!("--since `{t}` is not an RFC 3339 time"))?;
            let ms = u64::try_from(ts.as_millisecond()).unwrap_or(0);
            Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        }
        None => None,
    };
    let ids: Option<Vec<String>> = (!s.ids.is_empty()).then(|| s.ids.clone());
    let filters = "kind = 'final' \
         AND ($1::text[] IS NULL OR execution = ANY($1)) \
         AND ($2::timestamptz IS NULL OR {at} >= $2) \
         AND ($3::text IS NULL OR entry::jsonb->>'tool' = $3)";
    let queued = client
        .query(
            &format!(
                "SELECT entry FROM sinew_audit_queue WHERE {} ORDER BY id DESC LIMIT $4",
                filters.replace("{at}", "queued_at")
            ),
            &[&ids, &since, &s.tool, &s.limit],
        )
        .await
        .context("reading the audit queue")?;
    let rest = s
        .limit
        .saturating_sub(i64::try_from(queued.len()).unwrap_or(i64::MAX));
    let chained = client
        .query(
            &format!(
                "SELECT entry FROM sinew_audit WHERE {} ORDER BY seq DESC LIMIT $4",
                filters.replace("{at}", "coalesce(queued_at, recorded_at)")
            ),
            &[&ids, &since, &s.tool, &rest],
        )
        .await
        .context("reading the audit log")?;
    let mut out = chained
        .iter()
        .rev()
        .chain(queued.iter().rev())
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).context("an audit entry is not JSON"))
        .collect::<Result<Vec<Value>>>()?;
    out.truncate(usize::try_from(s.limit).unwrap_or(usize::MAX));
    Ok(out)
}

/// The ids of `ids` no entry of `found` is the execution of, each once,
/// in the order given.
pub fn not_found(ids: &[String], found: &[Value]) -> Vec<String> {
    let mut missing: Vec<String> = Vec::new();
    for id in ids {
        let recorded = found
            .iter()
            .any(|e| e.get("execution").and_then(Value::as_str) == Some(id.as_str()));
        if !recorded && !missing.contains(id) {
            missing.push(id.clone());
        }
    }
    missing
}

/// The spec text recorded under `hash`, if any.
pub async fn recorded_spec(client: &tokio_postgres::Client, hash: &str) -> Result<Option<String>> {
    let row = client
        .query_opt("SELECT spec FROM sinew_bundle WHERE hash = $1", &[&hash])
        .await
        .context("reading sinew_bundle")?;
    Ok(row.map(|r| r.get(0)))
}

/// One execution replayed.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The request id.
    pub execution: String,
    /// The tool.
    pub tool: String,
    /// What the replay found.
    pub verdict: Verdict,
    /// The spec replayed on has no such tool (a shadow test of a spec
    /// without it): not run, `not replayable`, counted apart.
    pub tool_absent: bool,
}

/// The component, answering from one replay at a time.
struct Answers(Arc<Mutex<Replayer>>);

impl crate::runtime::clock::ClockBackend for Answers {
    fn now_ms(&self) -> i64 {
        match self.0.lock() {
            Ok(mut r) => sinew_core::ports::Clock::now_ms(&mut *r),
            Err(_) => 0,
        }
    }
}

#[async_trait::async_trait]
impl crate::runtime::external::ExternalBackend for Answers {
    async fn call(&self, request: &CallRequest) -> CallResult {
        match self.0.lock() {
            Ok(mut r) => sinew_core::ports::External::call(&mut *r, request),
            Err(_) => CallResult {
                outcome: sinew_core::ports::CallOutcome::Failed {
                    message: "replay: the answers are unavailable".into(),
                },
                attempts: Vec::new(),
            },
        }
    }
}

/// Replays entries on one spec in the component: `same_spec` when it is
/// the spec that recorded them.
pub struct Replaying {
    executor: Executor,
    answers: Arc<Mutex<Replayer>>,
    bundle: sinew_core::bundle::Bundle,
    /// The spec's columns, for entries another spec recorded.
    shapes: Arc<Shapes>,
    /// The spec's bundle hash.
    pub hash: String,
}

impl Replaying {
    /// Loads `spec_text` into the component.
    ///
    /// # Errors
    /// When the spec does not load (or is not deployable).
    pub async fn new(engine: Arc<Engine>, spec_text: &str) -> Result<Replaying> {
        let bundle = sinew_core::bundle::Bundle::load(spec_text)
            .map_err(|e| anyhow::anyhow!("the spec does not load: {e}"))?;
        let answers = Arc::new(Mutex::new(Replayer::default()));
        let backends = Backends {
            storage: Arc::new(MemoryBackend(answers.clone())),
            clock: Arc::new(Answers(answers.clone())),
            external: Arc::new(Answers(answers.clone())),
        };
        let executor = Executor::new(engine, spec_text.to_owned(), backends)
            .await
            .map_err(|e| anyhow::anyhow!("the spec does not load: {}", e.message))?;
        Ok(Replaying {
            hash: bundle.hash.clone(),
            executor,
            answers,
            shapes: Arc::new(Shapes::of(&bundle)),
            bundle,
        })
    }

    /// Replays one entry.
    pub async fn replay(&self, entry: &Value) -> Replayed {
        let text = |k: &str| {
            entry
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let (execution, tool) = (text("execution"), text("tool"));
        let same_spec = text("bundle") == self.hash;
        // A request for a tool its own spec lacked (404 `unknown_tool`)
        // replays as any other: the spec answers it the same way.
        if self.bundle.tool(&tool).is_none() && text("code") != "unknown_tool" {
            return Replayed {
                verdict: Verdict::NotReplayable {
                    reason: format!("the spec replayed on has no tool `{tool}`"),
                },
                execution,
                tool,
                tool_absent: true,
            };
        }
        let verdict = match Replay::of(&self.bundle, &self.shapes, entry) {
            Err(reason) => Verdict::NotReplayable { reason },
            Ok(mut replay) => {
                let replayer = std::mem::take(&mut replay.replayer);
                if let Ok(mut slot) = self.answers.lock() {
                    *slot = replayer;
                }
                let response = self.executor.execute(&replay.request).await;
                let replayer = self
                    .answers
                    .lock()
                    .map(|mut s| std::mem::take(&mut *s))
                    .unwrap_or_default();
                replay.verdict(&response, &replayer, same_spec)
            }
        };
        Replayed {
            execution,
            tool,
            verdict,
            tool_absent: false,
        }
    }
}

/// What a replay of many entries found, per tool.
#[derive(Debug, Default)]
pub struct Summary {
    /// Per tool: identical, different, unreproducible, not replayable, and
    /// not run for the spec replayed on has no such tool.
    pub tools: BTreeMap<String, [usize; 5]>,
    /// Every execution that did not replay identically (of a tool the spec
    /// has).
    pub others: Vec<Replayed>,
}

impl Summary {
    /// Counts one replay.
    pub fn add(&mut self, r: Replayed) {
        let counts = self.tools.entry(r.tool.clone()).or_default();
        let i = match r.verdict {
            _ if r.tool_absent => 4,
            Verdict::Identical { .. } => 0,
            Verdict::Different { .. } => 1,
            Verdict::Unreproducible { .. } => 2,
            Verdict::NotReplayable { .. } => 3,
        };
        counts[i] += 1;
        // (Enough to report; the counts say how many there are.)
        if (1..4).contains(&i) && self.others.len() < 1000 {
            self.others.push(r);
        }
    }

    /// Whether no execution replayed differently (unreproducible and not
    /// replayable ones are reported, and do not count as different).
    pub fn none_different(&self) -> bool {
        self.tools.values().all(|c| c[1] == 0)
    }

    /// The report: one line per tool, then the first `shown` executions
    /// that did not replay identically, differences first (then the
    /// unreproducible, then those not replayable).
    pub fn text(&self, shown: usize) -> String {
        let mut out = String::new();
        for (tool, [same, diff, unrep, not, absent]) in &self.tools {
            out.push_str(&format!(
                "{tool}: {} replayed, {same} identical, {diff} different, {unrep} unreproducible, {not} not replayable",
                same + diff + unrep + not + absent
            ));
            if *absent > 0 {
                out.push_str(&format!(
                    ", {absent} not run: the spec replayed on has no tool `{tool}`"
                ));
            }
            out.push('\n');
        }
        let rank = |v: &Verdict| match v {
            Verdict::Different { .. } => 0,
            Verdict::Unreproducible { .. } => 1,
            _ => 2,
        };
        let mut listed: Vec<&Replayed> = self.others.iter().collect();
        // (Stable: in each kind, the order of the recording.)
        listed.sort_by_key(|r| rank(&r.verdict));
        for r in listed.into_iter().take(shown) {
            let detail = match &r.verdict {
                Verdict::Different { difference } => difference.clone(),
                Verdict::Unreproducible {
                    unverified,
                    difference,
                } => format!(
                    "{difference} (recorded by their hash, not reproduced: {})",
                    unverified.join(", ")
                ),
                Verdict::NotReplayable { reason } => reason.clone(),
                Verdict::Identical { .. } => String::new(),
            };
            out.push_str(&format!(
                "  {} {} {}: {detail}\n",
                r.verdict.word(),
                r.tool,
                r.execution
            ));
        }
        let others: usize = self.tools.values().map(|c| c[1] + c[2] + c[3]).sum();
        if others > shown {
            out.push_str(&format!("  … and {} more\n", others - shown));
        }
        out
    }
}

/// One JSON line per replay (`--json`).
pub fn json_line(r: &Replayed) -> String {
    let mut v = serde_json::to_value(&r.verdict).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        if r.tool_absent {
            m.insert("result".into(), json!("tool-absent"));
        }
        m.insert("execution".into(), json!(r.execution));
        m.insert("tool".into(), json!(r.tool));
    }
    format!("{v}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed(execution: &str, verdict: Verdict) -> Replayed {
        Replayed {
            execution: execution.into(),
            tool: "t".into(),
            verdict,
            tool_absent: false,
        }
    }

    /// `--show` lists differences before executions that could not be
    /// replayed or reproduced, whatever the order they came in.
    #[test]
    fn differences_are_shown_first() {
        let mut s = Summary::default();
        for i in 0..3 {
            s.add(replayed(
                &format!("n{i}"),
                Verdict::NotReplayable {
                    reason: "no tape".into(),
                },
            ));
            s.add(replayed(
                &format!("u{i}"),
                Verdict::Unreproducible {
                    unverified: vec!["pin".into()],
                    difference: "call 1".into(),
                },
            ));
        }
        s.add(replayed(
            "d0",
            Verdict::Different {
                difference: "call 2".into(),
            },
        ));
        let text = s.text(2);
        let shown: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            shown,
            [
                "  different t d0: call 2",
                "  unreproducible t u0: call 1 (recorded by their hash, not reproduced: pin)",
                "  … and 5 more",
            ],
            "{text}"
        );
    }

    /// Executions of a tool the spec replayed on lacks are counted apart,
    /// not listed one by one, and not different.
    #[test]
    fn a_tool_the_spec_lacks_is_counted_apart() {
        let mut s = Summary::default();
        for i in 0..2 {
            s.add(Replayed {
                tool_absent: true,
                ..replayed(
                    &format!("a{i}"),
                    Verdict::NotReplayable {
                        reason: "the spec replayed on has no tool `t`".into(),
                    },
                )
            });
        }
        assert!(s.none_different());
        assert_eq!(
            s.text(20),
            "t: 2 replayed, 0 identical, 0 different, 0 unreproducible, 0 not replayable, \
             2 not run: the spec replayed on has no tool `t`\n"
        );
    }
}
