//! The execution contract: one request in, one typed response and exactly
//! one final audit entry out, in nine visible steps.

pub use crate::request::{Auth, Request, Response};

use crate::bundle::Bundle;
use crate::exec::{End, Run, calls_json, rows_json};
use crate::expr::Value as V;
use crate::hash::{canonical, sha256_hex};
use crate::input;
use crate::model::{Limit, PolicyAction, PolicyKind};
use crate::ports::{Claim, Clock, External, Storage};
use crate::problem::{Code, Problem};
use crate::tape::{Tape, TapedClock, TapedExternal, TapedStorage};
use serde_json::{Value, json};

/// The largest input an audit entry copies; a larger one is recorded by its
/// hash (`inputHash`) only.
pub const MAX_AUDITED_INPUT: usize = 64 << 10;

/// How many times an execution that hit a concurrent update (and made no
/// external call) is run again before answering 409.
const CONFLICT_RETRIES: u32 = 3;

/// Runs one request through the steps of the contract (docs/contract.md):
///
/// 1. who is calling: 401 without a token, 403 without the tool's roles;
/// 2. validate the input and the idempotency key;
/// 3. `denyWhen` and policies, before any storage effect;
/// 4. an idempotent replay is answered; rate limits are counted;
/// 5. run the flow, each `transaction` node in a storage transaction;
/// 6. check invariants on every written row before its commit;
/// 7. commit or roll back;
/// 8. write exactly one final audit entry;
/// 9. answer with a typed response (output validated before the last
///    commit; problem+json for errors).
pub fn execute(
    bundle: &Bundle,
    request: &Request,
    storage: &mut dyn Storage,
    clock: &mut dyn Clock,
    external: &mut dyn External,
) -> Response {
    // Every call of an import is recorded: the final entry's `tape`, what a
    // replay answers from.
    let tape = std::cell::RefCell::new(Tape::new(request));
    let storage = &mut TapedStorage {
        inner: storage,
        tape: &tape,
    };
    let clock = &mut TapedClock {
        inner: clock,
        tape: &tape,
    };
    let external = &mut TapedExternal {
        inner: external,
        tape: &tape,
    };
    // The request's time (its audit `time`, its rate window): the first
    // reading of the clock, which a host reuses for the entry it writes
    // itself if the executor traps.
    let started = clock.now_ms();
    // Whole numbers written as decimals (`5.0`, `1e2`) are integers, as
    // JSON Schema reads them: normalised once, for every step after.
    let request = &*normalized(request);
    let mut audit = Audit::new(&bundle.hash, request, started, Some(&tape));
    let Some((tool_name, tool, compiled)) = bundle.tool(&request.tool) else {
        let detail = format!("there is no tool `{}`", request.tool);
        return audit.reject(storage, clock, &Problem::new(Code::UnknownTool, detail));
    };
    audit.tool(tool, compiled);
    let call = Call {
        bundle,
        tool_name,
        tool,
        compiled,
        request,
        started,
        roots: roots(request, tool, started),
    };
    // 1–2. who is calling, and what they send.
    let scheduled = match call.admit() {
        Ok(s) => s,
        Err(p) => return audit.reject(storage, clock, &p),
    };
    // A scheduled run's key is its claim of that time.
    let scheduled = scheduled.map(|at| {
        audit.scheduled(&crate::cron::time_text(at));
        crate::cron::claim_key(tool_name, at)
    });
    let mut call = call;
    if let (Some(key), V::Map(r)) = (&scheduled, &mut call.roots[2]) {
        r.insert("idempotencyKey".to_string(), V::String(key.clone()));
    }
    // 3. `denyWhen`, the idempotency key and policies.
    let screened = call.screen(&call.run(storage, clock, external));
    let Screened {
        mut key,
        warned,
        rates,
    } = match screened {
        Ok(s) => s,
        Err(p) => return audit.reject(storage, clock, &p),
    };
    audit.policies = warned;
    // 4. a replay answers with the stored response; then rate limits.
    let scope = match scheduled {
        Some(k) => {
            key = Some(k);
            crate::cron::claim_scope(tool_name)
        }
        None => call.scope(),
    };
    match call.claim(storage, key.as_deref(), &scope) {
        Ok(None) => {}
        Ok(Some((status, body))) => return audit.replayed(storage, clock, status, body),
        Err(p) => return audit.reject(storage, clock, &p),
    }
    if let Err(p) = call.count_rates(storage, rates, &mut audit.policies) {
        if let Some(k) = &key {
            let _ = storage.release_key(&scope, k);
        }
        return audit.reject(storage, clock, &p);
    }
    // 5–9. the flow, invariants, commit or roll back, audit, answer.
    call.run_flow(storage, clock, external, audit, key.as_deref(), &scope)
}

/// The request with its whole decimals as integers (a copy only when one
/// changes).
fn normalized(request: &Request) -> std::borrow::Cow<'_, Request> {
    if !input::has_whole_decimal(&request.input) {
        return std::borrow::Cow::Borrowed(request);
    }
    let mut r = request.clone();
    input::normalize_numbers(&mut r.input);
    std::borrow::Cow::Owned(r)
}

/// One call of one tool, while the contract runs it.
struct Call<'a> {
    bundle: &'a Bundle,
    tool_name: &'a str,
    tool: &'a crate::model::Tool,
    compiled: &'a crate::bundle::Compiled,
    request: &'a Request,
    started: i64,
    /// `input`, `auth`, `request`.
    roots: [V; 3],
}

/// What the screening before any storage effect found.
struct Screened {
    /// The idempotency key, when the tool has one and it is not empty.
    key: Option<String>,
    /// Policies that warned or escalated.
    warned: Vec<(String, &'static str)>,
    /// Rate limits to count: name, per-minute maximum, action, message.
    rates: Vec<(String, u64, PolicyAction, Option<String>)>,
}

impl<'a> Call<'a> {
    /// An execution of this call on the given ports.
    fn run<'r>(
        &'r self,
        storage: &'r mut dyn Storage,
        clock: &'r mut dyn Clock,
        external: &'r mut dyn External,
    ) -> Run<'r> {
        Run::new(
            self.bundle,
            self.tool_name,
            self.tool,
            self.compiled,
            storage,
            clock,
            external,
            self.request,
            self.roots.clone(),
            self.started,
        )
    }

    /// Who is calling (first: a caller who may not call learns nothing of
    /// the input schema), then the input, the idempotency key and a
    /// scheduled run's time: `Some` time for a scheduled run.
    fn admit(&self) -> Result<Option<jiff::Timestamp>, Problem> {
        if let Some(p) = authorize(self.tool, self.request) {
            return Err(p);
        }
        let request = self.request;
        // (A host refuses it first, as it reads the body: deeper, the
        // request would not reach the core whole.)
        if input::too_deep(&request.input) {
            let detail = input::too_deep_detail("the input");
            return Err(Problem::new(Code::InvalidJson, detail));
        }
        // Postgres cannot store U+0000 in text: no engine accepts it anywhere.
        let (nul, n) = input::nul_characters(&request.input);
        if n > 0 {
            return Err(input::invalid("the input contains a NUL character", nul, n));
        }
        let (violations, n) = input::violations(&self.compiled.input, &request.input);
        if n > 0 {
            let detail = "the input does not match the tool's schema";
            return Err(input::invalid(detail, violations, n));
        }
        if let Some(k) = &request.idempotency_key
            && (k.is_empty() || k.contains('\0'))
        {
            return Err(Problem::new(
                Code::InvalidIdempotencyKey,
                "the Idempotency-Key must be non-empty text without NUL characters",
            ));
        }
        if let Some(at) = &request.scheduled {
            return self.scheduled(at).map(Some);
        }
        if self.compiled.key_header && request.idempotency_key.is_none() {
            return Err(Problem::new(
                Code::IdempotencyKeyRequired,
                format!("`{}` needs an Idempotency-Key header", self.tool_name),
            ));
        }
        Ok(None)
    }

    /// Scheduled time `at`, read: one of the cron tool's times, not later
    /// than five minutes from now (clocks differ a little).
    fn scheduled(&self, at: &str) -> Result<jiff::Timestamp, Problem> {
        let crate::model::Trigger::Cron { times, zone, .. } = &self.tool.trigger else {
            let detail = format!(
                "`{}` is not a cron tool: it has no scheduled times",
                self.tool_name
            );
            return Err(Problem::new(Code::InvalidScheduleTime, detail));
        };
        let refuse = |why: &str| {
            Problem::new(
                Code::InvalidScheduleTime,
                format!("`{at}` is not a time to run `{}`: {why}", self.tool_name),
            )
        };
        let t: jiff::Timestamp = at
            .parse()
            .map_err(|_| refuse("it is not an RFC 3339 time with an offset"))?;
        if !times.fires_at(t, zone) {
            return Err(refuse("the schedule does not fire then"));
        }
        if t.as_millisecond() > self.started.saturating_add(5 * 60_000) {
            return Err(refuse("it is in the future"));
        }
        Ok(t)
    }

    /// `denyWhen`, the idempotency key's value and the policies, evaluated
    /// before any storage effect. A policy whose expression fails is a
    /// mistake of the spec, not a verdict on the caller: 500 `spec_error`,
    /// never a 403.
    fn screen(&self, probe: &Run) -> Result<Screened, Problem> {
        if let Some(deny) = &self.tool.auth.deny_when {
            match probe.eval_tool_level(deny)? {
                V::Bool(false) => {}
                V::Bool(true) => {
                    let detail = format!("`{}` is denied to this caller", self.tool_name);
                    return Err(Problem::new(Code::Forbidden, detail));
                }
                other => {
                    return Err(Problem::spec_error(format!(
                        "`denyWhen` at {} gave {}, not a bool",
                        deny.path,
                        other.a_type()
                    )));
                }
            }
        }
        let key = match &self.tool.idempotency_key {
            Some(k) => match probe.eval_tool_level(k)? {
                V::Null => None,
                V::String(s) if s.is_empty() => None,
                v => Some(v.to_string()),
            },
            // A queue delivery's key is its message id (the host's).
            None if matches!(self.tool.trigger, crate::model::Trigger::Queue { .. }) => self
                .request
                .idempotency_key
                .clone()
                .filter(|k| !k.is_empty()),
            None => None,
        };
        let mut screened = Screened {
            key,
            warned: Vec::new(),
            rates: Vec::new(),
        };
        let mut blocked = None;
        for &i in &self.compiled.policies {
            let Some((name, policy)) = self.bundle.spec.policies.get_index(i) else {
                continue;
            };
            if !policy_fires(probe, name, policy, &mut screened.rates)? {
                continue;
            }
            match policy.action {
                PolicyAction::Block => {
                    blocked = blocked.or_else(|| {
                        let msg = policy
                            .message
                            .clone()
                            .unwrap_or_else(|| format!("policy `{name}` blocks this request"));
                        Some(Problem::new(Code::PolicyDenied, msg))
                    });
                }
                PolicyAction::Warn => screened.warned.push((name.clone(), "warn")),
                PolicyAction::Escalate => screened.warned.push((name.clone(), "escalate")),
            }
        }
        match blocked {
            Some(p) => Err(p),
            None => Ok(screened),
        }
    }

    /// The scope of the idempotency key: the tool and the caller, and,
    /// where the spec's owner rules read claims (tenants), the caller's
    /// value of each: the same key sent for two tenants is two requests,
    /// never one tenant's answer replayed to the other.
    fn scope(&self) -> String {
        let auth = self.request.auth.as_ref();
        let sub = auth.map_or("", |a| a.sub.as_str());
        let mut scope = format!("{}:{sub}", self.tool_name);
        for claim in &self.bundle.tenant_claims {
            let value = auth.and_then(|a| crate::exec::claim_text(&a.claims, claim));
            // A unit separator: neither a claim's name nor a subject
            // ends there by accident.
            scope.push('\u{1f}');
            scope.push_str(claim);
            if let Some(v) = value {
                scope.push('=');
                scope.push_str(&v);
            }
        }
        scope
    }

    /// Claims the idempotency key: `None` for a new request, the stored
    /// status and body for a replay.
    fn claim(
        &self,
        storage: &mut dyn Storage,
        key: Option<&str>,
        scope: &str,
    ) -> Result<Option<(u16, Value)>, Problem> {
        let Some(k) = key else { return Ok(None) };
        // A scheduled time runs once, whatever input each caller sends.
        let fingerprint = match &self.request.scheduled {
            Some(_) => "scheduled".to_owned(),
            None => sha256_hex(canonical(&self.request.input).as_bytes()),
        };
        match storage.claim_key(scope, k, &fingerprint, self.started) {
            Ok(Claim::New) => Ok(None),
            Ok(Claim::Replay { status, body }) => Ok(Some((status, body))),
            Ok(Claim::Mismatch) => Err(Problem::new(
                Code::IdempotencyKeyReused,
                "this idempotency key was used with another input",
            )),
            Ok(Claim::InFlight) => Err(Problem::new(
                Code::IdempotencyInFlight,
                "a request with this idempotency key is still running",
            )),
            Err(e) => Err(crate::exec::storage_problem(e)),
        }
    }

    /// Counts this request in every rate window it belongs to: a `block`
    /// limit past its maximum is 429; `warn` and `escalate` are recorded.
    fn count_rates(
        &self,
        storage: &mut dyn Storage,
        rates: Vec<(String, u64, PolicyAction, Option<String>)>,
        policies: &mut Vec<(String, &'static str)>,
    ) -> Result<(), Problem> {
        let sub = self
            .request
            .auth
            .as_ref()
            .map_or("anonymous", |a| a.sub.as_str());
        let window = self.started.div_euclid(60_000) * 60_000;
        for (name, max, action, message) in rates {
            let count = storage
                .rate_hit(&format!("{name}:{sub}"), window)
                .map_err(crate::exec::storage_problem)?;
            if count <= max {
                continue;
            }
            match action {
                PolicyAction::Block => {
                    let msg = message.unwrap_or_else(|| format!("at most {max} requests a minute"));
                    return Err(Problem::new(Code::RateLimited, msg));
                }
                PolicyAction::Warn => policies.push((name, "warn")),
                PolicyAction::Escalate => policies.push((name, "escalate")),
            }
        }
        Ok(())
    }

    /// Runs the flow (again, after a conflict with no effect outside the
    /// database yet), checks the output before the last commit, and ends
    /// with the final audit entry and the answer.
    fn run_flow(
        &self,
        storage: &mut dyn Storage,
        clock: &mut dyn Clock,
        external: &mut dyn External,
        audit: Audit,
        key: Option<&str>,
        scope: &str,
    ) -> Response {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut run = self.run(storage, clock, external);
            run.policies = audit.policies.clone();
            let outcome = match run.run_flow(&self.tool.flow) {
                Ok(End::Return(value, status)) => self.checked_output(&mut run, value, status),
                Ok(End::Fail(p)) | Err(p) => Err(p),
                Ok(End::Body) => Err(Problem::new(
                    Code::Internal,
                    "the flow ended without return or fail",
                )),
            };
            // A conflict with no effect yet: run the request again.
            if let Err(p) = &outcome
                && p.is(Code::Conflict)
                && run.calls.is_empty()
                && run.rows.is_empty()
                && attempt < CONFLICT_RETRIES
            {
                if let Some(tx) = run.pending.take() {
                    let _ = run.storage.rollback(tx.id);
                }
                continue;
            }
            return audit.finish(run, key, scope, outcome);
        }
    }

    /// The output, checked against the output schema before the last
    /// commit: a spec bug never commits data it cannot report.
    fn checked_output(
        &self,
        run: &mut Run,
        value: Value,
        status: u16,
    ) -> Result<(u16, Value), Problem> {
        let (errors, n) = input::violations(&self.compiled.output, &value);
        if n == 0 {
            return Ok((status, value));
        }
        if let Some(tx) = run.pending.take() {
            let _ = run.storage.rollback(tx.id);
        }
        Err(Problem::new(
            Code::InvalidOutput,
            "the tool's result does not match its output schema",
        )
        .internal(serde_json::to_string(&errors).unwrap_or_default()))
    }
}

/// Whether a `custom` or `budgetCheck` policy fires; a `rateLimit` is
/// queued in `rates` to be counted after the replay check.
fn policy_fires(
    probe: &Run,
    name: &str,
    policy: &crate::model::Policy,
    rates: &mut Vec<(String, u64, PolicyAction, Option<String>)>,
) -> Result<bool, Problem> {
    match &policy.kind {
        PolicyKind::Custom { when } => match probe.eval_tool_level(when)? {
            V::Bool(b) => Ok(b),
            other => Err(Problem::spec_error(format!(
                "policy `{name}`: `when` at {} gave {}, not a bool",
                when.path,
                other.a_type()
            ))),
        },
        PolicyKind::BudgetCheck { amount, max_amount } => {
            let max = match max_amount {
                Limit::Fixed(n) => V::Int(i64::try_from(*n).unwrap_or(i64::MAX)),
                Limit::Expr(e) => probe.eval_tool_level(e)?,
            };
            let value = probe.eval_tool_level(amount)?;
            if let Some(o) = crate::expr::compare(&value, &max) {
                return Ok(o == std::cmp::Ordering::Greater);
            }
            // Null because the caller left out a property the input schema
            // does not declare: the caller's mistake, not the spec's.
            let left_out = |v: &V, e: &crate::model::Expression| {
                (*v == V::Null).then(|| probe.left_out_of(e)).flatten()
            };
            Err(left_out(&value, amount)
                .or_else(|| match max_amount {
                    Limit::Expr(e) => left_out(&max, e),
                    Limit::Fixed(_) => None,
                })
                .unwrap_or_else(|| {
                    Problem::spec_error(format!(
                        "policy `{name}`: {} amount cannot be compared with {} maximum",
                        value.a_type(),
                        max.a_type()
                    ))
                }))
        }
        PolicyKind::RateLimit {
            max_requests_per_minute,
        } => {
            rates.push((
                name.to_string(),
                *max_requests_per_minute,
                policy.action,
                policy.message.clone(),
            ));
            Ok(false)
        }
        PolicyKind::RowLimit { .. } => Ok(false),
    }
}

/// The response and final audit entry for a request the executor did not
/// finish: what a host writes itself when the guest trapped or ran out of
/// time (outcome `error`), or when the host `refused` it before the
/// executor ran (a bad token or signature, a body too large: outcome
/// `rejected`). The entry's `time` is `started_ms` (the time [`execute`]
/// stamped the request with, or `now_ms` if it never ran) and its duration
/// runs to `now_ms`. `sensitive` are the tool's `sensitive` input
/// properties, recorded as their SHA-256 as the executor records them. The
/// caller appends the entry.
pub fn failed(
    bundle_hash: &str,
    request: &Request,
    problem: &Problem,
    (started_ms, now_ms): (i64, i64),
    refused: bool,
    sensitive: &[String],
) -> Response {
    struct At(i64);
    impl Clock for At {
        fn now_ms(&mut self) -> i64 {
            self.0
        }
    }
    let mut audit = Audit::new(bundle_hash, request, started_ms, None);
    audit.mask(sensitive);
    let body = problem.body(&request.id);
    let outcome = if refused { "rejected" } else { "error" };
    let entry = audit.seal(
        &mut At(now_ms),
        outcome,
        problem.status(),
        Some(problem),
        &body,
    );
    Response {
        status: problem.status(),
        body,
        audit: entry,
    }
}

fn authorize(tool: &crate::model::Tool, request: &Request) -> Option<Problem> {
    // Nothing with a NUL character reaches the flow (Postgres cannot
    // store it), not even from a verified token.
    if let Some(auth) = &request.auth
        && (auth.sub.contains('\0')
            || auth.roles.iter().any(|r| r.contains('\0'))
            || input::has_nul(&auth.claims))
    {
        return Some(Problem::new(
            Code::Unauthenticated,
            "the token's claims contain a NUL character",
        ));
    }
    if tool.auth.public {
        return None;
    }
    let Some(auth) = &request.auth else {
        return Some(Problem::new(
            Code::Unauthenticated,
            "this tool needs a signed-in caller",
        ));
    };

    if !tool.auth.roles.is_empty() && !auth.roles.iter().any(|r| tool.auth.roles.contains(r)) {
        return Some(Problem::new(
            Code::Forbidden,
            format!(
                "`{}` needs one of the roles {}",
                request.tool,
                tool.auth
                    .roles
                    .iter()
                    .map(|r| format!("`{r}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    None
}

/// `input`, `auth` and `request` as expressions see them. An optional
/// input property the call left out reads as `null` (`has(input.x)` is
/// false either way).
fn roots(request: &Request, tool: &crate::model::Tool, now_ms: i64) -> [V; 3] {
    let mut input = V::from_json(&request.input);
    if let (V::Map(m), Some(props)) = (
        &mut input,
        tool.input.get("properties").and_then(|p| p.as_object()),
    ) {
        for name in props.keys() {
            if !m.contains_key(name) {
                m.insert(name.clone(), V::Null);
            }
        }
    }
    let auth = match &request.auth {
        Some(a) => {
            let mut m = crate::expr::value::Map::default();
            m.insert("sub".to_string(), V::String(a.sub.clone()));
            m.insert(
                "roles".to_string(),
                V::List(a.roles.iter().map(|r| V::String(r.clone())).collect()),
            );
            m.insert(
                "claims".to_string(),
                if a.claims.is_null() {
                    V::Map(Default::default())
                } else {
                    V::from_json(&a.claims)
                },
            );
            V::Map(m)
        }
        None => {
            let mut m = crate::expr::value::Map::default();
            m.insert("sub".to_string(), V::Null);
            m.insert("roles".to_string(), V::List(Vec::new()));
            m.insert("claims".to_string(), V::Map(Default::default()));
            V::Map(m)
        }
    };
    let mut r = crate::expr::value::Map::default();
    r.insert("id".to_string(), V::String(request.id.clone()));
    r.insert(
        "time".to_string(),
        V::Timestamp(now_ms.saturating_mul(1000)),
    );
    r.insert(
        "idempotencyKey".to_string(),
        request.idempotency_key.clone().map_or(V::Null, V::String),
    );
    [input, auth, V::Map(r)]
}

/// The final audit entry being built.
struct Audit<'t> {
    entry: serde_json::Map<String, serde_json::Value>,
    started: i64,
    policies: Vec<(String, &'static str)>,
    execution: String,
    /// What the execution's imports answered (none for an entry the host
    /// writes itself).
    tape: Option<&'t std::cell::RefCell<Tape>>,
}

fn cacheable(status: u16) -> bool {
    status < 500 && status != 409 && status != 429
}

impl<'t> Audit<'t> {
    fn new(
        bundle_hash: &str,
        request: &Request,
        started: i64,
        tape: Option<&'t std::cell::RefCell<Tape>>,
    ) -> Audit<'t> {
        let mut entry = serde_json::Map::new();
        entry.insert("kind".into(), json!("final"));
        entry.insert("execution".into(), json!(request.id));
        entry.insert(
            "time".into(),
            json!(crate::expr::value::format_timestamp(
                started.saturating_mul(1000)
            )),
        );
        entry.insert("tool".into(), json!(request.tool));
        entry.insert("bundle".into(), json!(bundle_hash));
        entry.insert(
            "subject".into(),
            json!(request.auth.as_ref().map(|a| a.sub.clone())),
        );
        entry.insert(
            "roles".into(),
            json!(
                request
                    .auth
                    .as_ref()
                    .map(|a| a.roles.clone())
                    .unwrap_or_default()
            ),
        );
        let input_text = canonical(&request.input);
        // (Postgres refuses a NUL character in `jsonb`: such an input,
        // refused anyway, is recorded by its hash.)
        // (Nor could an input nested past the limit be carried back whole:
        // refused anyway, it too is recorded by its hash.)
        let input = if input::too_deep(&request.input) {
            json!({"omitted": format!("nested deeper than {} levels", input::MAX_DEPTH)})
        } else if input::has_nul(&request.input) {
            json!({"omitted": "a NUL character"})
        } else if input_text.len() <= MAX_AUDITED_INPUT {
            request.input.clone()
        } else {
            json!({"omitted": format!("{} bytes", input_text.len())})
        };
        entry.insert("input".into(), input);
        entry.insert(
            "inputHash".into(),
            json!(format!("sha256:{}", sha256_hex(input_text.as_bytes()))),
        );
        Audit {
            entry,
            started,
            policies: Vec::new(),
            execution: request.id.clone(),
            tape,
        }
    }

    /// The outbox messages that committed (or commit with this entry):
    /// `messages`, only when there are some.
    fn messages<'m>(&mut self, messages: impl Iterator<Item = &'m serde_json::Value>) {
        let list: Vec<serde_json::Value> = messages.cloned().collect();
        if !list.is_empty() {
            self.entry
                .insert("messages".into(), serde_json::Value::Array(list));
        }
    }

    /// A scheduled run names its time (RFC 3339 UTC).
    fn scheduled(&mut self, at: &str) {
        self.entry.insert("scheduled".into(), json!(at));
    }

    fn tool(&mut self, tool: &crate::model::Tool, compiled: &crate::bundle::Compiled) {
        self.mask(&tool.sensitive);
        self.entry.insert("risk".into(), compiled.risk.clone());
    }

    /// Replaces the input's `sensitive` properties by their SHA-256.
    fn mask(&mut self, sensitive: &[String]) {
        match self.entry.get_mut("input") {
            Some(serde_json::Value::Object(m)) => {
                for key in sensitive {
                    if let Some(v) = m.get_mut(key) {
                        *v = json!(format!("sha256:{}", sha256_hex(canonical(v).as_bytes())));
                    }
                }
            }
            // A body refused as it was read (not JSON, a key twice, too
            // deep), kept as its text: a sensitive value in it cannot be
            // told apart, so none of it is kept.
            Some(v @ serde_json::Value::String(_)) if !sensitive.is_empty() => {
                *v = json!({"omitted": "a body that is not JSON, of a tool with sensitive inputs"});
            }
            _ => {}
        }
    }

    fn seal(
        &mut self,
        clock: &mut dyn Clock,
        outcome: &str,
        status: u16,
        problem: Option<&Problem>,
        body: &serde_json::Value,
    ) -> serde_json::Value {
        self.entry.insert("outcome".into(), json!(outcome));
        self.entry.insert("status".into(), json!(status));
        if let Some(p) = problem {
            self.entry.insert("code".into(), json!(p.code()));
            self.entry.insert("detail".into(), json!(p.detail));
            if let Some(i) = &p.internal {
                self.entry.insert("internal".into(), json!(i));
            }
        }
        self.entry.insert(
            "policies".into(),
            serde_json::Value::Array(
                self.policies
                    .iter()
                    .map(|(n, a)| json!({"name": n, "action": a}))
                    .collect(),
            ),
        );
        self.entry.entry("rows").or_insert(json!([]));
        self.entry.entry("calls").or_insert(json!([]));
        self.entry.insert(
            "durationMs".into(),
            json!(clock.now_ms().saturating_sub(self.started).max(0)),
        );
        if let Some(tape) = self.tape {
            self.entry
                .insert("tape".into(), tape.borrow().to_json(body));
        }
        // (A commit that fails puts the entry back, see `finish`.)
        serde_json::Value::Object(std::mem::take(&mut self.entry))
    }

    /// A request turned away before its flow ran.
    fn reject(mut self, storage: &mut dyn Storage, clock: &mut dyn Clock, p: &Problem) -> Response {
        let body = p.body(&self.execution);
        let entry = self.seal(clock, "rejected", p.status(), Some(p), &body);
        let _ = storage.append_audit(None, &entry);
        Response {
            status: p.status(),
            body,
            audit: entry,
        }
    }

    fn replayed(
        mut self,
        storage: &mut dyn Storage,
        clock: &mut dyn Clock,
        status: u16,
        body: serde_json::Value,
    ) -> Response {
        let entry = self.seal(clock, "replayed", status, None, &body);
        let _ = storage.append_audit(None, &entry);
        Response {
            status,
            body,
            audit: entry,
        }
    }

    /// The end of an execution that ran its flow.
    fn finish(
        mut self,
        mut run: Run,
        key: Option<&str>,
        scope: &str,
        outcome: Result<(u16, serde_json::Value), Problem>,
    ) -> Response {
        let execution = self.execution.clone();
        match outcome {
            Ok((status, body)) => {
                let tx = run.pending.take();
                let pending_rows = tx.as_ref().map(|t| t.rows.as_slice()).unwrap_or_default();
                self.entry.insert(
                    "rows".into(),
                    rows_json(run.rows.iter().chain(pending_rows)),
                );
                let pending_messages = tx
                    .as_ref()
                    .map(|t| t.messages.as_slice())
                    .unwrap_or_default();
                self.messages(run.messages.iter().chain(pending_messages));
                self.entry.insert("calls".into(), calls_json(&run.calls));
                self.policies = run.policies.clone();
                let entry = self.seal(run.clock, "ok", status, None, &body);
                let txid = tx.as_ref().map(|t| t.id);
                let committed = (|| {
                    run.storage.append_audit(txid, &entry)?;
                    if let Some(k) = key {
                        if cacheable(status) {
                            run.storage.complete_key(txid, scope, k, status, &body)?;
                        } else {
                            run.storage.release_key(scope, k)?;
                        }
                    }
                    if let Some(t) = txid {
                        run.storage.commit(t)?;
                    }
                    Ok::<(), crate::ports::StorageError>(())
                })();
                match committed {
                    Ok(()) => Response {
                        status,
                        body,
                        audit: entry,
                    },
                    Err(e) => {
                        if let serde_json::Value::Object(m) = entry {
                            self.entry = m;
                        }
                        if let Some(t) = txid {
                            let _ = run.storage.rollback(t);
                        }
                        // The writes did not commit: answer with the error,
                        // undo effects, audit on its own.
                        let p = crate::exec::storage_problem(e);
                        self.entry.insert("rows".into(), rows_json(&run.rows));
                        self.entry.remove("messages");
                        self.messages(run.messages.iter());
                        self.fail(run, key, scope, p, &execution)
                    }
                }
            }
            Err(p) => {
                // A failure rolls back the transaction whose commit was
                // still pending; transactions that committed before (ahead
                // of an external call, or of another transaction) stand,
                // and the answer says so (`committed`).
                if let Some(tx) = run.pending.take() {
                    let _ = run.storage.rollback(tx.id);
                }
                self.fail(run, key, scope, p, &execution)
            }
        }
    }

    fn fail(
        mut self,
        mut run: Run,
        key: Option<&str>,
        scope: &str,
        mut p: Problem,
        execution: &str,
    ) -> Response {
        run.compensate();
        let _ = run.flush_pending();
        let committed = !run.rows.is_empty() || !run.messages.is_empty();
        if committed {
            // Some writes of this request committed before it failed (and
            // compensations may have written too): the audit entry lists
            // them; a client must not take this error for "nothing changed".
            p.extra.insert("committed".into(), json!(true));
        }
        // After lasting effects (committed writes, a call to an operation
        // with side effects, which may have charged even when it failed),
        // the answer is stored whatever its status: a retry with the same
        // key gets it again instead of doing them twice.
        let lasting = committed || run.calls.iter().any(|c| run.has_effects(c));
        self.entry.insert("rows".into(), rows_json(&run.rows));
        self.entry.remove("messages");
        self.messages(run.messages.iter());
        self.entry.insert("calls".into(), calls_json(&run.calls));
        if !run.failed_compensations.is_empty() {
            self.entry.insert(
                "compensationsFailed".into(),
                Value::Array(run.failed_compensations.clone()),
            );
        }
        self.policies = run.policies.clone();
        let body = p.body(execution);
        let entry = self.seal(run.clock, "error", p.status(), Some(&p), &body);
        let _ = run.storage.append_audit(None, &entry);
        if let Some(k) = key {
            if lasting || cacheable(p.status()) {
                let _ = run.storage.complete_key(None, scope, k, p.status(), &body);
            } else {
                let _ = run.storage.release_key(scope, k);
            }
        }
        Response {
            status: p.status(),
            body,
            audit: entry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry a host writes itself (a refusal, a trap) keeps the tool's
    /// `sensitive` inputs as their hash, as the executor's own entries do.
    #[test]
    fn entries_the_host_writes_mask_sensitive_inputs() {
        let request = Request {
            tool: "pay".into(),
            id: "req-1".into(),
            input: json!({"card": "4242424242424242", "amount": 5}),
            ..Request::default()
        };
        let problem = Problem::new(Code::Unauthenticated, "a bad token");
        for refused in [true, false] {
            let r = failed(
                "sha256:b",
                &request,
                &problem,
                (1000, 1005),
                refused,
                &["card".into()],
            );
            let input = &r.audit["input"];
            assert_eq!(input["amount"], 5);
            let card = input["card"].as_str().unwrap();
            assert!(card.starts_with("sha256:"), "{card}");
            assert!(!r.audit.to_string().contains("4242424242424242"));
            assert_eq!(r.audit["inputHash"].as_str().map(str::len), Some(64 + 7));
        }
        let plain = failed("sha256:b", &request, &problem, (1000, 1005), true, &[]);
        assert_eq!(plain.audit["input"]["card"], "4242424242424242");
    }

    /// A `call`'s or an `emit`'s `idempotencyKey` that is null or empty is
    /// as if it were absent: the node's own key, never `null` shared by
    /// every such call (a service would answer them all with the first
    /// one's result).
    #[test]
    fn a_null_or_empty_node_key_is_the_nodes_own() {
        let spec = json!({"sinew": "0.2", "name": "k", "roles": ["clerk"],
            "externals": {"api": {"kind": "http", "operations": {"go": {"sideEffects": true}}}},
            "tools": {"t": {
                "trigger": {"http": {"method": "POST", "path": "/t"}}, "auth": {"roles": ["clerk"]},
                "idempotencyKey": "request.idempotencyKey",
                "input": {"type": "object", "properties": {"ref": {"type": ["string", "null"]}}},
                "output": true,
                "flow": {"entry": "c", "nodes": {
                    "c": {"type": "call", "external": "api", "operation": "go", "timeoutMs": 1000,
                          "retry": {"max": 2}, "idempotencyKey": "input.ref", "next": "tx"},
                    "tx": {"type": "transaction", "next": "r", "body": {"entry": "m", "nodes": {
                        "m": {"type": "emit", "external": "api", "operation": "go",
                              "idempotencyKey": "input.ref"}}}},
                    "r": {"type": "return", "value": "m.id"}}}}}});
        let bundle = Bundle::load(&spec.to_string()).unwrap();
        for (n, r#ref) in [json!(null), json!(""), json!("order-1")]
            .into_iter()
            .enumerate()
        {
            let mut store = crate::ports::memory::MemoryStorage::new();
            let mut clock = crate::ports::memory::FixedClock::new(1_767_225_600_000);
            let mut ext = crate::ports::script::ScriptedExternal::new();
            let id = format!("req-{n}");
            let request = Request {
                tool: "t".into(),
                id: id.clone(),
                input: json!({"ref": r#ref}),
                auth: Some(crate::request::Auth {
                    sub: "cleo".into(),
                    roles: vec!["clerk".into()],
                    claims: json!({}),
                }),
                idempotency_key: Some(format!("k-{n}")),
                ..Request::default()
            };
            let r = execute(&bundle, &request, &mut store, &mut clock, &mut ext);
            assert_eq!(r.status, 200, "{:?}", r.body);
            let message = &r.audit["messages"][0];
            let (call_key, emit_key) = match r#ref.as_str() {
                Some(k) if !k.is_empty() => (k.to_owned(), json!(k)),
                _ => (format!("{id}:c"), message["id"].clone()),
            };
            assert_eq!(
                ext.calls()[0].idempotency_key.as_deref(),
                Some(call_key.as_str())
            );
            assert_eq!(message["idempotencyKey"], emit_key, "{message}");
            assert_eq!(message["id"], r.body);
        }
    }

    /// An input holding a NUL character (a key or a value), refused
    /// anyway, is recorded by its hash: Postgres cannot hold it in `jsonb`,
    /// and the log must stay queryable as JSON.
    #[test]
    fn an_input_with_a_nul_character_is_recorded_by_its_hash() {
        for input in [json!({"t\u{0}": 1}), json!({"t": ["a\u{0}"]})] {
            let request = Request {
                tool: "pay".into(),
                id: "req-1".into(),
                input,
                ..Request::default()
            };
            let problem = Problem::new(Code::Unauthenticated, "no token");
            let r = failed("sha256:b", &request, &problem, (1000, 1005), true, &[]);
            assert_eq!(r.audit["input"], json!({"omitted": "a NUL character"}));
            assert!(!r.audit.to_string().contains("\\u0000"));
            assert_eq!(r.audit["inputHash"].as_str().map(str::len), Some(64 + 7));
        }
    }

    /// An input nested past [`input::MAX_DEPTH`], refused anyway, is
    /// recorded by its hash: the entry nests it a few levels deeper, past
    /// what a JSON reader takes back.
    #[test]
    fn an_input_nested_too_deep_is_recorded_by_its_hash() {
        let mut deep = json!(1);
        for _ in 0..input::MAX_DEPTH {
            deep = json!([deep]);
        }
        let request = Request {
            tool: "pay".into(),
            id: "req-1".into(),
            input: json!({"a": deep}),
            ..Request::default()
        };
        let problem = Problem::new(Code::Unauthenticated, "no token");
        let r = failed("sha256:b", &request, &problem, (1000, 1005), true, &[]);
        assert_eq!(
            r.audit["input"],
            json!({"omitted": "nested deeper than 32 levels"})
        );
        assert!(!input::too_deep(&json!({"a": deep[0]})));
    }
}
