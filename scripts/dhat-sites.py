#!/usr/bin/env python3
"""Bytes per waiter by allocation site, from two DHAT runs (scripts/waiter-heap.sh).

    dhat-sites.py DHAT_N1.json N1 DHAT_N2.json N2 [--frames K]

Each allocation stack is attributed to its site: the first frame, from the
allocation upwards, that is not the allocator or a generic container
(alloc::, core::, std::, hashbrown, bytes, slab, ...). The bytes and blocks
live at the heap's peak (t-gmax) are summed per site in each run, and the
difference between the runs divided by N2 - N1 is printed: what one more
waiter holds at that site. Sites under 8 bytes per waiter are summed in one
line. --frames K also prints the K frames above each site.
"""

import json
import re
import sys
from collections import defaultdict

# Frames that name the allocator or a container, not who asked for memory.
GENERIC = re.compile(
    r"^(\[root\]|malloc|calloc|realloc|free|posix_memalign|aligned_alloc|memalign|"
    r"__rust_|__rdl_|__rg_|_?rjem_|alloc::|<alloc::|core::|<core::|std::|<std::|"
    r"hashbrown::|<hashbrown::|bytes::|<bytes::|slab::|<slab::|indexmap::|<indexmap::|"
    r"smallvec::|<smallvec::|__rustc::|\?\?\?)"
)
FRAME = re.compile(r"^0x[0-9A-Fa-f]+: (.*?)(?: \((?:in )?([^()]*)\))?$")


def shorten(name, keep=1):
    """Generic arguments nested deeper than `keep` become `..`."""
    out, depth = [], 0
    for ch in name:
        if ch == "<":
            depth += 1
            if depth == keep + 1:
                out.append("..")
            if depth > keep:
                continue
        elif ch == ">":
            depth -= 1
            if depth >= keep:
                continue
        elif depth > keep:
            continue
        out.append(ch)
    return "".join(out)


def parse(frame):
    match = FRAME.match(frame)
    if not match:
        return frame, ""
    # Legacy Rust symbols keep a hash: drop it.
    return re.sub(r"::h[0-9a-f]{16}$", "", match.group(1)), match.group(2) or ""


def label(name, where):
    if name == "UnknownInlinedFun" or "::" not in name:
        return f"{shorten(name)} ({where})"
    return shorten(name)


# Inlined frames are named without their path (`alloc`, `insert<T>`); they
# count as a site only as `UnknownInlinedFun` in a file that is not an
# allocator's.
ALLOCATOR_FILES = re.compile(r"^(library/|.*vgpreload|unix\.rs|src/alloc\.rs|src/raw/)")


def qualifies(name, where):
    if ALLOCATOR_FILES.match(where) or GENERIC.match(name):
        return False
    if name == "UnknownInlinedFun":
        return True
    return "::" in shorten(name, 0)


def site_of(frames, depth):
    """The first frame outside the allocator, the standard library and
    generic containers, and what the standard library was asked for (a Box
    of which type)."""
    boxed = ""
    parsed = [parse(f) for f in frames]
    for i, (name, where) in enumerate(parsed):
        if where.startswith("library/alloc/src/boxed.rs") and name.startswith("new<"):
            boxed = "Box<" + shorten(name[4:-1], 0 if len(name) > 120 else 1) + "> in "
        if not qualifies(name, where):
            continue
        above = [label(n, w) for n, w in parsed[i + 1 : i + 1 + depth]]
        return boxed + label(name, where), above
    return "[unknown]", []


def load(path, depth):
    with open(path) as f:
        data = json.load(f)
    table = data["ftbl"]
    sites = defaultdict(lambda: [0, 0])
    context = {}
    for pp in data["pps"]:
        frames = [table[i] for i in pp["fs"]]
        site, above = site_of(frames, depth)
        sites[site][0] += pp.get("gb", 0)
        sites[site][1] += pp.get("gbk", 0)
        context.setdefault(site, above)
    total = sum(v[0] for v in sites.values())
    return sites, context, total


def main(argv):
    depth = 0
    if "--frames" in argv:
        i = argv.index("--frames")
        depth = int(argv[i + 1])
        del argv[i : i + 2]
    if len(argv) != 4:
        sys.exit(__doc__)
    path1, n1, path2, n2 = argv[0], int(argv[1]), argv[2], int(argv[3])
    if n2 <= n1:
        sys.exit("N2 must be larger than N1")
    sites1, _, total1 = load(path1, depth)
    sites2, context, total2 = load(path2, depth)
    n = n2 - n1
    rows = []
    for site in set(sites1) | set(sites2):
        b1, k1 = sites1.get(site, [0, 0])
        b2, k2 = sites2.get(site, [0, 0])
        rows.append(((b2 - b1) / n, (k2 - k1) / n, site))
    rows.sort(reverse=True)
    print(f"heap live at the peak: {total1} B with {n1} waiters, {total2} B with {n2}")
    print(f"per waiter: {(total2 - total1) / n:.0f} B\n")
    print(f"{'B/waiter':>9} {'blocks':>7}  site")
    small_bytes, small_sites = 0.0, 0
    for per, blocks, site in rows:
        if abs(per) < 8:
            small_bytes += per
            small_sites += 1
            continue
        print(f"{per:9.1f} {blocks:7.2f}  {site}")
        for name in context.get(site, []):
            print(f"{'':19}{name}")
    print(f"{small_bytes:9.1f} {'':7}  ({small_sites} sites under 8 B each)")


if __name__ == "__main__":
    main(sys.argv[1:])
