#!/usr/bin/env python3
"""Where a component's instructions go, from a callgrind profile.

Usage: callgrind_categories.py CALLGRIND_OUT PERF_MAP REQUESTS [--top N]

CALLGRIND_OUT comes from `sinew-bench count component ...` under
`valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*'`
with SINEW_WASM_ALLOCATOR=on-demand and SINEW_WASM_PROFILER=perfmap (a
component built with SINEW_COMPONENT_PROFILE=symbols names its functions);
PERF_MAP is that run's /tmp/perf-PID.map, which names the JIT addresses
callgrind cannot. Prints instructions per request by category (guest or
host, and what kind of work), or with --top N the N costliest functions.
"""
import bisect
import collections
import re
import subprocess
import sys

GUEST = [
    ("guest: allocator", r"talc|__rust_alloc|__rust_dealloc|__rust_realloc|no_alloc_shim|finish_grow|RawVec"),
    ("guest: JSON text (serde_json parse/print, fmt)", r"serde_json|core3fmt|fmt5Write|Formatter|write_all|std2io|from_ascii_radix|pad_integral|4hash9write_str|4hash10write_json|write_object|write_number"),
    ("guest: row encoding (decoding rows, encoding writes)", r"ports4wire"),
    ("guest: hashing (SipHash, SHA-256)", r"sip|sha2|hash_one|BuildHasher"),
    ("guest: maps (indexmap, hashbrown)", r"indexmap|hashbrown"),
    ("guest: copies, compares, clones, drops", r"memcmp|bcmp|memcpy|memmove|memset|memory_copy|memory_fill|Clone|clone|drop_in_place"),
    ("guest: the interpreter and the rest", r"."),
]
HOST = [
    ("host: allocator (mimalloc)", r"mi_|_mi_"),
    ("host: JSON text", r"serde_json|fmt|Formatter|write_str|write_json|from_ascii"),
    ("host: row encoding", r"ports::wire"),
    ("host: hashing (audit chain SHA-256, SipHash)", r"sha2|sip|hash"),
    ("host: maps", r"indexmap|hashbrown"),
    ("host: copies, compares, clones, drops", r"memcmp|memcpy|memmove|memset|clone|Clone|drop_in_place"),
    ("host: wasmtime (calls, trampolines, libcalls)", r"wasmtime|cranelift|trampoline"),
    ("host: the store and the rest", r"."),
]


def main():
    out_file, perf_map, per = sys.argv[1], sys.argv[2], int(sys.argv[3])
    top = int(sys.argv[5]) if len(sys.argv) > 5 and sys.argv[4] == "--top" else None
    jit = []
    for line in open(perf_map):
        parts = line.rstrip("\n").split(" ", 2)
        if len(parts) == 3:
            jit.append((int(parts[0], 16), int(parts[1], 16), parts[2]))
    jit.sort()
    starts = [j[0] for j in jit]
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", out_file],
        capture_output=True, text=True, check=True,
    ).stdout
    by_category, by_function, total = collections.Counter(), collections.Counter(), 0
    for line in text.split("\n"):
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        n, name = int(m.group(1).replace(",", "")), m.group(2)
        rules = HOST
        address = re.match(r"\?\?\?:0x([0-9a-f]+)", name)
        if address:
            a = int(address.group(1), 16)
            i = bisect.bisect_right(starts, a) - 1
            name = jit[i][2] if i >= 0 and a < jit[i][0] + jit[i][1] else "? (JIT)"
            rules = GUEST
            if "wasmtime_builtin" in name or "trampoline" in name:
                rules = [("host: wasmtime (calls, trampolines, libcalls)", r".")]
        for category, pattern in rules:
            if re.search(pattern, name):
                by_category[category] += n
                break
        by_function[name] += n
        total += n
    if top:
        for name, n in by_function.most_common(top):
            print(f"{n / per / 1000:9,.1f} k  {100 * n / total:4.1f}%  {name[:140]}")
        return
    print("| where | per request | share |\n|---|---:|---:|")
    for category, n in by_category.most_common():
        print(f"| {category} | {n / per / 1000:,.0f} k | {100 * n / total:.0f}% |")
    print(f"| total | {total / per / 1000:,.0f} k | |")


if __name__ == "__main__":
    main()
