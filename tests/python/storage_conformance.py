#!/usr/bin/env python3
"""The scenario corpus on the plain core component, with a storage in Python.

    python run.py DIR [--store memory|sqlite|MODULE:CLASS] [NAME…]

The runner of sinew's conformance kit (`python/run.py` in a kit written by
`cargo run -p sinew-tests --bin conformance-kit -- DIR`;
`tests/python/storage_conformance.py` in sinew's repository). DIR is the
kit: `sinew.wasm` (the plain core: it imports `storage`, `clock` and
`external`), `traces/*.json` (each scenario as the native engine ran it on
the Rust in-memory store) and `risk/*.json`. `--store MODULE:CLASS` runs a
`sinew_embed.Storage` of your own (imported from the working directory or
PYTHONPATH) that also has `state()` (the store's state in the form of the
traces' `expected.state`, without `externals`) and `open_transactions()`,
as `store_memory.MemoryStore` has.

Unlike conformance.py, which runs the composed component (whose storage is
the Rust in-memory store inside it), this links the component's imports to
a store written in Python from docs/embedding.md and wit/*.wit:
store_memory.py (pure Python) or store_sqlite.py (Python's sqlite3). For
every trace, on a fresh store and a fresh instance: the spec's unique and
timestamp fields are declared, the seed rows inserted as committed, the
externals script loaded; each request runs at its `at` clock and its
response (status, body, audit entry) must equal the native one byte for
byte, with no transaction left open; then the final state (rows of every
entity with soft-deleted ones, in id order; the audit chain with `seq`,
`prev` and `hash`; outbox; idempotency keys; rate windows; the declared
unique and timestamp fields; the externals' remaining script and counters)
must equal the native state as parsed JSON (types, values and member
order). Then every risk report, through the plain component's `analyze`.

Output (as conformance.py's): `ok <name>` / `FAIL <name>: ...` per
scenario, `N scenarios passed` or `K of N scenarios failed`, `M risk
reports identical`, `X passed, Y failed`, then the store and the wall
time; exit 1 on a failure. Names after DIR run only those scenarios (and
no risk report).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sinew_embed import (ScriptedExternal, Schema, Sinew, Trap, difference, kind,  # noqa: E402
                         parse_json, response_difference)
from store_memory import MemoryStore  # noqa: E402


def store_class(which: str) -> Any:
    """`memory`, `sqlite`, or `MODULE:CLASS`: a `sinew_embed.Storage` of
    your own, imported from the current directory or PYTHONPATH."""
    if which == "memory":
        return MemoryStore
    if which == "sqlite":
        from store_sqlite import SqliteStore
        return SqliteStore
    module, sep, name = which.partition(":")
    if not sep or not module or not name:
        raise SystemExit(f"--store: `{which}` is neither memory, sqlite nor MODULE:CLASS")
    import importlib
    sys.path.insert(0, os.getcwd())
    return getattr(importlib.import_module(module), name)


def same(expected: Any, actual: Any, path: str = "") -> Optional[str]:
    """The first place two JSON values differ (type, value, member order)."""
    if kind(expected) != kind(actual) or isinstance(expected, float) != isinstance(actual, float):
        return f"{path or '/'}: expected {json.dumps(expected)[:200]}, got {json.dumps(actual)[:200]}"
    if isinstance(expected, dict):
        if list(expected) != list(actual):
            return f"{path or '/'}: expected members {list(expected)}, got {list(actual)}"
        for k in expected:
            d = same(expected[k], actual[k], f"{path}/{k}")
            if d:
                return d
        return None
    if isinstance(expected, list):
        if len(expected) != len(actual):
            return f"{path or '/'}: expected {len(expected)} items, got {len(actual)}"
        for i, (x, y) in enumerate(zip(expected, actual)):
            d = same(x, y, f"{path}/{i}")
            if d:
                return d
        return None
    if expected != actual:
        return f"{path or '/'}: expected {expected!r}, got {actual!r}"
    return None


class Clock:
    def __init__(self) -> None:
        self.ms = 0

    def __call__(self) -> int:
        return self.ms


def run_trace(sinew: Sinew, make: Any, trace: dict) -> Optional[str]:
    """None when the trace comes out identical, else what differs."""
    clock = Clock()
    clock.ms = trace["clock"]
    store = make()
    store.declare(Schema.from_spec(trace["spec"]))
    external = ScriptedExternal(parse_json(trace["state"]).get("externals", {}))
    try:
        inst = sinew.instance(store, external, clock)
        inst.load(trace["spec"])
        for s in trace["seed"]:
            store.seed(s["entity"], parse_json(s["row"]))
        expected = trace["expected"]["responses"]
        if len(expected) != len(trace["requests"]):
            return "the trace's requests and responses differ in number"
        for n, (r, want) in enumerate(zip(trace["requests"], expected), 1):
            here = f"request {n} ({r['tool']})"
            clock.ms = r["at"]
            try:
                got = inst.execute(r)
            except Trap as e:
                return f"{here}: the instance trapped: {e}"
            except ValueError as e:
                return f"{here}: error {e}"
            d = response_difference(here, want, got)
            if d:
                return d
            if store.open_transactions():
                return f"{here} left {store.open_transactions()} transactions open"
        state = store.state()
        state["externals"] = external.to_json()
        d = same(parse_json(trace["expected"]["state"]), state)
        return f"the final state differs at {d}" if d else None
    finally:
        close = getattr(store, "close", None)
        if close:
            close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--store", default="memory",
                    help="memory, sqlite, or MODULE:CLASS (a sinew_embed.Storage of your own)")
    ap.add_argument("names", nargs="*", help="run only these scenarios")
    args = ap.parse_intermixed_args()
    started = time.monotonic()
    make = store_class(args.store)
    sinew = Sinew(os.path.join(args.dir, "sinew.wasm"))
    tdir = os.path.join(args.dir, "traces")
    files = sorted(f for f in os.listdir(tdir) if f.endswith(".json"))
    if args.names:
        files = [f for f in files if f[:-5] in args.names]
    if not files:
        print("no traces", file=sys.stderr)
        return 2
    ran = bad = 0
    for f in files:
        name = f[:-5]
        with open(os.path.join(tdir, f), encoding="utf-8") as fh:
            trace = json.load(fh)
        try:
            problem = run_trace(sinew, make, trace)
        except Exception:  # a bug of the store or the driver: report, go on
            problem = "crashed:\n" + traceback.format_exc()
        ran += 1
        if problem is None:
            print(f"ok {name}")
        else:
            bad += 1
            print(f"FAIL {name}: {problem}")
    print(f"{ran} scenarios passed" if bad == 0 else f"{bad} of {ran} scenarios failed")
    passed, failed = ran - bad, bad
    if not args.names:
        rdir = os.path.join(args.dir, "risk")
        risks = sorted(f for f in os.listdir(rdir) if f.endswith(".json"))
        inst = sinew.instance(MemoryStore())
        same_reports = 0
        for f in risks:
            with open(os.path.join(rdir, f), encoding="utf-8") as fh:
                doc = json.load(fh)
            d = difference("the report", doc["report"], inst.analyze(doc["spec"]))
            if d is None:
                same_reports += 1
                passed += 1
            else:
                failed += 1
                print(f"FAIL risk {f[:-5]}: {d}")
        print(f"{same_reports} risk reports identical" if same_reports == len(risks)
              else f"{same_reports} of {len(risks)} risk reports identical")
    print(f"{passed} passed, {failed} failed")
    print(f"store {args.store}: {time.monotonic() - started:.1f} s")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
