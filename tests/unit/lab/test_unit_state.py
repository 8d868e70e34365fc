"""tests/lab/unit_state.py and tests/lab/crash_recovery.py, without systemd.

unit_state reads `systemctl show` for several units (blocks in any order, a
unit systemd does not know) and puts a file's change time on systemd's
monotonic clock. crash_recovery times a killed unit's return: here systemctl
is replaced by a stand-in, and /health is a real HTTP server on a UNIX
socket that the "restarted process" starts after a delay.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import os
import socketserver
import threading
import time

import pytest

from conftest import ROOT


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "lab" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


us = load("unit_state")
cr = load("crash_recovery")

SHOW = """Id=matrix-synapse-worker@sync.service
ActiveState=active
SubState=running
UnitFileState=enabled
MainPID=812
NRestarts=1
ExecMainStartTimestampMonotonic=5000200
ActiveEnterTimestampMonotonic=5900000

Id=matrix-synapse.service
ActiveState=activating
SubState=start
UnitFileState=enabled
MainPID=700
NRestarts=0
ExecMainStartTimestampMonotonic=4000000
ActiveEnterTimestampMonotonic=0
"""


def test_show_output_is_read_per_unit_in_the_order_asked():
    units = ["matrix-synapse.service", "matrix-synapse-worker@sync.service", "matrix-synapse-worker@gone.service"]
    parsed = us.parse_show(SHOW, units)
    assert list(parsed) == units
    assert parsed["matrix-synapse.service"] == {
        "active_state": "activating", "sub_state": "start", "enabled": "enabled", "main_pid": 700,
        "restarts": 0, "started_us": 4000000, "active_since_us": 0,
    }
    assert parsed["matrix-synapse-worker@sync.service"]["started_us"] == 5000200
    assert parsed["matrix-synapse-worker@sync.service"]["restarts"] == 1
    # Not in the output at all: unknown, never started.
    assert parsed["matrix-synapse-worker@gone.service"] == {
        "active_state": "unknown", "sub_state": "unknown", "enabled": "", "main_pid": 0,
        "restarts": 0, "started_us": 0, "active_since_us": 0,
    }


def test_a_file_change_time_lands_on_the_monotonic_clock(tmp_path):
    path = tmp_path / "homeserver.yaml"
    path.write_text("server_name: x\n")
    changed = os.stat(path).st_ctime
    now_epoch = changed + 12.5  # read 12.5 s after the change
    state = us.file_state(str(path), 100_000_000, now_epoch)
    assert state["changed_us"] == 100_000_000 - 12_500_000
    assert state["ctime_ns"] == os.stat(path).st_ctime_ns
    assert state["sha256"] == hashlib.sha256(b"server_name: x\n").hexdigest()
    assert us.file_state(str(tmp_path / "missing"), 1, 1.0) is None


def test_an_untouched_file_reads_the_same_change_time_every_time(tmp_path):
    path = tmp_path / "homeserver.yaml"
    path.write_text("server_name: x\n")
    # Two reports a while apart: the monotonic conversion may move by a
    # microsecond, the inode's own change time may not.
    first = us.file_state(str(path), 100_000_000, time.time())
    second = us.file_state(str(path), 100_000_000 + 3_333_333, time.time() + 3.333333)
    assert (first["sha256"], first["ctime_ns"]) == (second["sha256"], second["ctime_ns"])
    # Touched (even to the same times, as the restart module does), it moves.
    time.sleep(0.05)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns))
    assert us.file_state(str(path), 1, time.time())["ctime_ns"] > first["ctime_ns"]


def test_the_checksum_follows_the_content(tmp_path):
    path = tmp_path / "workers.yaml"
    path.write_text("a: 1\n")
    first = us.file_state(str(path), 1, time.time())["sha256"]
    path.write_text("a: 2\n")
    assert us.file_state(str(path), 1, time.time())["sha256"] != first


def test_the_report_is_one_json_object(monkeypatch, capsys, tmp_path):
    calls = []

    def systemctl(*args):
        calls.append(args)
        if args[0] == "show" and len(args) > 2:
            return SHOW
        if args[0] == "show":
            return "UserspaceTimestampMonotonic=3000000\n"
        if args[0] == "list-units":
            return "\u25cf matrix-synapse-worker@bad.service loaded failed failed Synapse worker bad\n"
        return "degraded\n"

    monkeypatch.setattr(us, "systemctl", systemctl)
    path = tmp_path / "homeserver.yaml"
    path.write_text("x")
    assert us.main(["--file", str(path), "matrix-synapse.service", "matrix-synapse.service"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert list(report["units"]) == ["matrix-synapse.service"]
    assert report["userspace_us"] == 3000000 and report["system_state"] == "degraded"
    assert report["failed"] == ["matrix-synapse-worker@bad.service"]
    assert report["files"][str(path)]["changed_us"] <= report["now_us"]
    assert calls[0][:2] == ("show", "--property=Id," + ",".join(us.PROPERTIES))


# --- crash_recovery ---------------------------------------------------------------


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        body = b"OK" if self.path == "/health" else b"no"
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)


class FakeUnit:
    """A unit whose process dies on SIGKILL and whose restart answers /health after `back_after` s."""

    def __init__(self, socket_path, back_after, new_pid=2002, state="active"):
        self.socket_path, self.back_after = socket_path, back_after
        self.pid, self.new_pid, self.restarts, self.state = 1001, new_pid, 0, state
        self.server = None
        self.killed = False

    def process(self, unit):
        return self.state, self.pid, self.restarts

    def kill(self, unit):
        self.killed = True
        self.pid_killed = self.pid

        def restart():
            time.sleep(self.back_after)
            self.pid, self.restarts = self.new_pid, self.restarts + 1
            self.server = UnixHTTPServer(self.socket_path, Health)
            self.server.serve_forever(poll_interval=0.05)

        threading.Thread(target=restart, daemon=True).start()

    def close(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def unit(tmp_path, monkeypatch):
    made = []

    def make(back_after, **kwargs):
        fake = FakeUnit(str(tmp_path / "sync.sock"), back_after, **kwargs)
        monkeypatch.setattr(cr, "unit_process", fake.process)
        monkeypatch.setattr(cr, "kill", fake.kill)
        monkeypatch.setattr(cr, "gone", lambda pid: fake.killed)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.close()


def args_for(fake, *extra):
    return cr.parse_args(["--unit", "matrix-synapse-worker@sync.service", "--socket", fake.socket_path, *extra])


def test_a_quick_return_passes_with_its_figure(unit):
    fake = unit(0.4)
    report = cr.recover(args_for(fake))
    assert report["ok"] and report["problem"] == ""
    assert 0.4 <= report["seconds"] < 3
    assert report["old_pid"] == 1001 and report["new_pid"] == 2002
    assert report["restarts_before"] == 0 and report["restarts_after"] == 1
    assert report["attempts"] > 1  # asked while it was down, every --interval


def test_a_return_slower_than_allowed_fails_naming_the_figure(unit):
    fake = unit(1.2)
    report = cr.recover(args_for(fake, "--within", "0.5", "--interval", "0.1"))
    assert not report["ok"]
    assert report["problem"].startswith(f"back after {report['seconds']}s, more than 0.5s")


def test_no_answer_within_the_timeout_fails(unit):
    fake = unit(30)
    started = time.monotonic()
    report = cr.recover(args_for(fake, "--within", "0.5", "--timeout", "1"))
    assert time.monotonic() - started < 5
    assert not report["ok"] and report["seconds"] is None
    assert "no OK from /health" in report["problem"] and "within 1s of the kill" in report["problem"]


def test_an_answer_from_the_same_process_does_not_count(unit):
    fake = unit(0.2, new_pid=1001)
    report = cr.recover(args_for(fake))
    assert not report["ok"]
    assert "the process was not replaced" in report["problem"]


def test_a_unit_not_running_is_not_killed(unit):
    fake = unit(0.2, state="failed")
    report = cr.recover(args_for(fake))
    assert not report["ok"] and not fake.killed
    assert report["problem"] == "matrix-synapse-worker@sync.service is failed (main PID 1001), not running: nothing to kill"


def test_the_exit_status_and_the_report(unit, capsys):
    fake = unit(0.2)
    assert cr.main(["--unit", "matrix-synapse-worker@sync.service", "--socket", fake.socket_path]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--unit", "sync", "--socket", "/run/s.sock"], "--unit must name a service unit"),
        (["--unit", "a.service", "--socket", "run/s.sock"], "--socket must be an absolute path"),
        (["--unit", "a.service", "--socket", "/s", "--within", "40"], "need 0 < --interval <= --within <= --timeout"),
        (["--unit", "a.service"], "one of the arguments --socket --address is required"),
    ],
)
def test_bad_arguments_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cr.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_a_dead_or_zombie_process_counts_as_gone():
    assert cr.gone(2**22 + 12345)
    assert not cr.gone(os.getpid())
