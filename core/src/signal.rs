//! The risk signals sinew knows, and their levels: the catalogue the risk
//! engine reports from and the loader checks
//! acknowledgments against. A leaf: it imports no other module.

use serde::Serialize;

/// Risk levels, from best to worst; `Invalid` is a spec with errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Safe by construction.
    Green,
    /// Deployable once acknowledged.
    Yellow,
    /// Blocked.
    Red,
    /// Not a valid spec.
    Invalid,
}

impl Level {
    /// The level as a word (`Green`).
    pub fn word(self) -> &'static str {
        match self {
            Level::Green => "Green",
            Level::Yellow => "Yellow",
            Level::Red => "Red",
            Level::Invalid => "Invalid",
        }
    }
}

/// A risk signal: its code, level and the fix it suggests.
#[derive(Debug, Clone, Copy)]
pub struct Signal {
    /// Stable code.
    pub code: &'static str,
    /// Its level.
    pub level: Level,
    /// What it means, in a few words.
    pub title: &'static str,
    /// The suggested fix, in words.
    pub fix: &'static str,
}

/// Every signal the engine knows.
pub const SIGNALS: &[Signal] = &[
    Signal {
        code: "raw-write",
        level: Level::Red,
        title: "a `sql` node (raw SQL instead of an entity action)",
        fix: "replace with create / update / transition / soft_delete on an entity",
    },
    Signal {
        code: "unbounded-update",
        level: Level::Red,
        title: "an `update` with neither `where` nor `limit`",
        fix: "add a `where` condition or a row `limit`",
    },
    Signal {
        code: "payment-without-compensation",
        level: Level::Red,
        title: "a payment call that nothing undoes if a later step fails",
        fix: "add `compensate` naming the compensating call; add an `onError` edge to a recovery flow",
    },
    Signal {
        code: "write-outside-transaction",
        level: Level::Red,
        title: "a write node not inside a `transaction` body",
        fix: "wrap the write nodes in a `transaction` node",
    },
    Signal {
        code: "hard-delete",
        level: Level::Red,
        title: "a `delete` node",
        fix: "convert to `soft_delete` (sets `deleted_at`)",
    },
    Signal {
        code: "external-in-transaction",
        level: Level::Red,
        title: "a call with side effects inside a transaction",
        fix: "move the call before or after the transaction",
    },
    Signal {
        code: "cycle",
        level: Level::Red,
        title: "the flow graph is not a DAG",
        fix: "break the cycle by removing or redirecting the edge that closes it",
    },
    Signal {
        code: "external-in-transition",
        level: Level::Yellow,
        title: "a call with side effects before a status transition commits",
        fix: "move the effect after the commit, or acknowledge",
    },
    Signal {
        code: "missing-retry",
        level: Level::Yellow,
        title: "a `call` without `retry`",
        fix: "add retry (max 3 attempts, exponential backoff)",
    },
    Signal {
        code: "missing-timeout",
        level: Level::Yellow,
        title: "a `call` without `timeoutMs`",
        fix: "add timeoutMs",
    },
    Signal {
        code: "high-row-impact",
        level: Level::Yellow,
        title: "a write that can touch more than `maxRowsPerWrite` rows",
        fix: "lower the limit, or acknowledge",
    },
    Signal {
        code: "lock-order",
        level: Level::Yellow,
        title: "rows of one entity locked one by one, in an order the call chooses",
        fix: "lock them first in one read ordered by id",
    },
    Signal {
        code: "unbounded-read",
        level: Level::Yellow,
        title: "a `read` without `limit`",
        fix: "add limit (and `after` for paging)",
    },
    Signal {
        code: "missing-idempotency-key",
        level: Level::Yellow,
        title: "a tool that writes or has effects, with no `idempotencyKey`",
        fix: "add \"idempotencyKey\": \"request.idempotencyKey\"",
    },
    Signal {
        code: "public-write",
        level: Level::Yellow,
        title: "a public tool (no token required) that writes",
        fix: "remove `public`, so only signed-in callers may write",
    },
];

/// Looks a signal up by code.
pub fn signal(code: &str) -> Option<&'static Signal> {
    SIGNALS.iter().find(|s| s.code == code)
}
