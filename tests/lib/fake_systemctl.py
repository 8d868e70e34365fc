#!/usr/bin/env python3
"""A stand-in for systemctl, for controller-side tests of the roles' service tasks.

Keeps its units in a JSON file ($FAKE_SYSTEMCTL_STATE): each unit's
ActiveState, UnitFileState, the monotonic time its main process started and
whether systemd would need a daemon-reload. Every call is appended to
$FAKE_SYSTEMCTL_STATE.log (one JSON line: argv and the monotonic time), so a
test can tell in which order units were stopped and restarted. A unit named
in the state's "fail" list fails to (re)start, as a crashing Synapse would.

It answers what the roles and ansible.builtin.systemd_service ask: show (all
properties, or --property=...), is-enabled, is-active, list-unit-files,
start, restart, stop (also a unit pattern), enable, reset-failed,
daemon-reload.
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import os
import sys
import time


def now_usec():
    return int(time.monotonic() * 1e6)


def load(handle):
    handle.seek(0)
    text = handle.read()
    return json.loads(text) if text else {"units": {}}


def save(handle, state):
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(state, indent=1))


def properties(name, unit):
    if unit is None:
        return {"Id": name, "LoadState": "not-found", "ActiveState": "inactive", "SubState": "dead",
                "UnitFileState": "", "NeedDaemonReload": "no", "ExecMainStartTimestampMonotonic": "0"}
    active = unit.get("active", "inactive")
    return {
        "Id": name,
        "Names": name,
        "LoadState": "loaded",
        "ActiveState": active,
        "SubState": {"active": "running", "failed": "failed"}.get(active, "dead"),
        "UnitFileState": unit.get("enabled", "disabled"),
        "NeedDaemonReload": "yes" if unit.get("need_reload") else "no",
        "ExecMainStartTimestampMonotonic": str(unit.get("started_usec", 0)),
        "FragmentPath": f"/etc/systemd/system/{name}",
    }


def main(argv):
    path = os.environ["FAKE_SYSTEMCTL_STATE"]
    options = [arg for arg in argv if arg.startswith("-") and arg != "--"]
    words = [arg for arg in argv if not arg.startswith("-")]
    verb, names = words[0], words[1:]
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        state = load(handle)
        with open(path + ".log", "a") as log:
            log.write(json.dumps({"argv": argv, "time": time.monotonic()}) + "\n")
        units = state["units"]
        rc = 0
        if verb == "show":
            wanted = None
            for option in options:
                if option.startswith("--property="):
                    wanted = option.split("=", 1)[1].split(",")
            blocks = []
            for name in names:
                values = properties(name, units.get(name))
                blocks.append("\n".join(f"{k}={v}" for k, v in values.items() if wanted is None or k in wanted))
            print("\n\n".join(blocks))
        elif verb == "is-enabled":
            enabled = units.get(names[0], {}).get("enabled", "disabled")
            print(enabled)
            rc = 0 if enabled == "enabled" else 1
        elif verb == "is-active":
            active = units.get(names[0], {}).get("active", "inactive")
            print(active)
            rc = 0 if active == "active" else 3
        elif verb == "list-unit-files":
            pattern = names[0]
            for name, unit in units.items():
                if fnmatch.fnmatch(name, pattern):
                    print(f"{name} {unit.get('enabled', 'disabled')}")
        elif verb in ("start", "restart"):
            for name in names:
                unit = units.setdefault(name, {})
                if name in state.get("fail", []):
                    unit["active"] = "failed"
                    print(f"Job for {name} failed.", file=sys.stderr)
                    rc = 1
                elif verb == "restart" or unit.get("active") != "active":
                    unit.update(active="active", started_usec=now_usec())
        elif verb == "stop":
            for pattern in names:
                for name, unit in units.items():
                    if fnmatch.fnmatchcase(name, pattern):
                        unit["active"] = "inactive"
        elif verb == "enable":
            for name in names:
                units.setdefault(name, {})["enabled"] = "enabled"
        elif verb == "reset-failed":
            for name in names:
                if units.get(name, {}).get("active") == "failed":
                    units[name]["active"] = "inactive"
        elif verb == "daemon-reload":
            for unit in units.values():
                unit["need_reload"] = False
        else:
            print(f"fake systemctl: unknown verb {verb}", file=sys.stderr)
            rc = 1
        save(handle, state)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
