#!/usr/bin/env python3
"""Kill a running Synapse unit's process with SIGKILL and time how long until it
answers GET /health with OK again; prints one JSON object, exits 0 only when
that took at most --within seconds and a new process answered.

    crash_recovery.py --unit matrix-synapse-worker@sync.service \
        (--socket /run/matrix-synapse/sync.sock | --address HOST:PORT) [--within 5] [--timeout 30]

The clock starts when `systemctl kill --signal=KILL` returns; /health is asked
every --interval seconds (0.1) once the killed process is gone (a refused
connection fails at once; a request gets REQUEST_TIMEOUT at most), so the
figure is close to when the restarted process first answered. Prints {"unit", "old_pid", "new_pid", "restarts_before",
"restarts_after", "seconds", "attempts", "within", "ok", "problem"}.
Standard library only, so it runs on a lab host (ansible.builtin.script).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from typing import Callable

REQUEST_TIMEOUT = 1.0


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def healthy(socket_path: str | None, address: str | None, timeout: float) -> bool:
    """GET /health answered 200 OK, on the UNIX socket or at host:port."""
    if socket_path:
        connection = UnixConnection(socket_path, timeout)
    else:
        connection = http.client.HTTPConnection(address, timeout=timeout)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        return response.status == 200 and response.read() == b"OK"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def wait_until(predicate: Callable[[], bool], deadline: float, interval: float) -> tuple[bool, int]:
    """Ask predicate every interval seconds until it holds or the deadline (monotonic)
    passes; returns whether it held and how often it was asked."""
    attempts = 0
    while True:
        attempts += 1
        if predicate():
            return True, attempts
        if time.monotonic() >= deadline:
            return False, attempts
        time.sleep(interval)


def unit_process(unit: str) -> tuple[str, int, int]:
    """The unit's ActiveState, main PID and restart count, from systemd."""
    out = subprocess.run(["systemctl", "show", "--property=ActiveState,MainPID,NRestarts", "--", unit],
                         capture_output=True, text=True, timeout=30, check=False).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def number(key: str) -> int:
        return int(values[key]) if values.get(key, "").isdigit() else 0

    return values.get("ActiveState", "unknown"), number("MainPID"), number("NRestarts")


def kill(unit: str) -> None:
    subprocess.run(["systemctl", "kill", "--signal=KILL", "--", unit], timeout=30, check=True,
                   capture_output=True, text=True)


def recover(args: argparse.Namespace) -> dict:
    report = {"unit": args.unit, "within": args.within, "old_pid": None, "new_pid": None,
              "restarts_before": None, "restarts_after": None, "seconds": None, "attempts": 0,
              "ok": False, "problem": ""}
    state, old_pid, restarts = unit_process(args.unit)
    report.update(old_pid=old_pid, restarts_before=restarts)
    if state != "active" or old_pid <= 0:
        report["problem"] = f"{args.unit} is {state} (main PID {old_pid}), not running: nothing to kill"
        return report
    kill(args.unit)
    started = time.monotonic()
    deadline = started + args.timeout
    # The old process could still answer a request already queued on its socket.
    if not wait_until(lambda: gone(old_pid), deadline, 0.01)[0]:
        report["problem"] = f"PID {old_pid} still runs {args.timeout:.0f}s after SIGKILL"
        return report
    answered, report["attempts"] = wait_until(
        lambda: healthy(args.socket, args.address, REQUEST_TIMEOUT), deadline, args.interval)
    if answered:
        report["seconds"] = round(time.monotonic() - started, 2)
    state, new_pid, restarts = unit_process(args.unit)
    report.update(new_pid=new_pid, restarts_after=restarts)
    where = args.socket or args.address
    if not answered:
        report["problem"] = f"no OK from /health at {where} within {args.timeout:.0f}s of the kill (the unit is {state})"
    elif new_pid in (0, old_pid):
        report["problem"] = f"/health answered, but the unit's main PID is {new_pid}: the process was not replaced"
    elif report["seconds"] > args.within:
        report["problem"] = f"back after {report['seconds']}s, more than {args.within:g}s"
    else:
        report["ok"] = True
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--unit", required=True, help="the systemd unit, e.g. matrix-synapse-worker@sync.service")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", help="the UNIX socket its /health answers on")
    where.add_argument("--address", help="HOST:PORT its /health answers on")
    parser.add_argument("--within", type=float, default=5.0, help="seconds it may take at most (default 5)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait at most (default 30)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two /health requests (default 0.1)")
    args = parser.parse_args(argv)
    if not args.unit.endswith(".service") or "/" in args.unit:
        parser.error(f"--unit must name a service unit, got {args.unit!r}")
    if not 0 < args.interval <= args.within <= args.timeout:
        parser.error("need 0 < --interval <= --within <= --timeout")
    if args.socket and not os.path.isabs(args.socket):
        parser.error(f"--socket must be an absolute path, got {args.socket!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    report = recover(parse_args(argv))
    print(json.dumps(report, sort_keys=True))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
