"""Embedding sinew's plain core component in Python, with a storage of your own.

The plain component (`sinew component`, world `core`) imports
`sinew:executor/storage`, `clock` and `external` (and the type-only
`types`) and exports `executor` and `risk`. This module links those imports
to Python objects with wasmtime-py's `wasmtime.component` API (PyPI
`wasmtime` 51), following docs/embedding.md:

- `Storage`: the abstract base class a store implements (`store_memory.py`,
  `store_sqlite.py`), with the query types it receives already decoded
  (`Query`, `Condition`, …) and `StorageError` to refuse an operation;
- the compact row encoding of types.wit (`encode_*`, `decode_*`);
- JSON helpers: a lossless parse, canonical JSON, the audit chain (`seal`);
- the comparison rules of queries (`sql_cmp`, `sort_cmp`, `values_equal`),
  shared by the stores;
- `Schema`: what a store must know of the spec (unique keys, timestamps);
- `ScriptedExternal`: the externals script of the scenario corpus;
- `Sinew` / `Instance`: compile once, instantiate per store, call `load`,
  `execute`, `complete_row`, `analyze`.

A `StorageError` raised by a store becomes the WIT `storage-error` (the core
answers 409/404/503/500 and the instance lives on). Any other exception
raised in a host function traps the instance: the export call fails with a
`wasmtime` error and the instance must be discarded.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Callable, Optional

from wasmtime import Engine, Store
from wasmtime.component import Component, Linker, Record, ResourceHost, ResourceType, Variant

PACKAGE = "sinew:executor"
VERSION = "0.4.0"
GENESIS_HASH = "0" * 64
IDEMPOTENCY_TTL_MS = 24 * 60 * 60 * 1000
ABANDONED_AFTER_MS = 15 * 60 * 1000
CRON_PREFIX = "cron:"
IMPLICIT_TIMESTAMPS = ("created_at", "updated_at", "deleted_at")

I64_MIN, I64_MAX, U64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1


# ---------------------------------------------------------------------------
# Storage errors

class StorageError(Exception):
    """A typed refusal: becomes the WIT `storage-error` of that `kind`.

    kind: `conflict`, `unavailable`, `invalid` (with a message), `unique`
    (entity, field) or `not-found` (entity, id).
    """

    def __init__(self, kind: str, *args: str):
        super().__init__(kind, *args)
        self.kind = kind
        self.args_ = args

    def variant(self) -> Variant:
        if self.kind in ("unique", "not-found"):
            r = Record()
            r.entity = self.args_[0]
            if self.kind == "unique":
                r.field = self.args_[1]
            else:
                r.id = self.args_[1]
            return Variant(self.kind, r)
        return Variant(self.kind, self.args_[0])


def conflict(message: str) -> StorageError:
    return StorageError("conflict", message)


def invalid(message: str) -> StorageError:
    return StorageError("invalid", message)


def not_found(entity: str, id_: str) -> StorageError:
    return StorageError("not-found", entity, id_)


def unique(entity: str, key: str) -> StorageError:
    return StorageError("unique", entity, key)


# ---------------------------------------------------------------------------
# JSON: values are None, bool, int, float, str, list, dict (ordered).

class RawFloat(float):
    """A float that remembers the text it was parsed from, so that canonical
    JSON writes it exactly as the guest did (docs/embedding.md: "keep each
    number's text exactly as the guest sent it")."""

    text: str

    def __new__(cls, text: str) -> "RawFloat":
        f = super().__new__(cls, text)
        f.text = text
        return f


def _int(text: str) -> int | float:
    """serde_json reads an integer outside i64..u64 as a double."""
    n = int(text)
    return n if I64_MIN <= n <= U64_MAX else float(n)


def parse_json(text: str) -> Any:
    """JSON text to a value, integers kept apart from doubles (`1` vs `1.0`)."""
    return json.loads(text, parse_int=_int)


def parse_lossless(text: str) -> Any:
    """As `parse_json`, doubles keeping their text (for canonical JSON)."""
    return json.loads(text, parse_int=_int, parse_float=RawFloat)


def json_text(v: Any) -> str:
    """Compact JSON text with members in their order (serde_json's layout)."""
    return _write(v, False)


def canonical(v: Any) -> str:
    """Canonical JSON (`core/src/hash.rs`): keys sorted by UTF-8 bytes at
    every level, no whitespace, serde_json's escapes and numbers."""
    return _write(v, True)


def _write(v: Any, sort: bool) -> str:
    out: list[str] = []
    _put(v, sort, out)
    return "".join(out)


def _put(v: Any, sort: bool, out: list[str]) -> None:
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        out.append(str(v))
    elif isinstance(v, float):
        out.append(v.text if isinstance(v, RawFloat) else serde_float(v))
    elif isinstance(v, str):
        out.append(_string(v))
    elif isinstance(v, list):
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(",")
            _put(x, sort, out)
        out.append("]")
    elif isinstance(v, dict):
        # Python orders str by code point, which is UTF-8 byte order.
        items = sorted(v.items()) if sort else v.items()
        out.append("{")
        for i, (k, x) in enumerate(items):
            if i:
                out.append(",")
            out.append(_string(k))
            out.append(":")
            _put(x, sort, out)
        out.append("}")
    else:
        raise TypeError(f"not a JSON value: {v!r}")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
            "\b": "\\b", "\f": "\\f"}
_ESCAPE_TABLE = {i: _ESCAPES.get(chr(i), f"\\u{i:04x}") for i in range(0x20)}
_ESCAPE_TABLE[ord('"')] = '\\"'
_ESCAPE_TABLE[ord("\\")] = "\\\\"


def _string(s: str) -> str:
    return '"' + s.translate(_ESCAPE_TABLE) + '"'


def serde_float(f: float) -> str:
    """A finite double as serde_json (ryu) writes it: `1.0`, `0.0001`,
    `1e16`, `1.5e-7`, `-2.5`."""
    if f == 0:
        return "-0.0" if math.copysign(1, f) < 0 else "0.0"
    sign, digits, exp = Decimal(repr(f)).as_tuple()
    ds = "".join(map(str, digits)).rstrip("0") or "0"
    exp += len(digits) - len(ds)          # value = ds × 10^exp
    n = len(ds)
    kk = n + exp                           # position of the decimal point
    s = "-" if sign else ""
    if 0 <= exp and kk <= 16:
        return f"{s}{ds}{'0' * exp}.0"
    if 0 < kk <= 16:
        return f"{s}{ds[:kk]}.{ds[kk:]}"
    if -5 < kk <= 0:
        return f"{s}0.{'0' * -kk}{ds}"
    mant = ds if n == 1 else f"{ds[0]}.{ds[1:]}"
    return f"{s}{mant}e{kk - 1}"


def json_equal(a: Any, b: Any) -> bool:
    """serde_json's `Value` equality: types never mix (`1` ≠ `1.0` ≠ `true`),
    objects equal whatever their member order."""
    if kind(a) != kind(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if kind(a) == "number":
        return isinstance(a, float) == isinstance(b, float) and a == b
    return a == b


def kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


# ---------------------------------------------------------------------------
# The audit chain

def seal(entry_text: str, seq: int, prev: str) -> tuple[str, str]:
    """An entry as the chain stores it: the canonical JSON of the entry with
    `seq` and `prev` and without `hash`, and its SHA-256 (lowercase hex)."""
    entry = parse_lossless(entry_text)
    if not isinstance(entry, dict):
        raise invalid("an audit entry must be a JSON object")
    entry.pop("hash", None)
    entry["seq"] = seq
    entry["prev"] = prev
    text = canonical(entry)
    return text, hashlib.sha256(text.encode()).hexdigest()


def chained_entry(text: str, hash_: str) -> dict:
    """A stored entry as the state shows it: its members and `hash`."""
    entry = parse_json(text)
    entry["hash"] = hash_
    return entry


# ---------------------------------------------------------------------------
# The compact encoding (types.wit `value`, `row`, `rows`)

MAX_DEPTH = 64


class WireError(ValueError):
    pass


class Encoder:
    """Writes values into one buffer, sharing its key table."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.keys: dict[str, int] = {}

    def leb(self, n: int) -> None:
        while n >= 0x80:
            self.out.append((n & 0x7F) | 0x80)
            n >>= 7
        self.out.append(n)

    def text(self, s: str) -> None:
        b = s.encode()
        self.leb(len(b))
        self.out += b

    def value(self, v: Any) -> None:
        if v is None:
            self.out.append(0)
        elif v is False:
            self.out.append(1)
        elif v is True:
            self.out.append(2)
        elif isinstance(v, int) and I64_MIN <= v <= I64_MAX:
            self.out.append(3)
            self.leb(((v << 1) ^ (v >> 63)) & U64_MAX)
        elif isinstance(v, int) and I64_MAX < v <= U64_MAX:
            self.out.append(4)
            self.leb(v)
        elif isinstance(v, (int, float)):
            self.out.append(5)
            self.out += struct.pack("<d", float(v))
        elif isinstance(v, str):
            self.out.append(6)
            self.text(v)
        elif isinstance(v, list):
            self.out.append(7)
            self.leb(len(v))
            for x in v:
                self.value(x)
        elif isinstance(v, dict):
            self.object(v)
        else:
            raise TypeError(f"not a JSON value: {v!r}")

    def object(self, m: dict) -> None:
        self.out.append(8)
        self.leb(len(m))
        for k, v in m.items():
            n = self.keys.get(k)
            if n is None:
                self.keys[k] = len(self.keys) + 1
                self.out.append(0)
                self.text(k)
            else:
                self.leb(n)
            self.value(v)


def encode_value(v: Any) -> bytes:
    e = Encoder()
    e.value(v)
    return bytes(e.out)


def encode_row(row: dict) -> bytes:
    e = Encoder()
    e.object(row)
    return bytes(e.out)


def encode_rows(rows: list[dict]) -> bytes:
    e = Encoder()
    e.leb(len(rows))
    for r in rows:
        e.object(r)
    return bytes(e.out)


class Decoder:
    """Reads values from one buffer, strictly (docs/embedding.md §3)."""

    def __init__(self, data: bytes) -> None:
        self.b = data
        self.at = 0
        self.keys: list[str] = []

    def byte(self) -> int:
        if self.at >= len(self.b):
            raise WireError("the buffer is cut short")
        self.at += 1
        return self.b[self.at - 1]

    def leb(self) -> int:
        n = shift = 0
        while shift < 64:
            c = self.byte()
            n |= (c & 0x7F) << shift
            if not c & 0x80:
                if shift == 63 and c > 1:
                    break
                return n
            shift += 7
        raise WireError("a number is longer than 64 bits")

    def count(self) -> int:
        n = self.leb()
        if n > len(self.b) - self.at:
            raise WireError("a count exceeds the buffer")
        return n

    def text(self) -> str:
        n = self.count()
        raw = self.b[self.at:self.at + n]
        self.at += n
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise WireError("a string is not UTF-8") from None

    def value(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError("values nest too deeply")
        tag = self.byte()
        if tag == 0:
            return None
        if tag == 1:
            return False
        if tag == 2:
            return True
        if tag == 3:
            z = self.leb()
            return (z >> 1) ^ -(z & 1)
        if tag == 4:
            return self.leb()
        if tag == 5:
            if self.at + 8 > len(self.b):
                raise WireError("the buffer is cut short")
            (d,) = struct.unpack_from("<d", self.b, self.at)
            self.at += 8
            if not math.isfinite(d):
                raise WireError("a number is not finite")
            return d
        if tag == 6:
            return self.text()
        if tag == 7:
            return [self.value(depth + 1) for _ in range(self.count())]
        if tag == 8:
            return self.members(depth)
        raise WireError("an unknown tag")

    def members(self, depth: int) -> dict:
        m: dict = {}
        for _ in range(self.count()):
            k = self.key()
            if k in m:
                raise WireError("an object has a key twice")
            m[k] = self.value(depth + 1)
        return m

    def key(self) -> str:
        k = self.leb()
        if k == 0:
            s = self.text()
            self.keys.append(s)
            return s
        if k > len(self.keys):
            raise WireError("a key is not in the key table")
        return self.keys[k - 1]

    def object(self) -> dict:
        if self.byte() != 8:
            raise WireError("a row is not an object")
        return self.members(0)

    def end(self) -> None:
        if self.at != len(self.b):
            raise WireError("trailing bytes")


def decode_value(data: bytes) -> Any:
    d = Decoder(data)
    v = d.value()
    d.end()
    return v


def decode_row(data: bytes) -> dict:
    d = Decoder(data)
    r = d.object()
    d.end()
    return r


def decode_rows(data: bytes) -> list[dict]:
    d = Decoder(data)
    rows = [d.object() for _ in range(d.count())]
    d.end()
    return rows


# ---------------------------------------------------------------------------
# Queries, as the stores receive them

@dataclass
class Condition:
    field: str
    op: str            # eq ne lt lte gt gte in not-in is-null starts-with contains icontains
    value: Any


# A predicate is a tuple: ("is", Condition), ("all", [p…]), ("any", [p…]),
# ("not", p) or ("via", field, entity, p).
Predicate = tuple


@dataclass
class SortKey:
    field: str
    desc: bool


@dataclass
class Embed:
    name: str
    entity: str
    link: str          # "one" or "many"
    by: str            # the `ref` field
    filters: list
    order: list
    limit: Optional[int]
    embeds: list = field(default_factory=list)


@dataclass
class Query:
    filters: list
    order: list
    limit: Optional[int] = None
    after: Optional[list] = None
    lock: bool = False
    embeds: list = field(default_factory=list)


@dataclass
class Measure:
    name: str
    tally: str         # rows count sum min max
    field: Optional[str]


@dataclass
class Stored:
    """A stored idempotency response (`claim` `replay`)."""
    status: int
    body: str


def predicates(tokens: list) -> list:
    """The flat prefix-order `filter` list of the WIT as predicate trees."""
    it = iter(tokens)
    left = [len(tokens)]

    def take(depth: int) -> Predicate:
        if depth > 64:
            raise invalid("filters: nested too deep")
        if left[0] == 0:
            raise invalid("filters: a combinator lacks members")
        left[0] -= 1
        t = next(it)
        if t.tag == "is":
            c = t.payload
            try:
                value = decode_value(c.value)
            except WireError as e:
                raise invalid(f"the guest sent a value that cannot be decoded: {e}") from None
            cond = Condition(c.field, c.op, value)
            if cond.op in ("in", "not-in") and not isinstance(value, list):
                raise invalid(f"`{cond.op}` on `{cond.field}` needs a list")
            if cond.op == "is-null" and not isinstance(value, bool):
                raise invalid(f"`is-null` on `{cond.field}` needs true or false")
            return ("is", cond)
        if t.tag in ("all", "any"):
            if t.payload > left[0]:
                raise invalid("filters: a combinator lacks members")
            return (t.tag, [take(depth + 1) for _ in range(t.payload)])
        if t.tag == "not":
            return ("not", take(depth + 1))
        if t.tag == "via":
            return ("via", t.payload.field, t.payload.entity, take(depth + 1))
        raise invalid(f"filters: unknown filter `{t.tag}`")

    out = []
    while left[0]:
        out.append(take(0))
    return out


def sort_keys(order: list) -> list[SortKey]:
    return [SortKey(k.field, k.desc) for k in order]


def query(q: Record) -> Query:
    """A WIT `query` record as a `Query` (embeds nested under their parent)."""
    flat: list[Embed] = []
    top: list[Embed] = []
    for i, e in enumerate(q.embeds):
        emb = Embed(e.name, e.entity, e.link.tag, e.link.payload, predicates(e.filters),
                    sort_keys(e.order), e.limit)
        if e.parent is None:
            top.append(emb)
        elif e.parent < i:
            flat[e.parent].embeds.append(emb)
        else:
            raise invalid(f"embed {i} names embed {e.parent} as its parent, which does not come before it")
        flat.append(emb)
    after = None
    if q.after is not None:
        try:
            after = [decode_value(v) for v in q.after]
        except WireError as e:
            raise invalid(f"the guest sent a value that cannot be decoded: {e}") from None
        if len(after) != len(q.order):
            raise invalid(f"the cursor has {len(after)} values for {len(q.order)} sort keys")
    return Query(predicates(q.filters), sort_keys(q.order), q.limit, after, q.lock, top)


def measures(list_: list) -> list[Measure]:
    return [Measure(m.name, m.tally, m.field) for m in list_]


# ---------------------------------------------------------------------------
# Comparison rules (docs/embedding.md, "Reads and queries"), shared by the
# stores: the in-memory one evaluates everything with them, the SQLite one
# what it does not express in SQL.

def parse_timestamp(s: str) -> Optional[int]:
    """RFC 3339 text (`…T10:00:00.5+02:00`, `t`/space/`z` accepted) in
    microseconds since the epoch, or None (`expr::value::parse_timestamp`)."""
    if len(s) < 20 or s[4] != "-" or s[7] != "-" or s[10] not in "Tt " or s[13] != ":" or s[16] != ":":
        return None

    def num(a: int, b: int) -> Optional[int]:
        t = s[a:b]
        return int(t) if t and t.isascii() and t.isdigit() else None

    parts = [num(0, 4), num(5, 7), num(8, 10), num(11, 13), num(14, 16), num(17, 19)]
    if None in parts:
        return None
    y, mo, d, h, mi, se = parts  # type: ignore[misc]
    if not 1 <= mo <= 12 or d < 1 or d > _days_in_month(y, mo) or h > 23 or mi > 59 or se > 60:
        return None
    i, frac = 19, 0
    if s[i:i + 1] == ".":
        i += 1
        start = i
        while i < len(s) and s[i].isascii() and s[i].isdigit():
            i += 1
        digits = s[start:i]
        if not digits:
            return None
        frac = int((digits + "000000")[:6])
    rest = s[i:]
    if rest in ("Z", "z"):
        offset = 0
    elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
        oh, om = num(i + 1, i + 3), num(i + 4, i + 6)
        if oh is None or om is None or oh > 23 or om > 59:
            return None
        offset = (-1 if rest[0] == "-" else 1) * (oh * 3600 + om * 60)
    else:
        return None
    secs = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + min(se, 59) - offset
    t = secs * 1_000_000 + frac
    # Years 1 to 9999 in UTC (an offset may carry the instant out).
    return t if -62_135_596_800_000_000 <= t <= 253_402_300_799_999_999 else None


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 28
    return 30 if m in (4, 6, 9, 11) else 31


def _days_from_civil(y: int, m: int, d: int) -> int:
    y = y - 1 if m <= 2 else y
    era = y // 400
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _cmp(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def num_cmp(a: int | float, b: int | float) -> int:
    """Numbers by their exact values, as Postgres compares a `bigint` with
    a `numeric` (Python compares an int with a float exactly): 2**53 + 1
    is above the double 2**53."""
    return _cmp(a, b)


def sql_cmp(a: Any, b: Any, timestamp: bool) -> Optional[int]:
    """-1/0/1, or None when either is null, their types differ, they are
    arrays or objects, or (in a timestamp column) a string is no timestamp."""
    ka, kb = kind(a), kind(b)
    if ka != kb:
        return None
    if ka == "string":
        if timestamp:
            x, y = parse_timestamp(a), parse_timestamp(b)
            return None if x is None or y is None else _cmp(x, y)
        return _cmp(a, b)    # code points: UTF-8 byte order
    if ka == "number":
        return num_cmp(a, b)
    if ka == "boolean":
        return _cmp(a, b)
    return None


def values_equal(a: Any, b: Any, timestamp: bool) -> bool:
    """`eq`: null equals only null; arrays and objects equal as JSON."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, dict)):
        return json_equal(a, b)
    return sql_cmp(a, b, timestamp) == 0


TYPE_RANK = {"boolean": 0, "number": 1, "string": 2, "array": 3, "object": 4, "null": 5}


def sort_cmp(a: Any, b: Any, timestamp: bool) -> int:
    """The total ascending order of sort keys (nulls last). In a timestamp
    column, text that is no timestamp sorts after every instant, by its
    text among itself."""
    if timestamp and isinstance(a, str) and isinstance(b, str):
        x, y = parse_timestamp(a), parse_timestamp(b)
        if x is not None and y is not None:
            return _cmp(x, y)
        if x is None and y is None:
            return _cmp(a.encode(), b.encode())
        return -1 if y is None else 1
    o = sql_cmp(a, b, timestamp)
    if o is not None:
        return o
    ka, kb = kind(a), kind(b)
    if ka != kb:
        return _cmp(TYPE_RANK[ka], TYPE_RANK[kb])
    if ka in ("array", "object"):
        return _cmp(canonical(a), canonical(b))
    return 0


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def ascii_lower(s: str) -> str:
    return s.translate(_ASCII_LOWER)


def as_double(x: Any) -> Any:
    """A value as a `number` column compares it: an integer as the double
    nearest it (its column holds doubles), a list member by member."""
    if isinstance(x, int) and not isinstance(x, bool):
        return float(x)
    if isinstance(x, list):
        return [as_double(y) for y in x]
    return x


def condition_holds(v: Any, c: Condition, timestamp: bool, double: bool = False) -> bool:
    """Does a column's value `v` meet `c` (`double`: in a `number` column)?"""
    op, x = c.op, (as_double(c.value) if double else c.value)
    if op == "eq":
        return values_equal(v, x, timestamp)
    if op == "ne":
        return not values_equal(v, x, timestamp)
    if op in ("lt", "lte", "gt", "gte"):
        o = sql_cmp(v, x, timestamp)
        return o is not None and {"lt": o < 0, "lte": o <= 0, "gt": o > 0, "gte": o >= 0}[op]
    if op in ("in", "not-in"):
        found = v is not None and any(y is not None and values_equal(v, y, timestamp) for y in x)
        return found if op == "in" else not found
    if op == "is-null":
        return x == (v is None)
    if not (isinstance(v, str) and isinstance(x, str)):
        return False
    if op == "starts-with":
        return v.startswith(x)
    if op == "contains":
        return x in v
    if op == "icontains":
        return ascii_lower(x) in ascii_lower(v)
    raise invalid(f"unknown operator `{op}`")


# ---------------------------------------------------------------------------
# What the host must know of the spec

@dataclass
class Schema:
    """Per entity: its unique keys (a field, or an index's fields joined by
    `,`) and its declared timestamp fields, read from the spec's JSON as
    `World::declare` does."""

    unique: dict[str, list[str]] = field(default_factory=dict)
    timestamps: dict[str, set[str]] = field(default_factory=dict)
    doubles: dict[str, set[str]] = field(default_factory=dict)
    entities: list[str] = field(default_factory=list)

    @classmethod
    def from_spec(cls, spec_text: str) -> "Schema":
        s = cls()
        spec = json.loads(spec_text)
        entities = spec.get("entities") if isinstance(spec, dict) else None
        if not isinstance(entities, dict):
            return s
        for name, e in entities.items():
            s.entities.append(name)
            keys: set[str] = set()
            fields = e.get("fields") if isinstance(e, dict) else None
            for f, d in (fields or {}).items() if isinstance(fields, dict) else ():
                if not isinstance(d, dict):
                    continue
                if d.get("unique") is True:
                    keys.add(f)
                if d.get("type") == "timestamp":
                    s.timestamps.setdefault(name, set()).add(f)
                if d.get("type") == "number":
                    s.doubles.setdefault(name, set()).add(f)
            indexes = e.get("indexes") if isinstance(e, dict) else None
            for ix in indexes if isinstance(indexes, list) else ():
                if isinstance(ix, dict) and ix.get("unique") is True and isinstance(ix.get("fields"), list):
                    keys.add(",".join(ix["fields"]))
            if keys:
                s.unique[name] = sorted(keys)
        return s

    def is_timestamp(self, entity: str, column: str) -> bool:
        return column in IMPLICIT_TIMESTAMPS or column in self.timestamps.get(entity, ())

    def is_double(self, entity: str, column: str) -> bool:
        """A `number` field: a value is compared with it as a double."""
        return column in self.doubles.get(entity, ())

    def to_json(self) -> tuple[dict, dict]:
        """The `unique` and `timestamps` sections of the state."""
        return ({e: list(k) for e, k in sorted(self.unique.items())},
                {e: sorted(f) for e, f in sorted(self.timestamps.items())})


# ---------------------------------------------------------------------------
# The storage interface

class Storage(ABC):
    """What the `storage` import needs. Transactions and savepoints are ids
    (ints that fit in 32 bits: they are the resource's `rep`); `tx` None
    means outside a transaction (the free functions). Rows are dicts in
    the member order the core wrote; JSON arguments (entries, messages,
    bodies) arrive as text. Refuse with `StorageError`."""

    @abstractmethod
    def declare(self, schema: Schema) -> None:
        """Sets up the store for a spec (tables, unique keys, timestamps)."""

    @abstractmethod
    def seed(self, entity: str, row: dict) -> None:
        """Inserts a complete row as committed (tests, previews)."""

    @abstractmethod
    def begin(self, level: str) -> int: ...

    @abstractmethod
    def savepoint(self, tx: int, level: str) -> int: ...

    @abstractmethod
    def commit(self, tx: int) -> None: ...

    @abstractmethod
    def rollback(self, tx: int) -> None: ...

    @abstractmethod
    def drop(self, tx: int) -> None:
        """The guest dropped the handle: roll back if still open, else nothing."""

    @abstractmethod
    def read_counted(self, tx: Optional[int], entity: str, q: Query) -> tuple[list[dict], int]: ...

    def read(self, tx: Optional[int], entity: str, q: Query) -> list[dict]:
        return self.read_counted(tx, entity, q)[0]

    @abstractmethod
    def aggregate(self, tx: Optional[int], entity: str, filters: list, group_by: list[str],
                  measures: list[Measure]) -> list[dict]: ...

    @abstractmethod
    def insert(self, tx: int, entity: str, row: dict) -> dict: ...

    def in_savepoint(self, tx: int, work: Callable[[int], Any]) -> Any:
        """Runs `work(savepoint)`: released on success, rolled back on a
        `StorageError` (all or nothing for the operations on many rows)."""
        sp = self.savepoint(tx, "read-committed")
        try:
            out = work(sp)
        except StorageError:
            self.rollback(sp)
            raise
        self.commit(sp)
        return out

    def insert_many(self, tx: int, entity: str, rows: list[dict]) -> list[dict]:
        """Each row as `insert` does, all or nothing (a store with a
        statement for it overrides this)."""
        return self.in_savepoint(tx, lambda sp: [self.insert(sp, entity, r) for r in rows])

    @abstractmethod
    def update(self, tx: int, entity: str, id_: str, version: int, changes: dict) -> dict: ...

    @abstractmethod
    def update_where(self, tx: int, entity: str, q: Query, changes: dict) -> list[dict]: ...

    def update_many(self, tx: int, entity: str, ids: list[str], versions: list[int],
                    changes: list[dict]) -> list[dict]:
        """`update` of each id at its version with its changes, in order,
        all or nothing."""
        if not len(ids) == len(versions) == len(changes):
            raise invalid("`update-many` needs as many versions and changes as ids")
        return self.in_savepoint(tx, lambda sp: [
            self.update(sp, entity, i, v, c) for i, v, c in zip(ids, versions, changes)])

    def soft_delete(self, tx: int, entity: str, id_: str, version: int, at: str) -> dict:
        return self.update(tx, entity, id_, version, {"deleted_at": at})

    @abstractmethod
    def append_audit(self, tx: Optional[int], entry: str) -> None: ...

    @abstractmethod
    def enqueue(self, tx: int, message: str) -> None: ...

    @abstractmethod
    def claim_key(self, scope: str, key: str, fingerprint: str, now_ms: int) -> str | Stored:
        """`new`, `mismatch`, `in-flight` or a `Stored` response (replay)."""

    @abstractmethod
    def complete_key(self, tx: Optional[int], scope: str, key: str, status: int, body: str) -> None: ...

    @abstractmethod
    def release_key(self, scope: str, key: str) -> None: ...

    @abstractmethod
    def rate_hit(self, scope: str, window_ms: int) -> int: ...

    @abstractmethod
    def open_transactions(self) -> int: ...

    @abstractmethod
    def state(self) -> dict:
        """The committed state in `MemoryStorage::to_json`'s form: `rows`
        (entity → rows in id order, soft-deleted included), `audit`,
        `outbox` (only when not empty), `idempotency`, `rate`, `unique`,
        `timestamps`."""


# ---------------------------------------------------------------------------
# Scripted externals (core/src/ports/script.rs)

class ScriptedExternal:
    """Answers per `service.operation`, in order; then a default success."""

    def __init__(self, script: Optional[dict] = None):
        self.script: dict[str, list] = {k: list(v) for k, v in (script or {}).items() if v}
        self.counters: dict[str, int] = {}

    def call(self, service: str, operation: str, max_attempts: int) -> tuple[str, Any, list]:
        """(outcome tag, payload, attempts as (status, error))."""
        key = f"{service}.{operation}"
        n = self.counters[key] = self.counters.get(key, 0) + 1
        queue = self.script.get(key)
        answer = queue.pop(0) if queue else None
        if queue is not None and not queue:
            del self.script[key]
        if answer is None:
            return "ok", {"id": f"{service}_{operation}_{n}", "status": "succeeded"}, [(200, None)]
        (tag, value), = answer.items()
        if tag == "ok":
            return "ok", value, [(200, None)]
        if tag == "declined":
            return "declined", value, [(402, None)]
        return "failed", value, [(None, value)] * max(max_attempts, 1)

    def to_json(self) -> dict:
        return {"script": {k: v for k, v in sorted(self.script.items())},
                "counters": dict(sorted(self.counters.items()))}


# ---------------------------------------------------------------------------
# The component

class Trap(Exception):
    """The instance trapped: discard it."""


class Sinew:
    """The plain core component, compiled once."""

    def __init__(self, path: str):
        self.engine = Engine()
        self.component = Component.from_file(self.engine, path)

    def instance(self, storage: Storage, external: Optional[ScriptedExternal] = None,
                 clock: Optional[Callable[[], int]] = None) -> "Instance":
        """A fresh instance whose imports call `storage`, `external` and
        `clock` (default: the wall clock)."""
        return Instance(self, storage, external or ScriptedExternal(),
                        clock or (lambda: int(time.time() * 1000)))


TX = 1  # our id of the `transaction` resource type


def _record(**members: Any) -> Record:
    r = Record()
    for k, v in members.items():
        setattr(r, k.replace("_", "-"), v)
    return r


def request_record(request: dict) -> Record:
    """The executor's `request` record of a request in the traces' form: a
    dict with `tool`, `input` (JSON text), `id`, and optionally `auth`
    ({`sub`, `roles`, `claims` as JSON text}), `idempotencyKey` and
    `scheduled`."""
    auth = request.get("auth")
    caller = None if auth is None else _record(
        sub=auth["sub"], roles=list(auth["roles"]), claims=auth.get("claims") or "{}")
    return _record(tool=request["tool"], input=request["input"], auth=caller, id=request["id"],
                   idempotency_key=request.get("idempotencyKey"),
                   scheduled=request.get("scheduled"))


def export(store: Store, inst: Any, interface: str, name: str) -> Callable:
    """A function of an exported interface of `inst` (`sinew:executor/…`),
    called as f(arg, …), its `post_return` done; a trap (or an exception a
    host function raised) is raised as `Trap`."""
    parent = inst.get_export_index(store, f"{PACKAGE}/{interface}@{VERSION}")
    f = inst.get_func(store, inst.get_export_index(store, name, parent))

    def call(*args: Any) -> Any:
        try:
            out = f(store, *args)
        except Exception as e:
            raise Trap(str(e)) from e
        f.post_return(store)
        return out
    return call


class Instance:
    """One instance of the core, its imports linked to `storage`, `external`
    and `clock`. Not reentrant; one call at a time."""

    def __init__(self, sinew: Sinew, storage: Storage, external: ScriptedExternal,
                 clock: Callable[[], int]):
        self.storage, self.external, self.clock = storage, external, clock
        self.store = Store(sinew.engine)
        linker = Linker(sinew.engine)
        with linker.root() as root:
            with root.add_instance(f"{PACKAGE}/types@{VERSION}"):
                pass
            with root.add_instance(f"{PACKAGE}/clock@{VERSION}") as c:
                c.add_func("now-ms", lambda _s: self.clock())
            with root.add_instance(f"{PACKAGE}/storage@{VERSION}") as st:
                self._link_storage(st)
            with root.add_instance(f"{PACKAGE}/external@{VERSION}") as ext:
                ext.add_func("call", self._call)
        self.inst = linker.instantiate(self.store, sinew.component)
        self._load = export(self.store, self.inst, "executor", "load")
        self._execute = export(self.store, self.inst, "executor", "execute")
        self._complete_row = export(self.store, self.inst, "executor", "complete-row")
        self._analyze = export(self.store, self.inst, "risk", "analyze")

    # -- exports ---------------------------------------------------------------

    def load(self, spec: str) -> Record:
        """The `bundle-info`; raises ValueError with the `error` record's text."""
        r = self._load(spec)
        if r.tag == "err":
            raise ValueError(f"{r.payload.code}: {r.payload.message} ({r.payload.pointer})")
        return r.payload

    def execute(self, request: dict) -> Record:
        """Runs one request: a dict with `tool`, `input` (JSON text), `id`,
        and optionally `auth` ({`sub`, `roles`, `claims` as JSON text}),
        `idempotencyKey` and `scheduled` (the traces' form). Returns the
        `response` record (`status`, `body`, `audit`); raises ValueError on
        an `error`, Trap on a trap."""
        r = self._execute(request_record(request))
        if r.tag == "err":
            raise ValueError(f"{r.payload.code}: {r.payload.message}")
        return r.payload

    def complete_row(self, entity: str, row: str, now_ms: int) -> str:
        r = self._complete_row(entity, row, now_ms)
        if isinstance(r, Record):
            raise ValueError(f"{r.code}: {r.message}")
        return r

    def analyze(self, spec: str) -> str:
        return self._analyze(spec)

    # -- imports ---------------------------------------------------------------

    def _call(self, _store: Any, req: Record) -> Record:
        tag, value, attempts = self.external.call(req.service, req.operation,
                                                  getattr(req, "max-attempts"))
        payload = value if tag == "failed" else json_text(value)
        return _record(outcome=Variant(tag, payload),
                       attempts=[_record(status=s, error=e, duration_ms=0) for s, e in attempts])

    def _link_storage(self, st: Any) -> None:
        db = self.storage

        def rep(store: Any, handle: Any) -> int:
            return handle.to_host(store).rep

        def typed(f: Callable) -> Callable:
            """A host function whose StorageError becomes the `err` case."""
            def run(*args: Any) -> Any:
                try:
                    return f(*args)
                except StorageError as e:
                    return e.variant()
            return run

        def rows_out(rows: list[dict]) -> bytes:
            return encode_rows(rows)

        def counted(rows_total: tuple[list[dict], int]) -> Record:
            return _record(rows=encode_rows(rows_total[0]), total=rows_total[1])

        def row_in(b: bytes) -> dict:
            try:
                return decode_row(b)
            except WireError as e:
                raise invalid(f"the guest sent a row that cannot be decoded: {e}") from None

        def rows_in(b: bytes) -> list[dict]:
            try:
                return decode_rows(b)
            except WireError as e:
                raise invalid(f"the guest sent rows that cannot be decoded: {e}") from None

        def claim(scope: str, key: str, fp: str, now: int) -> Variant:
            # result<claim, storage-error>: both cases are Variants, so
            # wasmtime-py wants the result tagged as well.
            try:
                c = db.claim_key(scope, key, fp, now)
            except StorageError as e:
                return Variant("err", e.variant())
            if isinstance(c, Stored):
                return Variant("ok", Variant("replay", _record(status=c.status, body=c.body)))
            return Variant("ok", Variant(c))

        st.add_resource("transaction", ResourceType.host(TX), lambda _s, r: db.drop(r))
        st.add_func("begin", typed(lambda _s, lvl: ResourceHost.own(db.begin(lvl), TX)))
        st.add_func("read", typed(lambda _s, e, q: rows_out(db.read(None, e, query(q)))))
        st.add_func("read-counted", typed(lambda _s, e, q: counted(db.read_counted(None, e, query(q)))))
        st.add_func("aggregate", typed(lambda _s, e, f, g, m: rows_out(
            db.aggregate(None, e, predicates(f), list(g), measures(m)))))
        st.add_func("append-audit", typed(lambda _s, entry: db.append_audit(None, entry)))
        st.add_func("claim-key", lambda _s, scope, key, fp, now: claim(scope, key, fp, now))
        st.add_func("complete-key", typed(lambda _s, sc, k, status, body: db.complete_key(None, sc, k, status, body)))
        st.add_func("release-key", typed(lambda _s, sc, k: db.release_key(sc, k)))
        st.add_func("rate-hit", typed(lambda _s, sc, w: db.rate_hit(sc, w)))

        m = "[method]transaction."
        st.add_func(m + "read", typed(lambda s, t, e, q: rows_out(db.read(rep(s, t), e, query(q)))))
        st.add_func(m + "read-counted", typed(lambda s, t, e, q: counted(db.read_counted(rep(s, t), e, query(q)))))
        st.add_func(m + "aggregate", typed(lambda s, t, e, f, g, ms: rows_out(
            db.aggregate(rep(s, t), e, predicates(f), list(g), measures(ms)))))
        st.add_func(m + "insert", typed(lambda s, t, e, r: encode_row(db.insert(rep(s, t), e, row_in(r)))))
        st.add_func(m + "insert-many", typed(lambda s, t, e, r: rows_out(db.insert_many(rep(s, t), e, rows_in(r)))))
        st.add_func(m + "update", typed(lambda s, t, e, i, v, c: encode_row(
            db.update(rep(s, t), e, i, v, row_in(c)))))
        st.add_func(m + "update-where", typed(lambda s, t, e, q, c: rows_out(
            db.update_where(rep(s, t), e, query(q), row_in(c)))))
        st.add_func(m + "update-many", typed(lambda s, t, e, ids, vs, c: rows_out(
            db.update_many(rep(s, t), e, list(ids), list(vs), rows_in(c)))))
        st.add_func(m + "soft-delete", typed(lambda s, t, e, i, v, at: encode_row(
            db.soft_delete(rep(s, t), e, i, v, at))))
        st.add_func(m + "append-audit", typed(lambda s, t, entry: db.append_audit(rep(s, t), entry)))
        st.add_func(m + "enqueue", typed(lambda s, t, msg: db.enqueue(rep(s, t), msg)))
        st.add_func(m + "complete-key", typed(lambda s, t, sc, k, status, body: db.complete_key(
            rep(s, t), sc, k, status, body)))
        st.add_func(m + "savepoint", typed(lambda s, t, lvl: ResourceHost.own(db.savepoint(rep(s, t), lvl), TX)))
        st.add_func(m + "commit", typed(lambda s, t: db.commit(rep(s, t))))
        st.add_func(m + "rollback", typed(lambda s, t: db.rollback(rep(s, t))))


def difference(what: str, expected: str, actual: Any) -> Optional[str]:
    """Where two texts first differ, with some context, or None."""
    if expected == actual:
        return None
    if not isinstance(actual, str):
        return f"{what}: expected text, got {actual!r}"
    at = 0
    while at < len(expected) and at < len(actual) and expected[at] == actual[at]:
        at += 1
    lo = max(0, at - 60)
    return (f"{what} differs at character {at}: expected ...{expected[lo:at + 60]!r}..., "
            f"got ...{actual[lo:at + 60]!r}...")


def response_difference(here: str, want: dict, got: Any) -> Optional[str]:
    """Where a `response` record (`status`, `body`, `audit`) differs from a
    trace's expected response, texts byte for byte, or None."""
    if got.status != want["status"]:
        return f"{here}: status {got.status} instead of {want['status']}: {got.body}"
    return (difference(f"{here}: the body", want["body"], got.body)
            or difference(f"{here}: the audit entry", want["audit"], got.audit))
