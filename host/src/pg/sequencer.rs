//! The audit sequencer: moves queued entries (`sinew_audit_queue`) into
//! the chain (`sinew_audit`), in `id` order, a batch per transaction.
//!
//! Requests never wait for it: a request's transaction only inserts its
//! entries into the queue, so instances commit in parallel. Every instance
//! runs a sequencer; a batch is chained under the chain's transaction-scoped
//! advisory lock, so one runs at a time across instances, and one whose
//! holder dies (its transaction with it) is taken over at the next try. A
//! batch reads the head, seals each entry with its `seq` and `prev`
//! ([`seal_entry`]'s text, made from the queued text by [`seal_text`]
//! without parsing the entry), and in one statement deletes the queued rows and
//! inserts the sealed ones: an entry is in the queue or in the chain, never
//! in both, never in neither.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::Value;
use sinew_core::chain::{GENESIS_HASH, seal_entry, seal_text};
use sinew_core::hash::sha256_hex;
use tokio_postgres::{Client, Statement};

use super::sql::{AUDIT_LOCK, LOCK_CHAIN};

/// Entries chained per transaction at most.
pub const BATCH: i64 = 512;

/// How often a sequencer looks for entries other instances queued (its
/// own instance's commits wake it at once): the bound on how long an entry
/// waits for its place, with a batch's time.
pub const POLL: Duration = Duration::from_millis(100);

/// How long a sequencer woken by its instance's commit waits for more
/// before it chains: under load, a batch per this many milliseconds rather
/// than one per commit or two.
pub const GATHER: Duration = Duration::from_millis(10);

/// An entry still queued this long after its commit means no sequencer
/// runs: `sinew audit verify` reports it.
pub const LATE: Duration = Duration::from_secs(60);

/// Moves the entries of the given ids, sealed, from the queue to the chain.
/// The `execution` and `kind` columns are the sealed entry's (as `sinew
/// audit verify` checks), not the queued row's, which any writer of the
/// queue sets as it likes.
const MOVE: &str = "WITH sealed AS (\
       SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
                            $6::text[], $7::text[]) \
         AS s(id, seq, entry, prev, hash, execution, kind)), \
     moved AS (DELETE FROM sinew_audit_queue q USING sealed s WHERE q.id = s.id \
       RETURNING s.seq, s.execution, s.kind, s.entry, s.prev, s.hash, q.queued_at) \
     INSERT INTO sinew_audit (seq, execution, kind, entry, prev, hash, queued_at, recorded_at) \
     SELECT seq, execution, kind, entry, prev, hash, queued_at, clock_timestamp() FROM moved";

/// Records the review items of the entries just chained (one per
/// `escalate` policy, [`sinew_core::chain::escalations`]), in the
/// transaction that chains them: an item exists exactly when its entry
/// does.
const RAISE: &str = "INSERT INTO sinew_reviews (seq, policy, execution, tool, subject, raised_at) \
     SELECT seq, policy, execution, tool, subject, raised_at::timestamptz \
     FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) \
       AS r(seq, policy, execution, tool, subject, raised_at) \
     ON CONFLICT (seq, policy) DO NOTHING";

/// The review items of chained entries, column by column (for [`RAISE`]).
#[derive(Default)]
struct Raised {
    seq: Vec<i64>,
    policy: Vec<String>,
    execution: Vec<String>,
    tool: Vec<String>,
    subject: Vec<Option<String>>,
    at: Vec<String>,
}

impl Raised {
    fn add(&mut self, seq: i64, entry: &Value) {
        let text = |k: &str| entry.get(k).and_then(Value::as_str).map(str::to_owned);
        for policy in sinew_core::chain::escalations(entry) {
            self.seq.push(seq);
            self.policy.push(policy.to_owned());
            self.execution.push(text("execution").unwrap_or_default());
            self.tool.push(text("tool").unwrap_or_default());
            self.subject.push(text("subject"));
            self.at
                .push(text("time").unwrap_or_else(|| "now".to_owned()));
        }
    }
}

/// Whether to wait for the chain's lock or give up when another holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Give up: another instance is sequencing.
    No,
    /// Wait for it.
    Yes,
}

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Another instance holds the chain's lock.
    Busy,
    /// Entries were chained (none: the queue was empty).
    Chained {
        /// How many.
        n: usize,
        /// The queue ids of those whose text no longer matched its digest:
        /// changed by hand before they were chained (the table refuses
        /// updates), chained as they were found.
        altered: Vec<i64>,
        /// The queue ids of those that were not a JSON object (written to
        /// the queue by hand): chained as found, inside an `unreadable`
        /// entry ([`sinew_core::chain::unreadable_entry`]).
        unreadable: Vec<i64>,
        /// Why the batch's review items could not be recorded (a database
        /// sinew's tables were not migrated on): the entries are chained
        /// all the same.
        unraised: Option<String>,
    },
}

/// Takes the chain's lock, waiting for it.
const LOCK: &str = LOCK_CHAIN;
/// Takes the chain's lock if no one holds it.
const TRY_LOCK: &str = "SELECT pg_try_advisory_xact_lock($1::text::bigint)";
/// The oldest queued entries.
const QUEUED: &str = "SELECT id, entry, digest FROM sinew_audit_queue ORDER BY id LIMIT $1";
/// The chain's last entry.
const HEAD: &str = "SELECT seq, hash FROM sinew_audit ORDER BY seq DESC LIMIT 1";

/// A batch's statements, prepared once on a connection: a running
/// sequencer chains a batch every few milliseconds under load, and would
/// otherwise have Postgres parse and plan each of them every time.
pub struct Statements {
    lock: Statement,
    try_lock: Statement,
    queued: Statement,
    head: Statement,
    moved: Statement,
}

impl Statements {
    /// Prepares them on `client`.
    pub async fn prepare(client: &Client) -> Result<Statements> {
        Ok(Statements {
            lock: client.prepare(LOCK).await?,
            try_lock: client.prepare(TRY_LOCK).await?,
            queued: client.prepare(QUEUED).await?,
            head: client.prepare(HEAD).await?,
            moved: client.prepare(MOVE).await?,
        })
    }
}

/// Chains up to [`BATCH`] queued entries in one transaction on `client`
/// (which must not be inside one).
pub async fn batch(client: &Client, wait: Wait) -> Result<Batch> {
    let statements = Statements::prepare(client).await?;
    batch_with(client, &statements, wait).await
}

/// [`batch`] with the statements prepared on `client`.
pub async fn batch_with(client: &Client, statements: &Statements, wait: Wait) -> Result<Batch> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await?;
    let r = chain_batch(client, statements, wait).await;
    match &r {
        Ok(Batch::Chained { n, .. }) if *n > 0 => client.batch_execute("COMMIT").await?,
        _ => client.batch_execute("ROLLBACK").await?,
    }
    r
}

async fn chain_batch(client: &Client, s: &Statements, wait: Wait) -> Result<Batch> {
    let key = AUDIT_LOCK.to_string();
    match wait {
        Wait::Yes => {
            client.execute(&s.lock, &[&key]).await?;
        }
        Wait::No => {
            let row = client.query_one(&s.try_lock, &[&key]).await?;
            if !row.get::<_, bool>(0) {
                return Ok(Batch::Busy);
            }
        }
    }
    let queued = client.query(&s.queued, &[&BATCH]).await?;
    if queued.is_empty() {
        return Ok(Batch::Chained {
            n: 0,
            altered: Vec::new(),
            unreadable: Vec::new(),
            unraised: None,
        });
    }
    let (mut seq, mut prev) = client
        .query_opt(&s.head, &[])
        .await?
        .map_or_else(|| (0, GENESIS_HASH.to_owned()), |r| (r.get(0), r.get(1)));
    let n = queued.len();
    let mut altered = Vec::new();
    let mut unreadable = Vec::new();
    let mut raised = Raised::default();
    let (mut ids, mut seqs, mut texts, mut prevs, mut hashes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut executions, mut kinds) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for row in &queued {
        let id: i64 = row.get(0);
        let text: &str = row.get(1);
        let digest: &str = row.get(2);
        seq += 1;
        let at = u64::try_from(seq)?;
        // The text as sinew queued it (canonical) is sealed as text; one
        // changed by hand is parsed and sealed as it was found; one that
        // is not a JSON object (written to the queue by hand) is chained
        // as found too, inside an `unreadable` entry, so that it cannot
        // stop the chain.
        // One holding a NUL character (`\u0000`, which the chain's `jsonb`
        // cannot hold: every `entry::jsonb` query would fail) is chained
        // as an `unreadable` entry, whatever its digest.
        let nul = text.contains("\\u0000");
        let intact = sha256_hex(text.as_bytes()) == digest;
        let spliced = if intact && !nul {
            seal_text(text, at, &prev)
        } else {
            if !intact {
                altered.push(id);
            }
            None
        };
        let (entry, (sealed, hash)) = match spliced {
            Some(s) => (None, s),
            None => {
                let entry = match serde_json::from_str::<Value>(text) {
                    Ok(v @ Value::Object(_)) if !sinew_core::input::has_nul(&v) => v,
                    _ => {
                        unreadable.push(id);
                        sinew_core::chain::unreadable_entry(text)
                    }
                };
                let sealed = seal_entry(entry.clone(), at, &prev).map_err(anyhow::Error::msg)?;
                (Some(entry), sealed)
            }
        };
        let (execution, kind) = match &entry {
            Some(Value::Object(m)) => sinew_core::chain::entry_columns(m),
            _ => sinew_core::chain::text_columns(&sealed),
        };
        executions.push(execution);
        kinds.push(kind);
        if text.contains("\"escalate\"") {
            match entry {
                Some(v) => raised.add(seq, &v),
                None => {
                    if let Ok(v) = serde_json::from_str::<Value>(text) {
                        raised.add(seq, &v);
                    }
                }
            }
        }
        ids.push(id);
        seqs.push(seq);
        texts.push(sealed);
        prevs.push(std::mem::replace(&mut prev, hash.clone()));
        hashes.push(hash);
    }
    let moved = client
        .execute(
            &s.moved,
            &[&ids, &seqs, &texts, &prevs, &hashes, &executions, &kinds],
        )
        .await?;
    if usize::try_from(moved).ok() != Some(n) {
        bail!("moved {moved} of {n} queued audit entries");
    }
    // In a savepoint: review items that cannot be recorded never stop the
    // chain (the entries, which name the escalations, are what count).
    let mut unraised = None;
    if !raised.seq.is_empty() {
        let r = &raised;
        client.batch_execute("SAVEPOINT sinew_raise").await?;
        let done = client
            .execute(
                RAISE,
                &[&r.seq, &r.policy, &r.execution, &r.tool, &r.subject, &r.at],
            )
            .await;
        match done {
            Ok(_) => {
                client
                    .batch_execute("RELEASE SAVEPOINT sinew_raise")
                    .await?
            }
            Err(e) => {
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT sinew_raise")
                    .await?;
                let why = e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned());
                unraised = Some(format!(
                    "{} review item(s) of audit entries {}..{} not recorded: {why}",
                    r.seq.len(),
                    r.seq.first().copied().unwrap_or_default(),
                    r.seq.last().copied().unwrap_or_default()
                ));
            }
        }
    }
    Ok(Batch::Chained {
        n,
        altered,
        unreadable,
        unraised,
    })
}

/// The chain's last entry: its `seq` and `hash` (none: the chain is empty).
pub async fn head(client: &Client) -> Result<Option<(i64, String)>> {
    let row = client.query_opt(HEAD, &[]).await?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

/// Chains every entry queued so far, waiting for the lock: what `sinew
/// audit sequence` runs, and a server at shutdown. Returns how many.
pub async fn catch_up(client: &Client) -> Result<u64> {
    let statements = Statements::prepare(client).await?;
    let mut total = 0u64;
    loop {
        match batch_with(client, &statements, Wait::Yes).await? {
            Batch::Chained { n: 0, .. } => return Ok(total),
            Batch::Chained { n, .. } => total += n as u64,
            Batch::Busy => {}
        }
    }
}

/// How many entries wait in the queue, and how long the oldest has waited
/// (none on a database of sinew 0.1, which has no queue yet).
pub async fn queued(client: &Client) -> Result<(u64, Option<Duration>)> {
    let row = match client
        .query_one(
            "SELECT count(*), extract(epoch FROM clock_timestamp() - min(queued_at))::float8 \
             FROM sinew_audit_queue",
            &[],
        )
        .await
    {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok((0, None));
        }
        r => r?,
    };
    let n: i64 = row.get(0);
    let age: Option<f64> = row.get(1);
    Ok((
        u64::try_from(n).unwrap_or(0),
        age.map(|s| Duration::from_secs_f64(s.max(0.0))),
    ))
}

/// What a running sequencer has to say.
#[derive(Debug)]
pub enum Event {
    /// Something went wrong (it goes on).
    Problem(String),
    /// It signed the head (see [`super::checkpoint`]).
    Checkpoint(Value),
}

/// A server's sequencer: chains entries as they come (`ready` is told when
/// this instance queued some) and every [`POLL`] (other instances'), until
/// `stop` turns true; then chains what is left. With a `signer`, it signs
/// the head every [`super::checkpoint::EVERY`] when it moved, and when it
/// stops. `connect` opens its own connection (outside the pool: requests
/// never wait for it); `tell` logs what it has to say.
pub async fn run<F, Fut>(
    connect: F,
    ready: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    signer: Option<super::checkpoint::Signer>,
    tell: impl Fn(Event),
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Client>>,
{
    let report = |m: String| tell(Event::Problem(m));
    let mut client: Option<(Client, Statements)> = None;
    let mut stopping = false;
    let mut signed = tokio::time::Instant::now();
    let mut moved = false;
    // A connection and its statements.
    let open = async || -> Result<(Client, Statements)> {
        let c = connect().await?;
        let s = Statements::prepare(&c).await?;
        Ok((c, s))
    };
    loop {
        stopping = stopping || *stop.borrow();
        if client.as_ref().is_none_or(|(c, _)| c.is_closed()) {
            match open().await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    report(format!("audit sequencer: cannot open its session: {e:#}"));
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => stopping = true,
                    }
                    continue;
                }
            }
        }
        let Some((c, statements)) = client.as_ref() else {
            continue;
        };
        let wait = if stopping { Wait::Yes } else { Wait::No };
        let altered = match batch_with(c, statements, wait).await {
            Ok(Batch::Chained {
                n,
                altered,
                unreadable,
                unraised,
            }) => {
                if let Some(why) = unraised {
                    report(format!("audit sequencer: {why}"));
                }
                for id in unreadable {
                    report(format!(
                        "audit sequencer: queued entry {id} is not a JSON object: chained as found, \
                         as an `unreadable` entry"
                    ));
                }
                Ok((n, altered))
            }
            Ok(Batch::Busy) => Ok((0, Vec::new())),
            Err(e) => Err(e),
        };
        let n = altered.as_ref().map_or(0, |(n, _)| *n);
        moved = moved || n > 0;
        // Stopping, the head is signed once the queue is empty.
        if let Some(signer) = &signer
            && moved
            && ((stopping && n == 0) || signed.elapsed() >= super::checkpoint::EVERY)
        {
            match super::checkpoint::write(c, signer).await {
                Ok(Some(v)) => tell(Event::Checkpoint(v)),
                Ok(None) => {}
                Err(e) => report(format!("audit checkpoint: {e:#}")),
            }
            signed = tokio::time::Instant::now();
            moved = false;
        }
        match altered {
            Ok((_, altered)) => {
                for id in altered {
                    report(format!(
                        "audit sequencer: queued entry {id} does not match its digest: it was changed before it was chained"
                    ));
                }
            }
            Err(e) => {
                report(format!("audit sequencer: {e:#}"));
                client = None;
                if stopping {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        // A full batch, or entries left while stopping: at once again.
        if n as i64 == BATCH || (stopping && n > 0) {
            continue;
        }
        if stopping {
            return;
        }
        tokio::select! {
            () = ready.notified() => {
                // Let more commits land: fewer, larger batches (each is a
                // transaction, and a flush of the log, of its own).
                tokio::time::sleep(GATHER).await;
            }
            () = tokio::time::sleep(POLL) => {}
            _ = stop.changed() => stopping = true,
        }
    }
}
