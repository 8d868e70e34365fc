"""`lab.py reboot`: what can be checked without booting a host.

The command line, and the refusals that come before any host is touched: a
host the lab does not know, one whose systemd-nspawn is gone, one whose
overlay is no longer mounted. Each says what to do instead, and none of them
runs a command (no SSH, no mount, no nspawn).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import ROOT


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """lab.py with its state under tmp_path, root not required, and every command forbidden."""
    spec = importlib.util.spec_from_file_location("polylith_lab_reboot", ROOT / "tests" / "lab" / "lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = tmp_path / ".lab"
    monkeypatch.setattr(module, "STATE", state)
    monkeypatch.setattr(module, "STATE_JSON", state / "state.json")
    monkeypatch.setattr(module, "STATE_LOCK", state / "lock")
    monkeypatch.setattr(module, "need_root", lambda: None)

    def no_commands(cmd, *args, **kwargs):
        raise AssertionError(f"reboot ran a command before refusing: {cmd}")

    monkeypatch.setattr(module, "run", no_commands)
    monkeypatch.setattr(module, "boot_host", no_commands)
    return module


def write_state(lab, hosts):
    lab.STATE.mkdir(parents=True, exist_ok=True)
    lab.STATE_JSON.write_text(json.dumps({"hosts": hosts}))


def host(tmp_path, pid=4242):
    root = tmp_path / ".lab" / "hosts" / "lab-1" / "merged"
    return {"release": "trixie", "address": "10.213.57.10", "pid": pid, "root": str(root),
            "image": str(tmp_path / "image"), "console_log": str(tmp_path / "lab-1.console.log")}


def nspawn_running(pid, name):
    return lambda: {pid: ["systemd-nspawn", "-D", "/x", "-b", "-M", name]}


def test_reboot_needs_a_host(lab, capsys):
    with pytest.raises(SystemExit) as exc:
        lab.main(["reboot"])
    assert exc.value.code == 2
    assert "HOST" in capsys.readouterr().err


def test_reboot_takes_hosts_once_each_and_a_timeout(lab, tmp_path, monkeypatch, capsys):
    write_state(lab, {"lab-1": host(tmp_path), "lab-2": {**host(tmp_path), "address": "10.213.57.11"}})
    seen = []

    def reboot_hosts(state, names, timeout):
        seen.append((names, timeout))
        return {n: 1.0 for n in names}

    monkeypatch.setattr(lab, "reboot_hosts", reboot_hosts)
    assert lab.main(["reboot", "lab-1", "lab-2", "lab-1", "--timeout", "90"]) == 0
    assert lab.main(["reboot", "lab-2"]) == 0
    assert seen == [(["lab-1", "lab-2"], 90.0), (["lab-2"], lab.BOOT_TIMEOUT)]
    # As `up` prints them: name, address, release.
    assert capsys.readouterr().out.splitlines() == [
        "lab-1\t10.213.57.10\ttrixie", "lab-2\t10.213.57.11\ttrixie", "lab-2\t10.213.57.11\ttrixie"]


def test_an_unknown_host_is_refused_naming_the_known_ones(lab, tmp_path, capsys):
    write_state(lab, {"lab-1": host(tmp_path)})
    assert lab.main(["reboot", "ghost-1"]) == 1
    err = capsys.readouterr().err
    assert "no lab host named ghost-1" in err
    assert "known: lab-1" in err
    assert "lab.py status" in err


def test_without_any_host_the_message_says_none_is_known(lab, capsys):
    assert lab.main(["reboot", "lab-1"]) == 1
    err = capsys.readouterr().err
    assert "no lab host named lab-1; known: none" in err


def test_a_stopped_host_is_refused_with_how_to_boot_it(lab, tmp_path, monkeypatch, capsys):
    write_state(lab, {"lab-1": host(tmp_path)})
    monkeypatch.setattr(lab, "nspawn_pids", lambda: {})
    assert lab.main(["reboot", "lab-1"]) == 1
    err = capsys.readouterr().err
    assert "lab-1: not running" in err
    assert "nothing to reboot" in err
    assert "lab.py up" in err and "lab.py down lab-1" in err


def test_a_pid_now_running_another_host_counts_as_stopped(lab, tmp_path, monkeypatch, capsys):
    write_state(lab, {"lab-1": host(tmp_path, pid=4242)})
    monkeypatch.setattr(lab, "nspawn_pids", nspawn_running(4242, "lab-2"))
    assert lab.main(["reboot", "lab-1"]) == 1
    assert "lab-1: not running" in capsys.readouterr().err


def test_a_running_host_whose_overlay_is_gone_is_refused(lab, tmp_path, monkeypatch, capsys):
    write_state(lab, {"lab-1": host(tmp_path)})
    monkeypatch.setattr(lab, "nspawn_pids", nspawn_running(4242, "lab-1"))
    monkeypatch.setattr(lab, "mounts", lambda: [("/", "ext4", "rw")])
    assert lab.main(["reboot", "lab-1"]) == 1
    err = capsys.readouterr().err
    assert "is no longer mounted" in err
    assert "lab.py down lab-1" in err


def test_a_running_mounted_host_passes_the_checks(lab, tmp_path, monkeypatch):
    h = host(tmp_path)
    monkeypatch.setattr(lab, "nspawn_pids", nspawn_running(4242, "lab-1"))
    monkeypatch.setattr(lab, "mounts", lambda: [("/", "ext4", "rw"), (h["root"], "overlay", "rw")])
    assert lab.reboot_targets({"hosts": {"lab-1": h}}, ["lab-1"]) == {"lab-1": h}


def test_every_host_is_checked_before_any_is_rebooted(lab, tmp_path, monkeypatch, capsys):
    """One bad host of several: refused before the good one is touched (run() would fail the test)."""
    good, bad = host(tmp_path, pid=1), host(tmp_path, pid=2)
    write_state(lab, {"lab-1": good, "lab-2": bad})
    monkeypatch.setattr(lab, "nspawn_pids", nspawn_running(1, "lab-1"))
    monkeypatch.setattr(lab, "mounts", lambda: [(good["root"], "overlay", "rw")])
    assert lab.main(["reboot", "lab-1", "lab-2"]) == 1
    assert "lab-2: not running" in capsys.readouterr().err
