"""Buckets a perf.data profile of the sidecar by crate (kernel, h2, tonic,
prost, tokio, the ledger, ...) and lists the top symbols. Used by
bench/profile.sh; `python3 bench/profile_buckets.py perf.data [TOP]`."""

import collections
import re
import subprocess
import sys

BUCKETS = [
    "kernel", "h2", "hyper", "tonic/tower", "prost", "tokio", "ledger",
    "server", "telemetry", "allocator", "std/core", "libc", "other",
]


def bucket(dso: str, kind: str, sym: str) -> str:
    if kind == "k" or "kernel" in dso:
        return "kernel"
    if "rjem" in sym or "jemalloc" in sym:
        return "allocator"
    if "ledger" in sym:
        return "ledger"
    if "telemetry" in sym or "opentelemetry" in sym or "tracing" in sym:
        return "telemetry"
    if "rate_governor::server" in sym or "rate_governor::app" in sym:
        return "server"
    if "h2::" in sym:
        return "h2"
    if "hyper" in sym:
        return "hyper"
    if "tonic" in sym or "tower" in sym:
        return "tonic/tower"
    if "prost" in sym or "rate_governor_proto" in sym:
        return "prost"
    if "tokio" in sym or "mio::" in sym:
        return "tokio"
    if sym.startswith(("core::", "alloc::", "std::", "<core::", "<alloc::", "<std::")):
        return "std/core"
    if "libc" in dso or "vdso" in dso:
        return "libc"
    return "other"


def main() -> None:
    data = sys.argv[1]
    top_n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    report = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "-g", "none",
         "--sort", "dso,sym", "--stdio", "--percent-limit", "0"],
        capture_output=True, text=True, check=True,
    ).stdout
    shares = collections.OrderedDict((b, 0.0) for b in BUCKETS)
    rows = []
    samples = re.search(r"# Samples: (\S+)", report)
    for line in report.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
        rows.append((pct, dso, sym))
        shares[bucket(dso, kind, sym)] += pct
    print(f"samples: {samples.group(1) if samples else '?'}")
    print("by crate: " + ", ".join(f"{k} {v:.1f}%" for k, v in shares.items()))
    for pct, dso, sym in sorted(rows, reverse=True)[:top_n]:
        print(f"  {pct:5.2f}%  {dso[:16]:16}  {sym[:120]}")


if __name__ == "__main__":
    main()
