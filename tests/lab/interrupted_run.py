#!/usr/bin/env python3
"""Run an ansible-playbook command and kill it half-way: with SIGKILL to its
whole process group as soon as a given task reports a given status (by
default `changed`) on a host, as a lost connection or a killed controller
would stop it. Prints one JSON object; exits 0 only when the run was killed
at that task.

    interrupted_run.py --task NAME [--status changed] [--host HOST] [--timeout 900]
        [--log FILE] -- ansible-playbook ARGS ...

NAME is the task's name as the playbook writes it, without the role prefix
Ansible prints before it ("polylith.synapse.synapse_main : "). The command's
output must be Ansible's default output without colours (ANSIBLE_NOCOLOR=1,
ANSIBLE_FORCE_COLOR=0); its lines are read as they come (PYTHONUNBUFFERED=1).
A run that ends before the task reports the status, or that does not get
there within --timeout seconds (then killed too), fails. --log keeps the
whole output. Prints {"killed", "task", "status", "host", "seconds", "rc",
"lines", "tail", "problem"}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time

TASK_RE = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?P<name>.*)\] \**\s*$")
STATUS_RE = re.compile(r"^(?P<status>ok|changed|failed|fatal|skipping|included): \[(?P<host>[^\]]+)\]")
TAIL = 25


class TaskWatch:
    """Follows Ansible's output line by line and says when the task reports the status."""

    def __init__(self, task: str, status: str = "changed", host: str | None = None):
        self.task, self.status, self.host = task, status, host
        self.current: str | None = None

    def feed(self, line: str) -> bool:
        """True once this line is the status wanted for the task wanted."""
        header = TASK_RE.match(line)
        if header:
            # "ROLE : NAME" for a role's task, "NAME" for a play's own.
            self.current = header.group("name").split(" : ", 1)[-1]
            return False
        if line.startswith(("PLAY [", "PLAY RECAP")):
            self.current = None
            return False
        result = STATUS_RE.match(line)
        return bool(
            result
            and self.current == self.task
            and result.group("status") == self.status
            and (self.host is None or result.group("host").split(" -> ")[0] == self.host)
        )


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def run(command: list[str], watch: TaskWatch, timeout: float, log=None) -> dict:
    """Start command in a process group of its own and kill the group when watch says so."""
    report = {"killed": False, "task": watch.task, "status": watch.status, "host": watch.host,
              "seconds": None, "rc": None, "lines": 0, "tail": [], "problem": ""}
    env = dict(os.environ, PYTHONUNBUFFERED="1", ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    started = time.monotonic()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)
    tail: list[str] = []
    pending = b""
    finished = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            while not finished and not report["killed"]:
                left = started + timeout - time.monotonic()
                if left <= 0:
                    report["problem"] = f"the task {watch.task!r} did not report {watch.status!r} within {timeout:.0f}s"
                    break
                if not selector.select(timeout=min(left, 1.0)):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                else:  # the command closed its output: the last line may lack its newline
                    finished = True
                    lines, pending = ([pending] if pending else []), b""
                for raw in lines:
                    line = raw.decode(errors="replace").rstrip("\r")
                    report["lines"] += 1
                    tail = (tail + [line])[-TAIL:]
                    if log:
                        log.write(line + "\n")
                    if watch.feed(line):
                        kill_group(proc)
                        report["killed"] = True
                        report["seconds"] = round(time.monotonic() - started, 1)
                        break
    finally:
        if finished:  # it closed its output: let it exit by itself
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        if proc.poll() is None:
            kill_group(proc)
        proc.stdout.close()
    report["rc"] = proc.wait(timeout=10)
    report["tail"] = tail
    if not report["killed"] and not report["problem"]:
        report["problem"] = (f"the run ended (exit {report['rc']}) before the task {watch.task!r} "
                             f"reported {watch.status!r}")
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, help="the task's name, without the role prefix")
    parser.add_argument("--status", default="changed", choices=["ok", "changed", "failed", "fatal", "skipping"])
    parser.add_argument("--host", help="only when the task reports the status on this host (default: any)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for it at most (default 900)")
    parser.add_argument("--log", help="write the whole output here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- ansible-playbook ARGS ...")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the command to run after --, e.g. -- ansible-playbook -i INVENTORY playbooks/site.yml")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    watch = TaskWatch(args.task, args.status, args.host)
    if args.log:
        with open(args.log, "w", encoding="utf-8") as log:
            report = run(args.command, watch, args.timeout, log)
    else:
        report = run(args.command, watch, args.timeout)
    print(json.dumps(report, indent=1))
    return 0 if report["killed"] else 1


if __name__ == "__main__":
    sys.exit(main())
