"""How long synapse_topology takes for 10, 100 and 1,000 workers.

Prints figures, asserts nothing: run it with
    .venv/bin/python tests/bench/topology_bench.py [--repeat N]
Each size is timed REPEAT times in one process after a warm-up call; the
minimum and median are printed. Goal: 1,000 workers in well under 100 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conftest  # noqa: E402,F401  (makes the collection importable)

from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (  # noqa: E402
    build_topology,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_catalogue import (  # noqa: E402
    WORKER_TYPES,
)

HOSTS = {f"app{i}": f"10.0.{i // 250}.{i % 250 + 1}" for i in range(1, 9)}
SHARDABLE = sorted(name for name, t in WORKER_TYPES.items() if t.shardable and not t.same_host)


def worker_list(size):
    """`size` instances over eight hosts: every shardable type, ten instances an entry."""
    entries, made = [], 0
    while made < size:
        count = min(10, size - made)
        worker_type = SHARDABLE[len(entries) % len(SHARDABLE)]
        entries.append(
            {"name": f"w{len(entries)}", "types": [worker_type], "count": count, "hosts": sorted(HOSTS)}
        )
        made += count
    return entries


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"synapse_topology, {args.repeat} runs per size (seconds per call)")
    print(f"{'workers':>8} {'min':>10} {'median':>10} {'routes':>7}")
    for size in (10, 100, 1000):
        workers = worker_list(size)
        options = {"hosts": HOSTS, "main_host": "app1"}
        topo = build_topology(workers, **options)  # warm-up, and a sanity check
        assert len(topo["workers"]) == size
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            build_topology(workers, **options)
            times.append(time.perf_counter() - start)
        print(f"{size:>8} {min(times):>10.5f} {statistics.median(times):>10.5f} {len(topo['nginx']['routes']):>7}")


if __name__ == "__main__":
    main()
