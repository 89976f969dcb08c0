"""A minimal embedding of sinew's core in Python, with wasmtime-py.

The core composed onto the in-memory world (`sinew component --composed`),
whose only import is the clock. It judges a spec, loads it, seeds one row
and runs one call. With `pip install wasmtime==51.0.0`:

    sinew component --composed --out sinew.composed.wasm
    python embed.py sinew.composed.wasm specs/examples/shop.json
"""

import sys

from wasmtime import Engine, Store
from wasmtime.component import Component, Linker, Record, Variant

WIT = "sinew:executor/{}@0.4.0"

component_path, spec_path = sys.argv[1:3]
with open(spec_path, encoding="utf-8") as f:
    spec = f.read()

engine = Engine()
component = Component.from_file(engine, component_path)
linker = Linker(engine)
# 2026-01-01T00:00:00Z: the clock every call of this example reads.
NOW = 1767225600000
with linker.root() as root:
    with root.add_instance(WIT.format("clock")) as clock:
        clock.add_func("now-ms", lambda store: NOW)
store = Store(engine)
instance = linker.instantiate(store, component)


def export(interface, name):
    """A function of an exported interface, called as f(arg, ...)."""
    parent = instance.get_export_index(store, WIT.format(interface))
    func = instance.get_func(store, instance.get_export_index(store, name, parent))

    def call(*args):
        result = func(store, *args)
        func.post_return(store)
        return result
    return call


def ok(result):
    """The `ok` value of a `result`; its `err` raised. wasmtime-py gives a
    result whose two cases are both records as `Variant('ok' | 'err', …)`
    (`load`, `execute`), one whose cases differ in type as the bare value
    of either: `complete-row` gives the row's text or the error record."""
    if isinstance(result, Variant):
        if result.tag == "err":
            raise RuntimeError(result.payload.message)
        return result.payload
    if isinstance(result, Record):
        raise RuntimeError(result.message)
    return result


def done(result):
    """A `result<_, string>` (`declare`, `seed`): None, or the error's text."""
    if result is not None:
        raise RuntimeError(result)


# Judge the spec: the JSON of `sinew check --format json`.
report = export("risk", "analyze")(spec)
print(f"report {len(report.encode())} bytes")

# Load it, and tell the in-memory store its unique and timestamp fields.
info = ok(export("executor", "load")(spec))
done(export("memory", "declare")(spec))
print(f"loaded {info.name} {info.hash} ({len(info.tools)} tools)")

# One seed row, completed as the spec defines it, inserted as committed.
row = '{"id": "00000000-0000-4000-8000-000000000001", "sku": "pen", "name": "Pen", "price_cents": 150, "stock": 4}'
row = ok(export("executor", "complete-row")("Product", row, NOW))
done(export("memory", "seed")("Product", row))

# One call, through the nine steps of the contract. Records are built
# field by field (names as in the WIT).
caller = Record()
caller.sub, caller.roles, caller.claims = "ann", ["customer"], '{"sub": "ann"}'
request = Record()
for name, value in [("tool", "list_products"), ("input", "{}"), ("auth", caller),
                    ("id", "req-1"), ("idempotency-key", None), ("scheduled", None)]:
    setattr(request, name, value)
response = ok(export("executor", "execute")(request))
print(f"{response.status} {response.body}")
# The audit chain as the store keeps it (with `seq`, `prev`, `hash`).
print(f"audit {export('memory', 'audit')(0)}")
