#!/usr/bin/env python3
"""Conformance of sinew's composed WebAssembly component under Python.

    python tests/python/conformance.py DIR

DIR is what `cargo test -p sinew-tests --test python` (tests/python.rs)
writes, the same as for Node (tests/node/conformance.mjs): the composed
component (the core on the in-memory world; it imports only the clock),
traces/*.json (scenarios as the native engine ran them) and risk/*.json
(specs with the native risk report). With wasmtime-py's
`wasmtime.component` API (PyPI `wasmtime`), every trace runs on a fresh
instance and every response (status, body, audit entry) and the final
state are compared with the native ones byte for byte, then every risk
report. It parses none of the component's JSON.

Output: `ok <name>` / `FAIL <name>: ...` per scenario, `N scenarios passed`,
`M risk reports identical`, `X passed, Y failed`; exit 1 on a failure.
"""

import json
import os
import sys
import traceback

from wasmtime import Engine, Store
from wasmtime.component import Component, Linker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sinew_embed import (PACKAGE, VERSION, difference, export, request_record,  # noqa: E402
                         response_difference)


class Core:
    """The composed component, compiled once; `instance()` makes a fresh one."""

    def __init__(self, path):
        self.engine = Engine()
        self.component = Component.from_file(self.engine, path)
        self.clock_ms = 0
        self.linker = Linker(self.engine)
        with self.linker.root() as root:
            with root.add_instance(f"{PACKAGE}/clock@{VERSION}") as clock:
                clock.add_func("now-ms", lambda store: self.clock_ms)

    def instance(self):
        """A fresh instance: `f(interface, name)` gives one of its exports."""
        store = Store(self.engine)
        inst = self.linker.instantiate(store, self.component)
        return lambda interface, name: export(store, inst, interface, name)


def ok(value, what):
    """The `ok` value of a `result` whose cases are both records: wasmtime-py
    gives `Variant('ok' | 'err', …)`."""
    if value.tag == "err":
        e = value.payload
        raise RuntimeError(f"{what}: {e.code}: {e.message} ({e.pointer})")
    return value.payload


def done(value, what):
    """A `result<_, string>` (the `memory` functions): wasmtime-py gives
    None, or the error's sentence as it is."""
    if value is not None:
        raise RuntimeError(f"{what}: {value}")


def run_trace(core, trace):
    core.clock_ms = trace["clock"]
    func = core.instance()
    load, execute = func("executor", "load"), func("executor", "execute")
    reset, declare, seed = (func("memory", n) for n in ("reset", "declare", "seed"))
    state, open_txs = func("memory", "state"), func("memory", "open-transactions")
    try:
        ok(load(trace["spec"]), "load")
        done(reset(trace["state"]), "reset")
        done(declare(trace["spec"]), "declare")
        for s in trace["seed"]:
            done(seed(s["entity"], s["row"]), f"seed `{s['entity']}`")
    except RuntimeError as e:
        return str(e)
    expected = trace["expected"]["responses"]
    if len(expected) != len(trace["requests"]):
        return "the trace's requests and responses differ in number"
    for n, (request, want) in enumerate(zip(trace["requests"], expected), 1):
        here = f"request {n} ({request['tool']})"
        core.clock_ms = request["at"]
        try:
            r = ok(execute(request_record(request)), here)
        except RuntimeError as e:
            return str(e)
        d = response_difference(here, want, r)
        if d:
            return d
        left = open_txs()
        if left != 0:
            return f"{here} left {left} transactions open"
    return difference("the final state", trace["expected"]["state"], state())


def main():
    if len(sys.argv) != 2:
        print("usage: conformance.py DIR", file=sys.stderr)
        return 2
    d = sys.argv[1]
    core = Core(os.path.join(d, "sinew.composed.wasm"))
    passed = failed = 0
    traces = sorted(f for f in os.listdir(os.path.join(d, "traces")) if f.endswith(".json"))
    if not traces:
        print("no traces", file=sys.stderr)
        return 2
    bad = 0
    for f in traces:
        with open(os.path.join(d, "traces", f), encoding="utf-8") as fh:
            trace = json.load(fh)
        name = trace.get("name", f[:-5])
        try:
            problem = run_trace(core, trace)
        except Exception:  # a trap, a conversion error: report, go on
            problem = "crashed:\n" + traceback.format_exc()
        if problem is None:
            print(f"ok {name}")
            passed += 1
        else:
            print(f"FAIL {name}: {problem}")
            failed += 1
            bad += 1
    print(f"{len(traces)} scenarios passed" if bad == 0 else f"{bad} of {len(traces)} scenarios failed")
    risks = sorted(f for f in os.listdir(os.path.join(d, "risk")) if f.endswith(".json"))
    analyze = core.instance()("risk", "analyze")
    same = 0
    for f in risks:
        with open(os.path.join(d, "risk", f), encoding="utf-8") as fh:
            doc = json.load(fh)
        dif = difference("the report", doc["report"], analyze(doc["spec"]))
        if dif is None:
            same += 1
            passed += 1
        else:
            print(f"FAIL risk {f[:-5]}: {dif}")
            failed += 1
    print(f"{same} risk reports identical" if same == len(risks) else f"{same} of {len(risks)} risk reports identical")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
