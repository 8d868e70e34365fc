"""synapse_restart_state: what is due is read from the host, not from what a run changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

MODULE = ROOT / "plugins" / "modules" / "synapse_restart_state.py"
FAKE = ROOT / "tests" / "lib" / "fake_systemctl.py"


@pytest.fixture
def systemd(tmp_path):
    """A fake systemctl first on PATH, and a way to set its units."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    (bin_dir / "systemctl").chmod(0o755)
    state = tmp_path / "systemd.json"

    def units(**values):
        state.write_text(json.dumps({"units": values}))

    units()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SYSTEMCTL_STATE": str(state)}
    return units, env


def run(tmp_path, env, check_mode=False, **params):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**params, "_ansible_check_mode": check_mode}}))
    result = subprocess.run([sys.executable, str(MODULE), str(args)], capture_output=True, text=True,
                            timeout=60, env=env)
    return json.loads(result.stdout)


def started(seconds_ago):
    """The fake's start time (monotonic µs) of a process started that long ago."""
    return int((time.monotonic() - seconds_ago) * 1e6)


def test_a_process_older_than_a_file_it_reads_is_due(tmp_path, systemd):
    units, env = systemd
    config = tmp_path / "homeserver.yaml"
    config.write_text("a: 1\n")
    units(**{"main.service": {"active": "active", "enabled": "enabled", "started_usec": started(60)},
             "sync1.service": {"active": "active", "enabled": "enabled", "started_usec": started(0)}})
    result = run(tmp_path, env, units={"main.service": [str(config)], "sync1.service": [str(config)]})
    assert result["due"] == ["main.service"]
    assert result["units"]["main.service"]["newer"] == [str(config)]
    assert result["units"]["sync1.service"]["due"] is False
    assert result["changed"] is False and result["daemon_reload"] is False


def test_a_process_that_restarted_since_the_change_is_not_due(tmp_path, systemd):
    units, env = systemd
    config = tmp_path / "homeserver.yaml"
    config.write_text("a: 1\n")
    time.sleep(0.05)
    units(**{"main.service": {"active": "active", "started_usec": started(0)}})
    assert run(tmp_path, env, units={"main.service": [str(config)]})["due"] == []


def test_a_file_put_live_with_an_old_date_still_counts(tmp_path, systemd):
    """copy remote_src keeps the staged file's date; the inode's change time does not lie."""
    units, env = systemd
    config = tmp_path / "homeserver.yaml"
    units(**{"main.service": {"active": "active", "started_usec": started(5)}})
    config.write_text("a: 2\n")
    old = time.time() - 3600
    os.utime(config, (old, old))
    assert run(tmp_path, env, units={"main.service": [str(config)]})["due"] == ["main.service"]


def test_only_running_units_are_due_and_patterns_match(tmp_path, systemd):
    units, env = systemd
    venv = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "matrix_synapse-1.163.2.dist-info"
    venv.mkdir(parents=True)
    (venv / "RECORD").write_text("x")
    pattern = str(tmp_path / "venv" / "lib" / "python3*" / "site-packages" / "matrix_synapse-*.dist-info" / "RECORD")
    units(**{"a.service": {"active": "failed", "started_usec": started(60)},
             "b.service": {"active": "inactive"},
             "c.service": {"active": "activating", "started_usec": started(60)}})
    result = run(tmp_path, env, units={name: [pattern, str(tmp_path / "missing")] for name in
                                       ("a.service", "b.service", "c.service", "new.service")})
    assert result["due"] == ["c.service"]
    assert result["units"]["c.service"]["newer"] == [str(venv / "RECORD")]
    assert result["units"]["a.service"]["active_state"] == "failed"
    assert result["units"]["b.service"]["started"] is None
    assert result["units"]["new.service"]["load_state"] == "not-found"


def test_reports_a_unit_file_systemd_has_not_reloaded(tmp_path, systemd):
    units, env = systemd
    units(**{"t.target": {"active": "active", "need_reload": True}})
    assert run(tmp_path, env, units={"t.target": []})["daemon_reload"] is True


def test_an_input_changed_in_the_future_is_dated_now_once(tmp_path, systemd):
    """A clock set back must not keep a process due at every run."""
    units, env = systemd
    config = tmp_path / "homeserver.yaml"
    config.write_text("a: 1\n")
    units(**{"main.service": {"active": "active", "started_usec": started(0)}})
    # A change time cannot be set back: set the module's clock back instead.
    env = {**env, "PYTHONPATH": str(tmp_path)}
    (tmp_path / "sitecustomize.py").write_text(
        "import time\n_real = time.time\ntime.time = lambda: _real() - 3600\n"
    )
    before = os.stat(config).st_ctime_ns
    time.sleep(0.05)
    check = run(tmp_path, env, check_mode=True, units={"main.service": [str(config)]})
    assert check["redated"] == [str(config)] and check["changed"] is True
    assert os.stat(config).st_ctime_ns == before  # untouched in check mode
    result = run(tmp_path, env, units={"main.service": [str(config)]})
    assert result["redated"] == [str(config)] and result["changed"] is True
    assert os.stat(config).st_ctime_ns > before
    assert result["due"] == ["main.service"]  # restarts once: its change is newer than the process


def test_tells_whether_the_assignments_file_holds_other_content(tmp_path, systemd):
    _, env = systemd
    path = tmp_path / "assignments.yaml"
    args = {"units": {}, "assignments_file": str(path), "assignments": "stream_writers: {}\n"}
    assert run(tmp_path, env, **args)["assignments_changed"] is False  # none yet: first deploy
    path.write_text("stream_writers: {}\n")
    assert run(tmp_path, env, **args)["assignments_changed"] is False
    path.write_text("stream_writers: {events: [ev1]}\n")
    assert run(tmp_path, env, **args)["assignments_changed"] is True


def test_inputs_must_be_a_list(tmp_path, systemd):
    _, env = systemd
    result = run(tmp_path, env, units={"main.service": "/etc/matrix-synapse/homeserver.yaml"})
    assert result["failed"] is True and "inputs of main.service must be a list" in result["msg"]
