#!/usr/bin/env python3
"""What a lab host's systemd says about some units, and when some files changed;
prints one JSON object, for a Molecule verify to compare before and after a run.

    unit_state.py [--file PATH ...] UNIT ...

{
  "now_us": the host's CLOCK_MONOTONIC now, in microseconds,
  "boot_id": the host's boot ID (a new one at every boot, also of a container),
  "userspace_us": when the host's systemd started (its UserspaceTimestampMonotonic),
  "system_state": what `systemctl is-system-running` says,
  "failed": the units systemd lists as failed,
  "units": {UNIT: {"active_state", "sub_state", "enabled", "main_pid", "restarts",
                   "started_us": ExecMainStartTimestampMonotonic (the main process's start),
                   "active_since_us": ActiveEnterTimestampMonotonic (when it last became active)}},
  "files": {PATH: {"sha256", "ctime_ns", "changed_us"}, or null when PATH does not exist}
}

Every time is on the host's monotonic clock, systemd's own, so they compare
with each other: a file's change time (its inode's ctime) is converted to it.
That conversion reads two clocks and may differ by a microsecond between two
reports; "ctime_ns" is the inode's own change time, exact, to tell whether a
file changed between them.
A time systemd never recorded is 0. Standard library only, so it runs on a
lab host (ansible.builtin.script).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

PROPERTIES = {
    "ActiveState": "active_state",
    "SubState": "sub_state",
    "UnitFileState": "enabled",
    "MainPID": "main_pid",
    "NRestarts": "restarts",
    "ExecMainStartTimestampMonotonic": "started_us",
    "ActiveEnterTimestampMonotonic": "active_since_us",
}
NUMBERS = {"main_pid", "restarts", "started_us", "active_since_us"}
TIMEOUT = 30


def systemctl(*args: str) -> str:
    res = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    return res.stdout


def parse_show(text: str, units: list[str]) -> dict[str, dict]:
    """`systemctl show --property=Id,...` of several units: blocks separated by a
    blank line, in any order; a unit systemd does not know reads as not found."""
    shown = {}
    for block in text.strip().split("\n\n"):
        values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in values:
            shown[values["Id"]] = values
    result = {}
    for unit in units:
        values = shown.get(unit, {})
        entry = {}
        for prop, key in PROPERTIES.items():
            value = values.get(prop, "")
            if key in NUMBERS:
                try:
                    entry[key] = int(value)
                except ValueError:
                    entry[key] = 0
            else:
                entry[key] = value or ("unknown" if key != "enabled" else "")
        result[unit] = entry
    return result


def file_state(path: str, now_us: int, now_epoch: float) -> dict | None:
    """A file's checksum and its change time on the monotonic clock (now_us and
    now_epoch read together: the offset between both clocks)."""
    try:
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        status = os.stat(path)
    except OSError:
        return None
    return {"sha256": digest, "ctime_ns": status.st_ctime_ns,
            "changed_us": now_us - round((now_epoch - status.st_ctime) * 1_000_000)}


def read_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--file", action="append", default=[], help="a file whose checksum and change time to report")
    parser.add_argument("units", nargs="*", metavar="UNIT")
    args = parser.parse_args(argv)
    units = list(dict.fromkeys(args.units))
    shown = systemctl("show", "--property=Id," + ",".join(PROPERTIES), "--", *units) if units else ""
    manager = systemctl("show", "--property=UserspaceTimestampMonotonic").strip().partition("=")[2]
    failed = systemctl("list-units", "--state=failed", "--plain", "--no-legend", "--full").splitlines()
    now_us, now_epoch = time.monotonic_ns() // 1000, time.time()
    print(json.dumps({
        "now_us": now_us,
        "boot_id": read_boot_id(),
        "userspace_us": int(manager) if manager.isdigit() else 0,
        "system_state": systemctl("is-system-running").strip(),
        # A failed unit's line may start with a marker ("●").
        "failed": [line.replace("\u25cf", " ").split()[0] for line in failed if line.replace("\u25cf", " ").strip()],
        "units": parse_show(shown, units),
        "files": {path: file_state(path, now_us, now_epoch) for path in args.file},
    }, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
