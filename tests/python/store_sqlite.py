"""The core's `storage` import on SQLite (Python's `sqlite3`).

One database file (WAL mode), one connection per open root transaction (a
pool) and one for what happens outside transactions. The layout:

- one table per entity, `"e_<Entity>" (id TEXT PRIMARY KEY, version
  INTEGER, deleted_at TEXT, data TEXT)`: `data` is the row's JSON text with
  its members in the order the core wrote them; `id`, `version` and
  `deleted_at` are real columns kept equal to the row's members;
- one partial unique index per unique key, on the `json_extract` of its
  fields, `WHERE deleted_at IS NULL`: the database refuses duplicates, and a
  row with a null in the key takes no value (SQL's NULLs are distinct);
- `sinew_audit (seq, entry, hash)`: the chain (`entry` is the canonical
  text that was hashed, with `seq` and `prev`); entries appended in a
  transaction wait in `sinew_audit_queue` and are sealed by its commit;
- `sinew_outbox`, `sinew_keys` (idempotency), `sinew_rate`, `sinew_meta`.

Transactions are SQLite transactions: `begin` is `BEGIN` on a connection of
its own, a savepoint is `SAVEPOINT`, `commit` is `COMMIT` / `RELEASE`,
`rollback` is `ROLLBACK` / `ROLLBACK TO` + `RELEASE`. SQLite is
serializable at every level (a stronger isolation than the one asked for),
has one writer at a time and no row locks: a second writer, or a writer
whose snapshot is stale, gets SQLITE_BUSY at once (busy timeout 0), which
is answered as `conflict`; a locking read (`query.lock`) takes the
database's write lock. Version checks are in the `UPDATE`'s `WHERE`.

Filters, order, the keyset cursor, limits, embeds (a window function per
`many` embed) and aggregates are translated to SQL on `json_extract`,
`json_type` and `->`. Two rules are evaluated in Python, as SQL functions
the store registers on each connection: `sinew_instant(text)` (an RFC 3339
timestamp as microseconds, for timestamp columns) and
`sinew_json_equal(a, b)` (equality of arrays and objects as JSON values).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from typing import Any, Optional

from sinew_embed import (
    ABANDONED_AFTER_MS, CRON_PREFIX, GENESIS_HASH, I64_MAX, I64_MIN, IDEMPOTENCY_TTL_MS, TYPE_RANK,
    Measure,
    Query, Schema, Storage, StorageError, Stored, ascii_lower, chained_entry, conflict,
    invalid, json_equal, json_text, kind, not_found, parse_json, parse_timestamp, seal, unique,
)

NUMBER = "('integer','real')"
RANK = ("CASE {t} WHEN 'true' THEN 0 WHEN 'false' THEN 0 WHEN 'integer' THEN 1 WHEN 'real' THEN 1 "
        "WHEN 'text' THEN 2 WHEN 'array' THEN 3 WHEN 'object' THEN 4 ELSE 5 END")


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table(entity: str) -> str:
    return ident("e_" + entity)


def path(column: str) -> str:
    """A JSON path naming one member (quoted: any name)."""
    return "'$.\"" + column.replace("'", "''").replace('"', '\\"') + "\"'"


def _instant(text: Any) -> Optional[int]:
    return parse_timestamp(text) if isinstance(text, str) else None


def _json_equal(a: Optional[str], b: Optional[str]) -> int:
    return int(a is not None and b is not None and json_equal(parse_json(a), parse_json(b)))


# ---------------------------------------------------------------------------
# Queries to SQL. Every builder returns (sql, params); every predicate is
# 0 or 1, never NULL (a condition is true or false, never unknown).

class Compiler:
    def __init__(self, store: "SqliteStore") -> None:
        self.store = store
        self.aliases = 0

    def alias(self) -> str:
        self.aliases += 1
        return f"a{self.aliases}"

    @staticmethod
    def column(a: str, f: str) -> tuple[str, str]:
        """The value (`json_extract`) and the JSON type (`json_type`) of a
        column of the row `a` (NULL type: missing)."""
        if f == "id":
            return f"{a}.id", f"(CASE WHEN {a}.id IS NULL THEN NULL ELSE 'text' END)"
        return f"json_extract({a}.data, {path(f)})", f"json_type({a}.data, {path(f)})"

    def rank(self, a: str, f: str) -> str:
        """The JSON type's place in the order of mixed types (5: null)."""
        return "2" if f == "id" else RANK.format(t=self.column(a, f)[1])

    def sort_value(self, entity: str, a: str, f: str) -> str:
        """What orders a column's values within their JSON type."""
        v, t = self.column(a, f)
        if self.store.schema.is_timestamp(entity, f):
            return f"(CASE WHEN {t} = 'text' THEN sinew_instant({v}) ELSE {v} END)"
        return v

    def order_value(self, entity: str, a: str, f: str) -> str:
        """What orders a column's values within their JSON type in ORDER BY
        and cursors: in a timestamp column, the instant, else (text that is
        no timestamp) the text itself, which SQLite sorts after every
        integer: valid instants first, the rest by their bytes."""
        v, t = self.column(a, f)
        if self.store.schema.is_timestamp(entity, f):
            return f"(CASE WHEN {t} = 'text' THEN COALESCE(sinew_instant({v}), {v}) ELSE {v} END)"
        return v

    def comparable(self, entity: str, f: str, x: Any) -> Optional[tuple[str, Any]]:
        """The type test and the parameter a column is compared with `x`
        with (None: `x` compares with nothing)."""
        k = kind(x)
        if k == "number":
            # A `number` column holds doubles: an integer is compared as
            # the double nearest it (SQLite compares an integer with a
            # real exactly otherwise).
            if self.store.schema.is_double(entity, f):
                return f"IN {NUMBER}", float(x)
            return f"IN {NUMBER}", x
        if k == "boolean":
            return "IN ('true','false')", int(x)
        if k == "string":
            if self.store.schema.is_timestamp(entity, f):
                i = parse_timestamp(x)
                return None if i is None else ("= 'text'", i)
            return "= 'text'", x
        return None

    def equal(self, entity: str, a: str, f: str, x: Any) -> tuple[str, list]:
        v, t = self.column(a, f)
        if x is None:
            return f"({v} IS NULL)", []
        if isinstance(x, (list, dict)):
            return f"COALESCE(sinew_json_equal({a}.data -> {path(f)}, ?), 0)", [json_text(x)]
        c = self.comparable(entity, f, x)
        if c is None:
            return "0", []
        test, p = c
        value = self.sort_value(entity, a, f)
        return f"COALESCE(({t} {test} AND {value} = ?), 0)", [p]

    def condition(self, entity: str, a: str, c: Any) -> tuple[str, list]:
        op, x = c.op, c.value
        v, t = self.column(a, c.field)
        if op == "eq":
            return self.equal(entity, a, c.field, x)
        if op == "ne":
            s, p = self.equal(entity, a, c.field, x)
            return f"(NOT {s})", p
        if op in ("lt", "lte", "gt", "gte"):
            cmp = self.comparable(entity, c.field, x)
            if cmp is None:
                return "0", []
            test, p = cmp
            sym = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}[op]
            value = self.sort_value(entity, a, c.field)
            return f"COALESCE(({t} {test} AND {value} {sym} ?), 0)", [p]
        if op in ("in", "not-in"):
            parts = [self.equal(entity, a, c.field, y) for y in x if y is not None]
            s = "(" + " OR ".join(s for s, _ in parts) + ")" if parts else "0"
            params = [p for _, ps in parts for p in ps]
            return (s, params) if op == "in" else (f"(NOT {s})", params)
        if op == "is-null":
            return f"({v} IS {'' if x else 'NOT '}NULL)", []
        if not isinstance(x, str):
            return "0", []
        if op == "starts-with":
            return f"COALESCE(({t} = 'text' AND substr({v}, 1, length(?)) = ?), 0)", [x, x]
        if op == "contains":
            return f"COALESCE(({t} = 'text' AND instr({v}, ?) > 0), 0)", [x]
        if op == "icontains":
            # SQLite's own lower() folds ASCII letters only, as the rule wants.
            return f"COALESCE(({t} = 'text' AND instr(lower({v}), ?) > 0), 0)", [ascii_lower(x)]
        raise invalid(f"unknown operator `{op}`")

    def predicate(self, entity: str, a: str, p: tuple) -> tuple[str, list]:
        tag = p[0]
        if tag == "is":
            return self.condition(entity, a, p[1])
        if tag in ("all", "any"):
            if not p[1]:
                return ("1" if tag == "all" else "0"), []
            parts = [self.predicate(entity, a, q) for q in p[1]]
            glue = " AND " if tag == "all" else " OR "
            return "(" + glue.join(s for s, _ in parts) + ")", [x for _, ps in parts for x in ps]
        if tag == "not":
            s, ps = self.predicate(entity, a, p[1])
            return f"(NOT {s})", ps
        _, fld, target, inner = p
        if not self.store.has_table(target):
            return "0", []
        v, t = self.column(a, fld)
        h = self.alias()
        s, ps = self.predicate(target, h, inner)
        return (f"EXISTS (SELECT 1 FROM {table(target)} {h} WHERE {t} = 'text' AND {h}.id = {v} "
                f"AND {s})", ps)

    def where(self, entity: str, a: str, filters: list) -> tuple[str, list]:
        """Live rows meeting every filter."""
        parts = [self.predicate(entity, a, p) for p in filters]
        return (" AND ".join([f"{a}.deleted_at IS NULL"] + [s for s, _ in parts]),
                [x for _, ps in parts for x in ps])

    def order_by(self, entity: str, a: str, order: list) -> str:
        """Nulls last ascending, first descending; types ranked; id last."""
        out = []
        for k in order:
            d = " DESC" if k.desc else ""
            if k.field != "id":    # (a constant would name a result column)
                out.append(self.rank(a, k.field) + d)
            out.append(self.order_value(entity, a, k.field) + d)
        out.append(f"{a}.id")
        return ", ".join(out)

    def after(self, entity: str, a: str, order: list, after: list) -> tuple[str, list]:
        """Rows strictly after the cursor in the query's order."""
        ors, params = [], []
        eqs: list[str] = []
        eq_params: list = []
        for k, c in zip(order, after):
            rank = self.rank(a, k.field)
            value = self.order_value(entity, a, k.field)
            r = TYPE_RANK[kind(c)]
            if isinstance(c, (list, dict)):
                raise invalid("a cursor value that is an array or an object is not supported here")
            cv = None if c is None else (self.comparable(entity, k.field, c) or (None, None))[1]
            if cv is None and isinstance(c, str):
                cv = c    # text that is no timestamp: ordered as its text
            if c is None:
                gt, gp = (f"({rank} < 5)", []) if k.desc else ("0", [])
                eq, ep = f"({rank} = 5)", []
            else:
                sym = "<" if k.desc else ">"
                gt = f"COALESCE(({rank} {sym} ? OR ({rank} = ? AND {value} {sym} ?)), 0)"
                gp = [r, r, cv]
                eq, ep = f"COALESCE(({rank} = ? AND {value} = ?), 0)", [r, cv]
            ors.append("(" + " AND ".join(eqs + [gt]) + ")")
            params += eq_params + gp
            eqs.append(eq)
            eq_params = eq_params + ep
        return ("(" + " OR ".join(ors) + ")" if ors else "0"), params


# ---------------------------------------------------------------------------

@dataclass
class Tx:
    conn: sqlite3.Connection
    parent: Optional[int]
    root: int
    name: str                  # the savepoint's name ("" for a root)
    child: Optional[int] = None


class SqliteStore(Storage):
    def __init__(self, path: Optional[str] = None) -> None:
        self.tmp = None if path else tempfile.mkdtemp(prefix="sinew-sqlite-")
        self.path = path or os.path.join(self.tmp, "sinew.db")
        self.schema = Schema()
        self.tables: set[str] = set()
        self.unique_names: dict[str, tuple[str, str]] = {}   # index → (entity, key)
        self.pool: list[sqlite3.Connection] = []
        self.txs: dict[int, Tx] = {}
        self.next_tx = 0
        self.side = self.connect()   # outside any transaction
        self.side.executescript("""
            PRAGMA journal_mode = WAL;
            CREATE TABLE IF NOT EXISTS sinew_audit (
                seq INTEGER PRIMARY KEY, entry TEXT NOT NULL, hash TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS sinew_audit_queue (
                n INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS sinew_outbox (
                n INTEGER PRIMARY KEY AUTOINCREMENT, message TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS sinew_keys (
                scope TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,
                claimed_ms INTEGER NOT NULL, status INTEGER, body TEXT,
                PRIMARY KEY (scope, key));
            CREATE TABLE IF NOT EXISTS sinew_rate (
                scope TEXT NOT NULL, window_ms INTEGER NOT NULL, count INTEGER NOT NULL,
                PRIMARY KEY (scope, window_ms));
            CREATE TABLE IF NOT EXISTS sinew_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            INSERT OR IGNORE INTO sinew_meta VALUES ('swept_ms', 0), ('rate_window', 0);
        """)

    def connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        c.execute("PRAGMA synchronous = OFF")
        c.create_function("sinew_instant", 1, _instant, deterministic=True)
        c.create_function("sinew_json_equal", 2, _json_equal, deterministic=True)
        return c

    def close(self) -> None:
        for t in list(self.txs.values()):
            if t.parent is None:
                t.conn.rollback()
        for c in self.pool + [self.side] + [t.conn for t in self.txs.values() if t.parent is None]:
            c.close()
        self.txs.clear()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- set-up ---------------------------------------------------------------

    def declare(self, schema: Schema) -> None:
        self.schema = schema
        for e in schema.entities:
            self.ensure_table(e)

    def has_table(self, entity: str) -> bool:
        return entity in self.tables

    def ensure_table(self, entity: str) -> None:
        if entity in self.tables:
            return
        t = table(entity)
        ddl = [f"CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
               "deleted_at TEXT, data TEXT NOT NULL)"]
        for n, key in enumerate(self.schema.unique.get(entity, [])):
            name = f"u_{entity}_{n}"
            # Timestamps are compared as text: the core writes them in one
            # canonical form (docs/embedding.md, "Rows"), so equal text is
            # an equal instant.
            cols = ", ".join(f"json_extract(data, {path(f)})" for f in key.split(","))
            ddl.append(f"CREATE UNIQUE INDEX IF NOT EXISTS {ident(name)} ON {t} ({cols}) "
                       "WHERE deleted_at IS NULL")
            self.unique_names[name] = (entity, key)
        self.side.executescript(";\n".join(ddl))
        self.tables.add(entity)

    def seed(self, entity: str, row: dict) -> None:
        self.ensure_table(entity)
        with self.errors(entity):
            self.side.execute(f"INSERT INTO {table(entity)} VALUES (?, ?, ?, ?)", self.columns(entity, row))

    # -- errors ---------------------------------------------------------------

    def errors(self, entity: str = "") -> "_Errors":
        return _Errors(self, entity)

    # -- transactions ---------------------------------------------------------

    def tx(self, id_: int) -> Tx:
        t = self.txs.get(id_)
        if t is None:
            raise invalid(f"transaction {id_} is unknown or finished")
        return t

    def writable(self, id_: int) -> sqlite3.Connection:
        t = self.tx(id_)
        if t.child is not None:
            raise invalid(f"transaction {id_} has an open savepoint {t.child}")
        return t.conn

    def begin(self, level: str) -> int:
        # Every level is serializable on SQLite; DEFERRED: the snapshot is
        # taken at the first read, the write lock at the first write.
        conn = self.pool.pop() if self.pool else self.connect()
        with self.errors():
            conn.execute("BEGIN DEFERRED")
        self.next_tx += 1
        self.txs[self.next_tx] = Tx(conn, None, self.next_tx, "")
        return self.next_tx

    def savepoint(self, tx: int, level: str) -> int:
        t = self.tx(tx)
        if t.child is not None:
            raise invalid(f"transaction {tx} already has an open savepoint {t.child}")
        self.next_tx += 1
        name = f"sp{self.next_tx}"
        with self.errors():
            t.conn.execute(f"SAVEPOINT {name}")
        self.txs[self.next_tx] = Tx(t.conn, tx, t.root, name)
        t.child = self.next_tx
        return self.next_tx

    def end(self, id_: int) -> None:
        """Forgets `id_` and its open savepoints; a root's connection goes
        back to the pool."""
        cur: Optional[int] = id_
        while cur is not None:
            t = self.txs.pop(cur, None)
            if t is None:
                break
            if t.parent is None:
                self.pool.append(t.conn)
            elif t.parent in self.txs and self.txs[t.parent].child == cur:
                self.txs[t.parent].child = None
            cur = t.child

    def commit(self, tx: int) -> None:
        t = self.tx(tx)
        if t.child is not None:
            raise invalid(f"transaction {tx} has an open savepoint {t.child}")
        if t.parent is not None:
            with self.errors():
                t.conn.execute(f"RELEASE {t.name}")
            self.end(tx)
            return
        try:
            with self.errors():
                self.seal_queued(t.conn)
                t.conn.execute("COMMIT")
        except StorageError:
            if t.conn.in_transaction:
                t.conn.execute("ROLLBACK")
            self.end(tx)
            raise
        self.end(tx)

    def rollback(self, tx: int) -> None:
        t = self.tx(tx)
        with self.errors():
            if t.parent is None:
                t.conn.execute("ROLLBACK")
            else:
                t.conn.execute(f"ROLLBACK TO {t.name}")
                t.conn.execute(f"RELEASE {t.name}")
        self.end(tx)

    def drop(self, tx: int) -> None:
        if tx in self.txs:
            self.rollback(tx)

    def open_transactions(self) -> int:
        return len(self.txs)

    def conn(self, tx: Optional[int]) -> sqlite3.Connection:
        return self.side if tx is None else self.tx(tx).conn

    # -- reads ----------------------------------------------------------------

    def select(self, conn: sqlite3.Connection, entity: str, q: Query) -> tuple[list[dict], int]:
        c = Compiler(self)
        a = c.alias()
        where, params = c.where(entity, a, q.filters)
        total = conn.execute(f"SELECT COUNT(*) FROM {table(entity)} {a} WHERE {where}", params).fetchone()[0]
        sql = f"SELECT {a}.data FROM {table(entity)} {a} WHERE {where}"
        if q.after is not None:
            s, ps = c.after(entity, a, q.order, q.after)
            sql += f" AND {s}"
            params = params + ps
        sql += f" ORDER BY {c.order_by(entity, a, q.order)}"
        if q.limit is not None:
            sql += " LIMIT ?"
            params = params + [min(q.limit, 2**63 - 1)]
        rows = [parse_json(d) for (d,) in conn.execute(sql, params)]
        self.embed(conn, rows, q.embeds)
        return rows, total

    def read_counted(self, tx: Optional[int], entity: str, q: Query) -> tuple[list[dict], int]:
        if not self.has_table(entity):
            return [], 0
        conn = self.conn(tx)
        with self.errors():
            if tx is None:
                # Both statements in one snapshot.
                conn.execute("BEGIN")
                try:
                    return self.select(conn, entity, q)
                finally:
                    conn.execute("COMMIT")
            if q.lock:
                # No row locks in SQLite: take the database's write lock
                # (a concurrent writer is a `conflict`).
                conn.execute("UPDATE sinew_meta SET value = value WHERE 0")
            return self.select(conn, entity, q)

    def embed(self, conn: sqlite3.Connection, rows: list[dict], embeds: list) -> None:
        for e in embeds:
            if not self.has_table(e.entity):
                for row in rows:
                    row[e.name] = None if e.link == "one" else []
                continue
            c = Compiler(self)
            a = c.alias()
            where, params = c.where(e.entity, a, e.filters)
            t = table(e.entity)
            if e.link == "one":
                refs = sorted({r[e.by] for r in rows if isinstance(r.get(e.by), str)})
                found = {i: parse_json(d) for i, d in conn.execute(
                    f"SELECT {a}.id, {a}.data FROM {t} {a} WHERE {a}.id IN "
                    f"(SELECT value FROM json_each(?)) AND {where}", [json_text(refs)] + params)}
                one = [dict(found[r[e.by]]) if isinstance(r.get(e.by), str) and r[e.by] in found else None
                       for r in rows]
                self.embed(conn, [r for r in one if r is not None], e.embeds)
                for row, r in zip(rows, one):
                    row[e.name] = r
            else:
                parents = sorted({r["id"] for r in rows if isinstance(r.get("id"), str)})
                v, ty = c.column(a, e.by)
                sql = (f"SELECT p, data FROM (SELECT {v} AS p, {a}.data AS data, ROW_NUMBER() OVER "
                       f"(PARTITION BY {v} ORDER BY {c.order_by(e.entity, a, e.order)}) AS n "
                       f"FROM {t} {a} WHERE {ty} = 'text' AND {v} IN (SELECT value FROM json_each(?)) "
                       f"AND {where})")
                ps = [json_text(parents)] + params
                if e.limit is not None:
                    sql += " WHERE n <= ?"
                    ps.append(min(e.limit, 2**63 - 1))
                groups: dict[str, list[dict]] = {}
                for p, d in conn.execute(sql + " ORDER BY p, n", ps):
                    groups.setdefault(p, []).append(parse_json(d))
                lists = [[dict(m) for m in groups.get(r.get("id"), [])] if isinstance(r.get("id"), str) else []
                         for r in rows]
                self.embed(conn, [m for lst in lists for m in lst], e.embeds)
                for row, lst in zip(rows, lists):
                    row[e.name] = lst

    def aggregate(self, tx: Optional[int], entity: str, filters: list, group_by: list[str],
                  measures: list[Measure]) -> list[dict]:
        if not self.has_table(entity):
            return [] if group_by else [{m.name: 0 if m.tally in ("rows", "count", "sum") else None
                                         for m in measures}]
        c = Compiler(self)
        a = c.alias()
        where, params = c.where(entity, a, filters)
        # A group is the JSON text of its values (null and missing alike).
        keys = [f"COALESCE({a}.data -> {path(g)}, 'null')" for g in group_by]
        cols, cparams = list(keys), []
        checks = []
        for m in measures:
            v, t = c.column(a, m.field or "")
            if m.tally == "rows":
                cols.append("COUNT(*)")
            elif m.tally == "count":
                cols.append(f"COUNT({v})")
            elif m.tally == "sum":
                # In two halves (each sum fits 64 bits), joined in Python:
                # a sum past 64 bits is its digits, as the port says.
                whole = f"CASE WHEN {t} = 'integer' THEN {v} END"
                cols.append(f"COALESCE(SUM(({whole}) / 4294967296), 0) || ':' || "
                            f"COALESCE(SUM(({whole}) % 4294967296), 0)")
                checks.append(len(cols) - 1)
                cols.append(f"SUM({t} NOT IN ('integer', 'null'))")
            else:
                # The least / greatest value: the first row of the group in
                # the column's order.
                b = c.alias()
                bw, bp = c.where(entity, b, filters)
                same = "".join(f" AND COALESCE({b}.data -> {path(g)}, 'null') = {k}"
                               for g, k in zip(group_by, keys))
                bv, _ = c.column(b, m.field or "")
                d = " DESC" if m.tally == "max" else ""
                order = f"{RANK.format(t=c.column(b, m.field or '')[1])}{d}, {c.order_value(entity, b, m.field or '')}{d}, {b}.id"
                cols.append(f"(SELECT {b}.data -> {path(m.field or '')} FROM {table(entity)} {b} "
                            f"WHERE {bw}{same} AND {bv} IS NOT NULL ORDER BY {order} LIMIT 1)")
                cparams += bp
        sql = f"SELECT {', '.join(cols)} FROM {table(entity)} {a} WHERE {where}"
        if keys:
            sql += " GROUP BY " + ", ".join(keys)
        with self.errors():
            try:
                result = self.conn(tx).execute(sql, cparams + params).fetchall()
            except sqlite3.OperationalError as e:
                if "integer overflow" in str(e):
                    raise invalid("a sum does not fit 64 bits") from None
                raise
        out = []
        for r in result:
            r = list(r)
            for i in reversed(checks):
                if r[i + 1]:
                    raise invalid("`sum` needs integers")
                del r[i + 1]
            g = {f: parse_json(x) for f, x in zip(group_by, r)}
            for m, x in zip(measures, r[len(group_by):]):
                if m.tally == "sum":
                    hi, lo = (int(h) for h in x.split(":"))
                    x = hi * 4294967296 + lo
                    x = x if I64_MIN <= x <= I64_MAX else str(x)
                g[m.name] = parse_json(x) if m.tally in ("min", "max") and x is not None else x
            out.append(g)
        return out

    # -- writes ---------------------------------------------------------------

    @staticmethod
    def columns(entity: str, row: dict) -> tuple:
        id_ = row.get("id")
        if not isinstance(id_, str):
            raise invalid(f"a `{entity}` row needs a string `id`")
        version = row.get("version")
        deleted = row.get("deleted_at")
        return (id_, version if isinstance(version, int) else 0,
                None if deleted is None else deleted if isinstance(deleted, str) else json_text(deleted),
                json_text(row))

    def insert(self, tx: int, entity: str, row: dict) -> dict:
        return self.insert_many(tx, entity, [row])[0]

    def insert_many(self, tx: int, entity: str, rows: list[dict]) -> list[dict]:
        conn = self.writable(tx)
        self.ensure_table(entity)
        if not rows:
            return []
        values = [v for r in rows for v in self.columns(entity, r)]
        with self.errors(entity):
            # One statement: all or nothing.
            conn.execute(f"INSERT INTO {table(entity)} VALUES " + ", ".join(["(?, ?, ?, ?)"] * len(rows)),
                         values)
        return rows

    def set_changes(self, entity: str, id_: Optional[str], changes: dict) -> tuple[str, list]:
        """The SET clause writing `changes` into `data` (members in place,
        new ones appended) and the columns, and one more version."""
        sets, params = [], []
        for k, v in changes.items():
            if k == "id":
                if id_ is not None and v != id_:
                    raise invalid(f"the `id` of `{entity}` row `{id_}` cannot change")
                continue
            if k == "version":
                continue
            sets.append(f"{path(k)}, json(?)")
            params.append(json_text(v))
        data = "json_set(data, " + ", ".join(sets + ["'$.version', version + 1"]) + ")"
        sql = f"data = {data}, version = version + 1"
        if "deleted_at" in changes:
            d = changes["deleted_at"]
            sql += ", deleted_at = ?"
            params.append(None if d is None else d if isinstance(d, str) else json_text(d))
        return sql, params

    def update(self, tx: int, entity: str, id_: str, version: int, changes: dict) -> dict:
        conn = self.writable(tx)
        if not self.has_table(entity):
            raise not_found(entity, id_)
        with self.errors(entity):
            found = conn.execute(f"SELECT version FROM {table(entity)} WHERE id = ? AND deleted_at IS NULL",
                                 [id_]).fetchone()
            if found is None:
                raise not_found(entity, id_)
            if found[0] != version:
                raise conflict(f"`{entity}` row `{id_}` is at version {found[0]}, not {version}")
            sets, params = self.set_changes(entity, id_, changes)
            row = conn.execute(f"UPDATE {table(entity)} SET {sets} WHERE id = ? AND version = ? "
                               "AND deleted_at IS NULL RETURNING data", params + [id_, version]).fetchone()
        if row is None:
            raise conflict(f"`{entity}` row `{id_}` was changed by a concurrent transaction")
        return parse_json(row[0])

    def update_where(self, tx: int, entity: str, q: Query, changes: dict) -> list[dict]:
        conn = self.writable(tx)
        if not self.has_table(entity):
            return []
        c = Compiler(self)
        a = c.alias()
        where, params = c.where(entity, a, q.filters)
        pick = f"SELECT {a}.id FROM {table(entity)} {a} WHERE {where} ORDER BY {c.order_by(entity, a, q.order)}"
        if q.limit is not None:
            pick += " LIMIT ?"
            params = params + [min(q.limit, 2**63 - 1)]
        sets, sparams = self.set_changes(entity, None, changes)

        def work(sp: int) -> list[dict]:
            with self.errors(entity):
                ids = [i for (i,) in conn.execute(pick, params)]
                done = dict(conn.execute(
                    f"UPDATE {table(entity)} SET {sets} WHERE id IN (SELECT value FROM json_each(?)) "
                    "RETURNING id, data", sparams + [json_text(ids)]).fetchall())
            return [parse_json(done[i]) for i in ids]
        return self.in_savepoint(tx, work)

    # -- audit, outbox --------------------------------------------------------

    def seal_queued(self, conn: sqlite3.Connection) -> None:
        """Chains the entries this transaction queued (at its commit, under
        the write lock: the order in which they become durable)."""
        queued = conn.execute("SELECT entry FROM sinew_audit_queue ORDER BY n").fetchall()
        if queued:
            self.chain(conn, [e for (e,) in queued])
            conn.execute("DELETE FROM sinew_audit_queue")

    @staticmethod
    def chain(conn: sqlite3.Connection, entries: list[str]) -> None:
        last = conn.execute("SELECT seq, hash FROM sinew_audit ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = last if last else (0, GENESIS_HASH)
        for entry in entries:
            seq += 1
            text, prev = seal(entry, seq, prev)
            conn.execute("INSERT INTO sinew_audit VALUES (?, ?, ?)", [seq, text, prev])

    def append_audit(self, tx: Optional[int], entry: str) -> None:
        if not isinstance(parse_json(entry), dict):
            raise invalid("an audit entry must be a JSON object")
        if tx is not None:
            with self.errors():
                self.writable(tx).execute("INSERT INTO sinew_audit_queue (entry) VALUES (?)", [entry])
            return
        with self.errors(), self.own_transaction() as conn:
            self.chain(conn, [entry])

    def enqueue(self, tx: int, message: str) -> None:
        if not isinstance(parse_json(message), dict):
            raise invalid("an outbox message must be a JSON object")
        with self.errors():
            self.writable(tx).execute("INSERT INTO sinew_outbox (message) VALUES (?)", [message])

    def own_transaction(self) -> "_Own":
        return _Own(self.side)

    # -- idempotency keys, rate windows ---------------------------------------

    def claim_key(self, scope: str, key: str, fingerprint: str, now_ms: int) -> str | Stored:
        with self.errors(), self.own_transaction() as conn:
            swept = conn.execute("SELECT value FROM sinew_meta WHERE name = 'swept_ms'").fetchone()[0]
            if now_ms - swept >= 60_000 or now_ms < swept:
                # Forget records a day old, but keep each cron scope's latest
                # claimed time.
                conn.execute(
                    "DELETE FROM sinew_keys WHERE ? - claimed_ms >= ? AND NOT (substr(scope, 1, 5) = 'cron:' "
                    "AND key = (SELECT MAX(k.key) FROM sinew_keys k WHERE k.scope = sinew_keys.scope))",
                    [now_ms, IDEMPOTENCY_TTL_MS])
                conn.execute("UPDATE sinew_meta SET value = ? WHERE name = 'swept_ms'", [now_ms])
            r = conn.execute("SELECT fingerprint, claimed_ms, status, body FROM sinew_keys "
                             "WHERE scope = ? AND key = ?", [scope, key]).fetchone()
            if r is not None:
                age = now_ms - r[1]
                cron = scope.startswith(CRON_PREFIX)
                if not ((age < IDEMPOTENCY_TTL_MS or cron) and (r[2] is not None or age < ABANDONED_AFTER_MS)):
                    r = None
            if r is None:
                conn.execute("INSERT OR REPLACE INTO sinew_keys VALUES (?, ?, ?, ?, NULL, NULL)",
                             [scope, key, fingerprint, now_ms])
                return "new"
            if r[0] != fingerprint:
                return "mismatch"
            if r[2] is None:
                return "in-flight"
            return Stored(r[2], r[3])

    def complete_key(self, tx: Optional[int], scope: str, key: str, status: int, body: str) -> None:
        def store(conn: sqlite3.Connection) -> None:
            r = conn.execute("SELECT status FROM sinew_keys WHERE scope = ? AND key = ?", [scope, key]).fetchone()
            if r is None:
                raise invalid(f"idempotency key `{key}` of `{scope}` was not claimed")
            if r[0] is not None:
                raise invalid(f"idempotency key `{key}` of `{scope}` is already completed")
            conn.execute("UPDATE sinew_keys SET status = ?, body = ? WHERE scope = ? AND key = ? "
                         "AND status IS NULL", [status, body, scope, key])
        if tx is not None:
            with self.errors():
                store(self.writable(tx))
            return
        with self.errors(), self.own_transaction() as conn:
            store(conn)

    def release_key(self, scope: str, key: str) -> None:
        with self.errors(), self.own_transaction() as conn:
            conn.execute("DELETE FROM sinew_keys WHERE scope = ? AND key = ? AND status IS NULL", [scope, key])

    def rate_hit(self, scope: str, window_ms: int) -> int:
        with self.errors(), self.own_transaction() as conn:
            newest = conn.execute("SELECT value FROM sinew_meta WHERE name = 'rate_window'").fetchone()[0]
            if window_ms > newest:
                # Forget the windows older than the newest one seen.
                conn.execute("DELETE FROM sinew_rate WHERE window_ms < ?", [window_ms])
                conn.execute("UPDATE sinew_meta SET value = ? WHERE name = 'rate_window'", [window_ms])
            return conn.execute(
                "INSERT INTO sinew_rate VALUES (?, ?, 1) ON CONFLICT (scope, window_ms) "
                "DO UPDATE SET count = count + 1 RETURNING count", [scope, window_ms]).fetchone()[0]

    # -- state ----------------------------------------------------------------

    def state(self) -> dict:
        q = self.side.execute
        rows = {}
        for e in sorted(self.tables):
            listed = [parse_json(d) for (d,) in q(f"SELECT data FROM {table(e)} ORDER BY id")]
            if listed:
                rows[e] = listed
        out: dict[str, Any] = {
            "rows": rows,
            "audit": [chained_entry(t, h) for t, h in q("SELECT entry, hash FROM sinew_audit ORDER BY seq")],
        }
        outbox = [parse_json(m) for (m,) in q("SELECT message FROM sinew_outbox ORDER BY n")]
        if outbox:
            out["outbox"] = outbox
        out["idempotency"] = [
            {"scope": s, "key": k, "fingerprint": f, "claimed_ms": c,
             "response": None if st is None else {"status": st, "body": parse_json(b)}}
            for s, k, f, c, st, b in q("SELECT * FROM sinew_keys ORDER BY scope, key")]
        out["rate"] = [{"scope": s, "window_ms": w, "count": n}
                       for s, w, n in q("SELECT * FROM sinew_rate ORDER BY scope, window_ms")]
        out["unique"], out["timestamps"] = self.schema.to_json()
        return out


class _Own:
    """`with`: a statement group in a transaction of its own (the free
    functions), on the connection for what is outside transactions."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind_: Any, *_: Any) -> None:
        self.conn.execute("COMMIT" if kind_ is None else "ROLLBACK")


class _Errors:
    """`with`: SQLite's errors as storage errors. A unique index is
    `unique`, a taken id `conflict` (as the reference in-memory store), a
    busy database `conflict`, anything else `unavailable`."""

    def __init__(self, store: SqliteStore, entity: str) -> None:
        self.store, self.entity = store, entity

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind_: Any, e: Any, _tb: Any) -> bool:
        if e is None or isinstance(e, StorageError) or not isinstance(e, sqlite3.Error):
            return False
        name = getattr(e, "sqlite_errorname", "")
        text = str(e)
        if name == "SQLITE_CONSTRAINT_UNIQUE" and "index '" in text:
            index = text.split("index '", 1)[1].rstrip("'")
            if index in self.store.unique_names:
                raise unique(*self.store.unique_names[index]) from None
        if name == "SQLITE_CONSTRAINT_PRIMARYKEY":
            raise conflict(f"a `{self.entity}` row with this id already exists") from None
        if name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED"):
            raise conflict(f"the database is busy: {text}") from None
        raise StorageError("unavailable", f"SQLite: {text}") from None
