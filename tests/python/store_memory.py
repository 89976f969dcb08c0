"""An in-memory store for the core's `storage` import, in pure Python.

The semantics follow docs/embedding.md §3 and, where the page leaves a
choice, the reference in-memory store (`core/src/ports/memory.rs`), so that
the scenario corpus comes out byte for byte:

- committed rows keep their versions (a commit sequence number each), so
  repeatable-read and serializable transactions read a snapshot taken at
  their first operation; read-committed ones read the latest commit;
- a transaction (or savepoint) keeps its writes in an overlay; a savepoint
  is released into its parent by `commit`; reads see the overlays of the
  whole chain (read your own writes);
- row locks (`query.lock` and every write) fail another transaction's write
  or lock at once with `conflict`; first committer wins at commit (a row
  written since the write's base version is a `conflict`); serializable
  writers are checked at commit against what their reads' filters match;
- unique keys are checked at each write against the latest committed rows
  and the chain's writes (`unique`), against other open transactions'
  writes (`conflict`), and again at commit;
- the audit chain, idempotency keys, rate windows and the outbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cmp_to_key
from typing import Any, Optional

from sinew_embed import (
    ABANDONED_AFTER_MS, CRON_PREFIX, GENESIS_HASH, IDEMPOTENCY_TTL_MS, I64_MAX, I64_MIN,
    Measure, Query, Schema, SortKey, Storage, StorageError, Stored, canonical, chained_entry,
    condition_holds, conflict, invalid, json_equal, not_found, parse_json, seal, sort_cmp,
    unique, values_equal,
)


@dataclass
class Tx:
    parent: Optional[int]
    root: int
    isolation: str
    child: Optional[int] = None
    snapshot: Optional[int] = None
    writes: dict = field(default_factory=dict)    # entity → id → row
    bases: dict = field(default_factory=dict)     # (entity, id) → commit seq the write was based on
    audit: list = field(default_factory=list)     # entry texts
    keys: list = field(default_factory=list)      # (scope, key, status, body text)
    messages: list = field(default_factory=list)  # outbox message texts
    reads: list = field(default_factory=list)     # (entity, filters) of a serializable root

    @property
    def repeatable(self) -> bool:
        return self.isolation != "read-committed"


@dataclass
class KeyRecord:
    fingerprint: str
    claimed_ms: int
    response: Optional[tuple[int, str]] = None


def live(row: dict) -> bool:
    return row.get("deleted_at") is None


class MemoryStore(Storage):
    def __init__(self) -> None:
        self.schema = Schema()
        self.tables: dict[str, dict[str, list[tuple[int, dict]]]] = {}  # entity → id → versions
        self.seq = 0
        self.txs: dict[int, Tx] = {}
        self.next_tx = 0
        self.locks: dict[tuple[str, str], int] = {}
        self.audit: list[tuple[str, str]] = []        # (canonical text, hash)
        self.keys: dict[tuple[str, str], KeyRecord] = {}
        self.outbox: list[str] = []
        self.rate: dict[tuple[str, int], int] = {}
        self.swept_ms = 0
        self.rate_window = 0

    # -- set-up ---------------------------------------------------------------

    def declare(self, schema: Schema) -> None:
        self.schema = schema

    def seed(self, entity: str, row: dict) -> None:
        id_ = row.get("id")
        if not isinstance(id_, str):
            raise invalid(f"a seeded `{entity}` row needs a string `id`")
        if self.latest(entity, id_) is not None:
            raise conflict(f"`{entity}` row `{id_}` already exists")
        if live(row):
            committed = self.merged([], entity, self.seq)
            for key in self.schema.unique.get(entity, []):
                if not self.null_key(row, key) and any(
                        live(o) and self.same_key(entity, o, row, key) for o in committed.values()):
                    raise unique(entity, key)
        self.seq += 1
        self.tables.setdefault(entity, {}).setdefault(id_, []).append((self.seq, row))

    # -- visibility -----------------------------------------------------------

    def tx(self, id_: int) -> Tx:
        t = self.txs.get(id_)
        if t is None:
            raise invalid(f"transaction {id_} is unknown or finished")
        return t

    def chain(self, id_: int) -> list[int]:
        """[id, parent, …, root]."""
        out: list[int] = []
        cur: Optional[int] = id_
        while cur is not None:
            out.append(cur)
            cur = self.tx(cur).parent
        return out

    def writable(self, id_: int) -> list[int]:
        t = self.tx(id_)
        if t.child is not None:
            raise invalid(f"transaction {id_} has an open savepoint {t.child}")
        return self.chain(id_)

    def read_seq(self, root: int) -> int:
        t = self.tx(root)
        if t.repeatable:
            if t.snapshot is None:
                t.snapshot = self.seq
            return t.snapshot
        return self.seq

    def latest(self, entity: str, id_: str) -> Optional[tuple[int, dict]]:
        versions = self.tables.get(entity, {}).get(id_)
        return versions[-1] if versions else None

    def overlay_row(self, chain: list[int], entity: str, id_: str) -> Optional[dict]:
        for t in chain:
            row = self.txs[t].writes.get(entity, {}).get(id_)
            if row is not None:
                return row
        return None

    def visible(self, chain: list[int], entity: str, id_: str, seq: int) -> Optional[dict]:
        row = self.overlay_row(chain, entity, id_)
        if row is not None:
            return row
        for s, r in reversed(self.tables.get(entity, {}).get(id_, ())):
            if s <= seq:
                return r
        return None

    def merged(self, chain: list[int], entity: str, seq: int) -> dict[str, dict]:
        """Every row (soft-deleted too) the chain sees at `seq`, in id order."""
        out: dict[str, dict] = {}
        for id_, versions in self.tables.get(entity, {}).items():
            for s, r in reversed(versions):
                if s <= seq:
                    out[id_] = r
                    break
        for t in reversed(chain):
            out.update(self.txs[t].writes.get(entity, {}))
        return dict(sorted(out.items()))

    # -- queries --------------------------------------------------------------

    def ts(self, entity: str, column: str) -> bool:
        return self.schema.is_timestamp(entity, column)

    def holds(self, look: tuple, entity: str, row: dict, p: tuple) -> bool:
        """Does predicate `p` hold of `row` (of `entity`), hops looking up rows
        as `look` = (chain, seq) sees them?"""
        tag = p[0]
        if tag == "is":
            c = p[1]
            return condition_holds(row.get(c.field), c, self.ts(entity, c.field),
                                   self.schema.is_double(entity, c.field))
        if tag == "all":
            return all(self.holds(look, entity, row, q) for q in p[1])
        if tag == "any":
            return any(self.holds(look, entity, row, q) for q in p[1])
        if tag == "not":
            return not self.holds(look, entity, row, p[1])
        _, fld, target, inner = p
        ref = row.get(fld)
        if not isinstance(ref, str):
            return False
        other = self.visible(look[0], target, ref, look[1])
        return other is not None and self.holds(look, target, other, inner)

    def matches_all(self, look: tuple, entity: str, row: dict, filters: list) -> bool:
        return all(self.holds(look, entity, row, p) for p in filters)

    def order_key(self, entity: str, order: list) -> Any:
        def cmp(a: dict, b: dict) -> int:
            for k in order:
                o = sort_cmp(a.get(k.field), b.get(k.field), self.ts(entity, k.field))
                if o:
                    return -o if k.desc else o
            return 0
        return cmp_to_key(cmp)

    def after_cursor(self, entity: str, row: dict, after: list, order: list) -> bool:
        for k, v in zip(order, after):
            o = sort_cmp(row.get(k.field), v, self.ts(entity, k.field))
            if o:
                return (-o if k.desc else o) > 0
        return False

    def read_counted(self, tx: Optional[int], entity: str, q: Query) -> tuple[list[dict], int]:
        if tx is None:
            chain, root, seq = [], None, self.seq
        else:
            chain = self.chain(tx)
            root = self.tx(tx).root
            seq = self.read_seq(root)
        look = (chain, seq)
        rows = [r for r in self.merged(chain, entity, seq).values()
                if live(r) and self.matches_all(look, entity, r, q.filters)]
        rows.sort(key=self.order_key(entity, q.order))
        total = len(rows)
        if q.after is not None:
            rows = [r for r in rows if self.after_cursor(entity, r, q.after, q.order)]
        if q.limit is not None:
            rows = rows[:q.limit]
        if q.lock and root is not None:
            repeatable = self.tx(root).repeatable
            for r in rows:
                self.check_lock(root, entity, r["id"])
                latest = self.latest(entity, r["id"])
                if repeatable and self.overlay_row(chain, entity, r["id"]) is None \
                        and latest is not None and latest[0] > seq:
                    raise conflict(f"could not serialize access: `{entity}` row `{r['id']}` "
                                   "was changed by a concurrent transaction")
            for r in rows:
                self.take_lock(chain, entity, r["id"])
        rows = [dict(r) for r in rows]
        self.embed(look, rows, q.embeds)
        if root is not None and self.tx(root).isolation == "serializable":
            self.tx(root).reads.append((entity, q.filters))
            self.tx(root).reads.extend(read_set(q.filters, q.embeds))
        return rows, total

    def embed(self, look: tuple, rows: list[dict], embeds: list) -> None:
        """Adds each embed's member to every row (docs: "Embeds")."""
        chain, seq = look
        for e in embeds:
            def fits(r: dict) -> bool:
                return live(r) and self.matches_all(look, e.entity, r, e.filters)
            if e.link == "one":
                found = []
                for row in rows:
                    ref = row.get(e.by)
                    r = self.visible(chain, e.entity, ref, seq) if isinstance(ref, str) else None
                    found.append(dict(r) if r is not None and fits(r) else None)
                self.embed(look, [r for r in found if r is not None], e.embeds)
                for row, r in zip(rows, found):
                    row[e.name] = r
            else:
                groups: dict[str, list[dict]] = {}
                for r in self.merged(chain, e.entity, seq).values():
                    parent = r.get(e.by)
                    if isinstance(parent, str) and fits(r):
                        groups.setdefault(parent, []).append(r)
                lists = []
                for row in rows:
                    members = sorted(groups.get(row.get("id") if isinstance(row.get("id"), str) else "", []),
                                     key=self.order_key(e.entity, e.order))
                    if e.limit is not None:
                        members = members[:e.limit]
                    lists.append([dict(m) for m in members])
                self.embed(look, [m for lst in lists for m in lst], e.embeds)
                for row, lst in zip(rows, lists):
                    row[e.name] = lst

    def aggregate(self, tx: Optional[int], entity: str, filters: list, group_by: list[str],
                  measures: list[Measure]) -> list[dict]:
        rows, _ = self.read_counted(tx, entity, Query(filters, [SortKey("id", False)]))
        groups: dict[str, tuple[list, list]] = {}
        if not group_by:
            groups[canonical([])] = ([], [])
        for r in rows:
            key = [r.get(f) for f in group_by]
            groups.setdefault(canonical(key), (key, []))[1].append(r)
        out = []
        for _, (key, members) in sorted(groups.items()):
            g = dict(zip(group_by, key))
            for m in measures:
                g[m.name] = self.tally(entity, m, members)
            out.append(g)
        return out

    def tally(self, entity: str, m: Measure, rows: list[dict]) -> Any:
        f = m.field or ""
        values = [r.get(f) for r in rows if r.get(f) is not None]
        if m.tally == "rows":
            return len(rows)
        if m.tally == "count":
            return len(values)
        if m.tally == "sum":
            total = 0
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int) or not I64_MIN <= v <= I64_MAX:
                    raise invalid(f"`sum` of `{f}` needs integers")
                total += v
            # Past 64 bits: its digits (the core answers 500 for a `sum`,
            # divides it for an `avg`).
            return total if I64_MIN <= total <= I64_MAX else str(total)
        best = None
        ts = self.ts(entity, f)
        for v in values:
            if best is None:
                best = v
                continue
            o = sort_cmp(v, best, ts)
            if (o < 0) if m.tally == "min" else (o > 0):
                best = v
        return best

    # -- locks and unique keys ------------------------------------------------

    def check_lock(self, root: Optional[int], entity: str, id_: str) -> None:
        owner = self.locks.get((entity, id_))
        if owner is not None and owner in self.txs and self.txs[owner].root != root:
            raise conflict(f"`{entity}` row `{id_}` is locked by another transaction")

    def take_lock(self, chain: list[int], entity: str, id_: str) -> None:
        if chain and self.locks.get((entity, id_)) not in chain:
            self.locks[(entity, id_)] = chain[0]

    @staticmethod
    def null_key(row: dict, key: str) -> bool:
        return any(row.get(f) is None for f in key.split(","))

    def same_key(self, entity: str, a: dict, b: dict, key: str) -> bool:
        return all(a.get(f) is not None and values_equal(a.get(f), b.get(f), self.ts(entity, f))
                   for f in key.split(","))

    def check_unique(self, chain: list[int], root: int, entity: str, id_: str, row: dict,
                     keys: list[str]) -> None:
        if not live(row) or not keys:
            return
        merged = self.merged(chain, entity, self.seq)
        for key in keys:
            if self.null_key(row, key):
                continue

            def taken(other: str, r: dict) -> bool:
                return other != id_ and live(r) and self.same_key(entity, r, row, key)
            if any(taken(o, r) for o, r in merged.items()):
                raise unique(entity, key)
            for t in self.txs.values():
                if t.root != root and any(taken(o, r) for o, r in t.writes.get(entity, {}).items()):
                    raise conflict(f"another transaction is writing a `{entity}` row with the same `{key}`")

    # -- writes ---------------------------------------------------------------

    def write(self, chain: list[int], entity: str, id_: str, row: dict, base: Optional[int]) -> None:
        if not any((entity, id_) in self.txs[t].bases for t in chain):
            self.txs[chain[0]].bases[(entity, id_)] = base
        self.txs[chain[0]].writes.setdefault(entity, {})[id_] = row
        self.take_lock(chain, entity, id_)

    def insert(self, tx: int, entity: str, row: dict) -> dict:
        chain = self.writable(tx)
        root = self.tx(tx).root
        self.read_seq(root)
        id_ = row.get("id")
        if not isinstance(id_, str):
            raise invalid(f"a `{entity}` row needs a string `id`")
        self.check_lock(root, entity, id_)
        if self.latest(entity, id_) is not None or self.overlay_row(chain, entity, id_) is not None:
            raise conflict(f"`{entity}` row `{id_}` already exists")
        self.check_unique(chain, root, entity, id_, row, self.schema.unique.get(entity, []))
        self.write(chain, entity, id_, dict(row), None)
        return row

    def update(self, tx: int, entity: str, id_: str, version: int, changes: dict) -> dict:
        chain = self.writable(tx)
        root = self.tx(tx).root
        seq = self.read_seq(root)
        in_overlay = self.overlay_row(chain, entity, id_) is not None
        current = self.visible(chain, entity, id_, seq)
        if current is None or not live(current):
            raise not_found(entity, id_)
        self.check_lock(root, entity, id_)
        latest = self.latest(entity, id_)
        latest_seq = latest[0] if latest else None
        if self.tx(root).repeatable and not in_overlay and latest_seq is not None and latest_seq > seq:
            raise conflict(f"could not serialize access: `{entity}` row `{id_}` was changed by a "
                           "concurrent transaction")
        have = current.get("version")
        if isinstance(have, bool) or not isinstance(have, int):
            raise invalid(f"`{entity}` row `{id_}` has no integer `version`")
        if have != version:
            raise conflict(f"`{entity}` row `{id_}` is at version {have}, not {version}")
        row = dict(current)
        changed = []
        for k, v in changes.items():
            if k == "id":
                if v != id_:
                    raise invalid(f"the `id` of `{entity}` row `{id_}` cannot change")
            elif k != "version":
                if k not in row or not json_equal(row[k], v):
                    changed.append(k)
                row[k] = v
        row["version"] = have + 1
        # At the write, a unique key is checked when any of its fields changed
        # (an index's key is its fields joined by `,`), as Postgres does.
        keys = [k for k in self.schema.unique.get(entity, [])
                if any(part in changed for part in k.split(","))]
        self.check_unique(chain, root, entity, id_, row, keys)
        self.write(chain, entity, id_, row, latest_seq)
        return row

    def update_where(self, tx: int, entity: str, q: Query, changes: dict) -> list[dict]:
        picked = Query(q.filters, q.order, q.limit, None, True, [])

        def work(sp: int) -> list[dict]:
            return [self.update(sp, entity, r["id"], r["version"], changes)
                    for r in self.read(sp, entity, picked)]
        return self.in_savepoint(tx, work)

    # -- transactions ---------------------------------------------------------

    def begin(self, level: str) -> int:
        self.next_tx += 1
        self.txs[self.next_tx] = Tx(None, self.next_tx, level)
        return self.next_tx

    def savepoint(self, tx: int, level: str) -> int:
        t = self.tx(tx)
        if t.child is not None:
            raise invalid(f"transaction {tx} already has an open savepoint {t.child}")
        self.next_tx += 1
        # A savepoint has its transaction's isolation (the level is ignored).
        self.txs[self.next_tx] = Tx(tx, t.root, self.tx(t.root).isolation)
        t.child = self.next_tx
        return self.next_tx

    def discard(self, id_: int) -> None:
        """Ends `id_` and its open savepoints, releasing their locks."""
        ended = []
        cur: Optional[int] = id_
        while cur is not None and cur not in ended:
            t = self.txs.pop(cur, None)
            ended.append(cur)
            cur = t.child if t else None
        self.locks = {k: o for k, o in self.locks.items() if o not in ended}

    def commit(self, tx: int) -> None:
        t = self.tx(tx)
        if t.child is not None:
            raise invalid(f"transaction {tx} has an open savepoint {t.child}")
        if t.parent is not None:
            self.release(tx, t.parent)
        else:
            self.commit_root(tx)

    def release(self, id_: int, parent: int) -> None:
        p = self.tx(parent)
        child = self.txs.pop(id_)
        p.child = None
        for entity, rows in child.writes.items():
            p.writes.setdefault(entity, {}).update(rows)
        for k, base in child.bases.items():
            p.bases.setdefault(k, base)
        p.audit += child.audit
        p.keys += child.keys
        p.messages += child.messages
        for k, owner in self.locks.items():
            if owner == id_:
                self.locks[k] = parent

    def validate(self, t: Tx) -> None:
        for entity, rows in t.writes.items():
            for id_ in rows:
                latest = self.latest(entity, id_)
                if (latest[0] if latest else None) != t.bases.get((entity, id_)):
                    raise conflict(f"`{entity}` row `{id_}` was changed by a concurrent transaction")
        if t.isolation == "serializable" and t.writes and t.snapshot is not None \
                and self.seq != t.snapshot:
            self.validate_reads(t, t.snapshot)
        for entity, rows in t.writes.items():
            keys = self.schema.unique.get(entity)
            if not keys:
                continue
            merged = self.merged([], entity, self.seq)
            merged.update(rows)
            for id_, row in rows.items():
                if not live(row):
                    continue
                before = self.latest(entity, id_)
                before_row = before[1] if before and live(before[1]) else None
                for key in keys:
                    if self.null_key(row, key) or (
                            before_row is not None and self.same_key(entity, before_row, row, key)):
                        continue
                    if any(o != id_ and live(r) and self.same_key(entity, r, row, key)
                           for o, r in merged.items()):
                        raise unique(entity, key)

    def validate_reads(self, t: Tx, snapshot: int) -> None:
        for entity, filters in t.reads:
            own = t.writes.get(entity, {})
            for id_, versions in self.tables.get(entity, {}).items():
                s, latest_row = versions[-1]
                if s <= snapshot or id_ in own:
                    continue
                then = next((r for vs, r in reversed(versions) if vs <= snapshot), None)
                before = then is not None and live(then) and \
                    self.matches_all(([], snapshot), entity, then, filters)
                after = live(latest_row) and self.matches_all(([], self.seq), entity, latest_row, filters)
                if before or after:
                    raise conflict(f"could not serialize access: `{entity}` rows read by this "
                                   "transaction were changed by a concurrent transaction")

    def commit_root(self, id_: int) -> None:
        t = self.txs[id_]
        try:
            self.validate(t)
            sealed = self.chained(t.audit)
        except StorageError:
            self.discard(id_)
            raise
        if t.writes:
            self.seq += 1
            for entity, rows in t.writes.items():
                table = self.tables.setdefault(entity, {})
                for rid, row in rows.items():
                    table.setdefault(rid, []).append((self.seq, row))
        self.audit += sealed
        self.outbox += t.messages
        for scope, key, status, body in t.keys:
            r = self.keys.get((scope, key))
            if r is not None and r.response is None:
                r.response = (status, body)
        self.discard(id_)

    def rollback(self, tx: int) -> None:
        parent = self.tx(tx).parent
        self.discard(tx)
        if parent is not None and parent in self.txs:
            self.txs[parent].child = None

    def drop(self, tx: int) -> None:
        if tx in self.txs:
            self.rollback(tx)

    def open_transactions(self) -> int:
        return len(self.txs)

    # -- audit, outbox, keys, rate --------------------------------------------

    def chained(self, entries: list[str]) -> list[tuple[str, str]]:
        prev = self.audit[-1][1] if self.audit else GENESIS_HASH
        out = []
        for n, entry in enumerate(entries, len(self.audit) + 1):
            text, prev = seal(entry, n, prev)
            out.append((text, prev))
        return out

    def append_audit(self, tx: Optional[int], entry: str) -> None:
        if not isinstance(parse_json(entry), dict):
            raise invalid("an audit entry must be a JSON object")
        if tx is None:
            self.audit += self.chained([entry])
        else:
            self.writable(tx)
            self.tx(tx).audit.append(entry)

    def enqueue(self, tx: int, message: str) -> None:
        if not isinstance(parse_json(message), dict):
            raise invalid("an outbox message must be a JSON object")
        self.writable(tx)
        self.tx(tx).messages.append(message)

    def claim_key(self, scope: str, key: str, fingerprint: str, now_ms: int) -> str | Stored:
        if now_ms - self.swept_ms >= 60_000 or now_ms < self.swept_ms:
            # Sweep: forget records a day old, but keep each cron scope's
            # latest claimed time (catch-up must know whether it ran).
            latest: dict[str, str] = {}
            for s, k in self.keys:
                if s.startswith(CRON_PREFIX) and (s not in latest or k > latest[s]):
                    latest[s] = k
            self.keys = {k: r for k, r in self.keys.items()
                         if now_ms - r.claimed_ms < IDEMPOTENCY_TTL_MS or latest.get(k[0]) == k[1]}
            self.swept_ms = now_ms
        cron = scope.startswith(CRON_PREFIX)
        r = self.keys.get((scope, key))
        if r is not None:
            age = now_ms - r.claimed_ms
            if not ((age < IDEMPOTENCY_TTL_MS or cron) and (r.response is not None or age < ABANDONED_AFTER_MS)):
                r = None
        if r is None:
            self.keys[(scope, key)] = KeyRecord(fingerprint, now_ms)
            return "new"
        if r.fingerprint != fingerprint:
            return "mismatch"
        if r.response is None:
            return "in-flight"
        return Stored(*r.response)

    def complete_key(self, tx: Optional[int], scope: str, key: str, status: int, body: str) -> None:
        r = self.keys.get((scope, key))
        if r is None:
            raise invalid(f"idempotency key `{key}` of `{scope}` was not claimed")
        if r.response is not None:
            raise invalid(f"idempotency key `{key}` of `{scope}` is already completed")
        if tx is None:
            r.response = (status, body)
        else:
            self.writable(tx)
            self.tx(tx).keys.append((scope, key, status, body))

    def release_key(self, scope: str, key: str) -> None:
        r = self.keys.get((scope, key))
        if r is not None and r.response is None:
            del self.keys[(scope, key)]

    def rate_hit(self, scope: str, window_ms: int) -> int:
        if window_ms > self.rate_window:
            self.rate = {k: n for k, n in self.rate.items() if k[1] >= window_ms}
            self.rate_window = window_ms
        n = self.rate[(scope, window_ms)] = self.rate.get((scope, window_ms), 0) + 1
        return n

    # -- state ----------------------------------------------------------------

    def state(self) -> dict:
        out: dict[str, Any] = {
            "rows": {e: [versions[-1][1] for _, versions in sorted(t.items())]
                     for e, t in sorted(self.tables.items())},
            "audit": [chained_entry(text, h) for text, h in self.audit],
        }
        if self.outbox:
            out["outbox"] = [parse_json(m) for m in self.outbox]
        out["idempotency"] = [
            {"scope": s, "key": k, "fingerprint": r.fingerprint, "claimed_ms": r.claimed_ms,
             "response": None if r.response is None
             else {"status": r.response[0], "body": parse_json(r.response[1])}}
            for (s, k), r in sorted(self.keys.items())]
        out["rate"] = [{"scope": s, "window_ms": w, "count": n} for (s, w), n in sorted(self.rate.items())]
        out["unique"], out["timestamps"] = self.schema.to_json()
        return out


def read_set(filters: list, embeds: list) -> list:
    """What the hops and embeds of a query read (serializable validation)."""
    out: list = []

    def hops(p: tuple) -> None:
        if p[0] in ("all", "any"):
            for q in p[1]:
                hops(q)
        elif p[0] == "not":
            hops(p[1])
        elif p[0] == "via":
            out.append((p[2], []))
            hops(p[3])
    for p in filters:
        hops(p)
    for e in embeds:
        out.append((e.entity, e.filters))
        out.extend(read_set(e.filters, e.embeds))
    return out
