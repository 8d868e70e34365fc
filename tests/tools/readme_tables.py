"""Generate the README's worker-type and preset tables from the catalogue.

    .venv/bin/python tests/tools/readme_tables.py          # rewrite README.md
    .venv/bin/python tests/tools/readme_tables.py --check  # exit 1 if it is stale

A unit test runs the check, so the tables cannot drift from the catalogue.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import conftest  # noqa: E402,F401  (makes the collection importable)

from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_catalogue import (  # noqa: E402
    BALANCE_METHODS,
    ROUTE_PRIORITY,
    WORKER_TYPES,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_presets import (  # noqa: E402
    PRESETS,
)

README = conftest.ROOT / "README.md"
MARKERS = {
    "worker-types": "worker_types_table",
    "presets": "presets_table",
}


def _code(values):
    return ", ".join(f"`{v}`" for v in values) or "–"


def worker_types_table():
    lines = [
        "| type | what it does | serves (balancing) | writes streams | sets in homeserver.yaml | instances |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ROUTE_PRIORITY:
        t = WORKER_TYPES[name]
        serves = "<br>".join(
            f"{g.title}: {len(g.patterns)} path{'s' if len(g.patterns) != 1 else ''} ({g.balance})" for g in t.endpoints
        ) or "–"
        settings = [*t.instance_lists, *t.duties, *t.shared_settings]
        instances = "many" if t.shardable else "one"
        if t.same_host:
            instances += ", one host"
        lines.append(
            f"| `{name}` | {t.summary} | {serves} | {_code(t.streams)} | {_code(settings)} | {instances} |"
        )
    lines.append("")
    lines.append("Balancing: " + "; ".join(f"`{k}`: {v}" for k, v in BALANCE_METHODS.items()) + ".")
    return "\n".join(lines)


def presets_table():
    lines = ["| preset | layout | workers (× count) | follows |", "| --- | --- | --- | --- |"]
    for preset in PRESETS.values():
        workers = ", ".join(
            f"`{w['name']}`" + (f" ×{w['count']}" if w.get("count", 1) != 1 else "") for w in preset.workers
        ) or "none"
        follows = preset.source + (f" {preset.notes}" if preset.notes else "")
        lines.append(f"| `{preset.name}` | {preset.summary} | {workers} | {follows} |")
    return "\n".join(lines)


def render(text):
    for marker, function in MARKERS.items():
        begin, end = f"<!-- BEGIN {marker} (generated) -->", f"<!-- END {marker} -->"
        head, found, rest = text.partition(begin)
        if not found:
            raise SystemExit(f"README.md lacks the marker {begin}")
        _, found, tail = rest.partition(end)
        if not found:
            raise SystemExit(f"README.md lacks the marker {end}")
        text = f"{head}{begin}\n{globals()[function]()}\n{end}{tail}"
    return text


def main():
    current = README.read_text()
    wanted = render(current)
    if "--check" in sys.argv[1:]:
        if current != wanted:
            print("README.md tables are stale: run tests/tools/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
