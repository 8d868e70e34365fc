#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reads from a host which Synapse units need a restart or a daemon-reload."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: synapse_restart_state
short_description: Tell from a host's state which Synapse units must restart
version_added: 0.1.0
description:
  - Reads each unit of O(units) from systemd in one call, whether it is
    running and enabled, when its main process started, and whether systemd
    must reload its unit files (C(NeedDaemonReload)).
  - A running unit is due for a restart when a file it reads (its inputs)
    changed after its main process started. The answer comes from the host
    alone, not from what a run changed, so a restart that was due when an
    earlier run stopped half-way is still due in the next run, and a process
    that restarted by itself since (after a crash) is not.
  - A file's change time is its inode's C(ctime). Writing, replacing,
    moving it into place or changing its owner or mode sets it, and no copy
    that keeps a modification date (C(copy) with C(remote_src), C(cp -p))
    can set it back.
  - An input changed in the future (the clock was set back since) would keep
    its unit due at every run; its change time is set to now, so the unit
    restarts once. That is the only change the module makes.
  - With O(assignments_file), also tells whether the file exists and holds
    other content than O(assignments).
options:
  units:
    description:
      - The units to read, each mapped to the paths it reads (shell patterns
        allowed; paths that do not exist are skipped).
    type: dict
    required: true
  assignments_file:
    description: A file the run compares with O(assignments).
    type: path
  assignments:
    description: The content O(assignments_file) is expected to hold.
    type: str
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - polylith.synapse contributors (@polylith)
"""

EXAMPLES = r"""
- name: Read which Synapse units must restart
  polylith.synapse.synapse_restart_state:
    units:
      matrix-synapse.service:
        - /etc/matrix-synapse/homeserver.yaml
        - /etc/matrix-synapse/workers.yaml
        - /opt/matrix-synapse/venv/lib/python3*/site-packages/matrix_synapse-*.dist-info/RECORD
  register: synapse_state
"""

RETURN = r"""
units:
  description: Each unit's state, by unit name.
  returned: always
  type: dict
  contains:
    active_state:
      description: systemd's C(ActiveState) (C(active), C(inactive), C(failed), ...).
      type: str
    sub_state:
      description: systemd's C(SubState).
      type: str
    enabled:
      description: systemd's C(UnitFileState) (C(enabled), C(disabled), ...).
      type: str
    started:
      description: When its main process started, in seconds since the epoch; null if it never did.
      type: float
    due:
      description: Whether it runs and an input changed since its main process started.
      type: bool
    newer:
      description: The inputs that changed since its main process started.
      type: list
      elements: str
due:
  description: The units due for a restart, in the order of O(units).
  returned: always
  type: list
  elements: str
daemon_reload:
  description: Whether systemd must reload its unit files before these units (re)start.
  returned: always
  type: bool
redated:
  description: Inputs whose change time lay in the future and was set to now.
  returned: always
  type: list
  elements: str
assignments_changed:
  description: Whether O(assignments_file) exists with other content than O(assignments).
  returned: when O(assignments_file) is given
  type: bool
"""

import glob
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes

PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "NeedDaemonReload",
    "ExecMainStartTimestampMonotonic",
)
# States in which the unit's process runs, or is about to run again.
RUNNING_STATES = ("active", "activating", "reloading")
# Clock jitter tolerated before an input counts as dated in the future.
FUTURE_SLACK = 1.0


def parse_show(text):
    """`systemctl show` output for several units: one dict per unit, keyed by Id."""
    units = {}
    for block in text.strip().split("\n\n"):
        values = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        if "Id" in values:
            units[values["Id"]] = values
    return units


def started_at(monotonic_usec, now, now_monotonic):
    """A monotonic start time (µs, systemd's) as seconds since the epoch; None if never started."""
    try:
        usec = int(monotonic_usec)
    except (TypeError, ValueError):
        return None
    if usec <= 0:
        return None
    return now - (now_monotonic - usec / 1e6)


def changed_inputs(patterns):
    """Every existing input of one unit with its inode's change time."""
    found = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]:
            try:
                found[path] = os.stat(path).st_ctime
            except OSError:
                continue
    return found


def set_change_time_to_now(path):
    """Setting a file's times, even to what they are, sets its change time to now."""
    status = os.stat(path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))


def judge(units, shown, now, now_monotonic, check_mode):
    """Each unit's state and whether it is due; the inputs dated to now."""
    result, redated = {}, []
    for name, patterns in units.items():
        values = shown.get(name, {})
        started = started_at(values.get("ExecMainStartTimestampMonotonic"), now, now_monotonic)
        inputs = changed_inputs(patterns or [])
        for path, changed in inputs.items():
            if changed > now + FUTURE_SLACK:
                if not check_mode:
                    set_change_time_to_now(path)
                inputs[path] = now
                redated.append(path)
        active = values.get("ActiveState", "unknown")
        newer = sorted(path for path, changed in inputs.items() if started is not None and changed > started)
        result[name] = {
            "load_state": values.get("LoadState", "unknown"),
            "active_state": active,
            "sub_state": values.get("SubState", "unknown"),
            "enabled": values.get("UnitFileState", ""),
            "started": started,
            "newer": newer,
            "due": active in RUNNING_STATES and bool(newer),
        }
    return result, redated


def main():
    module = AnsibleModule(
        argument_spec={
            "units": {"type": "dict", "required": True},
            "assignments_file": {"type": "path"},
            "assignments": {"type": "str"},
        },
        required_together=[("assignments_file", "assignments")],
        supports_check_mode=True,
    )
    units = {}
    for name, patterns in module.params["units"].items():
        if isinstance(patterns, str) or not isinstance(patterns, (list, tuple, type(None))):
            module.fail_json(msg=f"units: the inputs of {name} must be a list of paths, got {patterns!r}")
        units[name] = [str(pattern) for pattern in patterns or []]

    shown = {}
    if units:
        systemctl = module.get_bin_path("systemctl", required=True)
        rc, out, err = module.run_command(
            [systemctl, "show", "--property=" + ",".join(PROPERTIES), "--", *units]
        )
        if rc != 0:
            module.fail_json(msg=f"systemctl show failed (exit {rc}): {err.strip()}", rc=rc, stdout=out, stderr=err)
        shown = parse_show(out)
    now, now_monotonic = time.time(), time.monotonic()
    judged, redated = judge(units, shown, now, now_monotonic, module.check_mode)

    result = {
        "changed": bool(redated),
        "units": judged,
        "due": [name for name, state in judged.items() if state["due"]],
        "daemon_reload": any(values.get("NeedDaemonReload") == "yes" for values in shown.values()),
        "redated": redated,
    }
    path = module.params["assignments_file"]
    if path:
        try:
            with open(path, "rb") as handle:
                current = handle.read()
        except FileNotFoundError:
            current = None
        result["assignments_changed"] = current is not None and current != to_bytes(module.params["assignments"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
