"""tests/lab/interrupted_run.py: kills a run at the task it names, and nowhere else.

The watch over Ansible's output is fed real lines of its default callback;
the runner is run against small stand-in commands: it must kill the whole
process group (children too) right after the status line, and fail when the
run ends first or never gets there in time.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
import time

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("interrupted_run", ROOT / "tests" / "lab" / "interrupted_run.py")
ir = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ir)

TASK = "Put homeserver.yaml live once Synapse accepts it"
HEADER = f"TASK [polylith.synapse.synapse_main : {TASK}] " + "*" * 40


def feed(watch, lines):
    """The index of the line the watch fires on, or None."""
    for index, line in enumerate(lines):
        if watch.feed(line):
            return index
    return None


def test_fires_on_the_status_of_the_task_named():
    lines = [
        "PLAY [Synapse main process] ****",
        "TASK [polylith.synapse.synapse_main : Render the configuration to the staging directory] ****",
        "changed: [lab-1] => (item=homeserver.yaml)",
        HEADER,
        "changed: [lab-1]",
        "TASK [polylith.synapse.synapse_main : Put workers.yaml live once Synapse accepts it] ****",
    ]
    assert feed(ir.TaskWatch(TASK), lines) == 4


@pytest.mark.parametrize(
    "lines",
    [
        # The task reports ok (nothing changed): no interruption.
        [HEADER, "ok: [lab-1]"],
        # Another task changed, and a later one of the same name's prefix.
        ["TASK [polylith.synapse.synapse_main : Put workers.yaml live once Synapse accepts it] ***", "changed: [lab-1]"],
        [f"TASK [x : {TASK} again] ***", "changed: [lab-1]"],
        # The status comes after the next task started, or a recap names the host.
        [HEADER, "skipping: [lab-1]", "TASK [other] ***", "changed: [lab-1]"],
        [HEADER, "PLAY RECAP ***", "changed: [lab-1]"],
        # A task of that name in a handler section is another task.
        ["RUNNING HANDLER [x : Restart] ***", "changed: [lab-1]"],
    ],
)
def test_does_not_fire_anywhere_else(lines):
    assert feed(ir.TaskWatch(TASK), lines) is None


def test_a_play_task_without_role_and_a_chosen_host():
    watch = ir.TaskWatch("Restart", status="changed", host="lab-2")
    assert feed(watch, ["TASK [Restart] ***", "changed: [lab-1]", "changed: [lab-2 -> localhost]"]) == 2


def script(tmp_path, body):
    path = tmp_path / "play.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_kills_the_whole_process_group_right_after_the_status(tmp_path):
    child_file = tmp_path / "child.pid"
    command = script(tmp_path, f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(child_file)!r}, "w").write(str(child.pid))
        print("PLAY [Synapse main process] ***")
        print({HEADER!r})
        time.sleep(0.3)
        print("changed: [lab-1]", flush=True)
        time.sleep(60)
        print("never")
        """)
    log = tmp_path / "run.log"
    started = time.monotonic()
    with open(log, "w") as handle:
        report = ir.run(command, ir.TaskWatch(TASK), 30, handle)
    assert time.monotonic() - started < 10
    assert report["killed"] and report["problem"] == ""
    assert report["rc"] == -9 and report["lines"] == 3
    assert report["tail"][-1] == "changed: [lab-1]"
    assert "never" not in log.read_text()
    child = int(child_file.read_text())
    for _ in range(50):
        if not alive(child):
            break
        time.sleep(0.1)
    assert not alive(child), "a child of the run survived the kill"


def test_a_run_that_ends_first_fails(tmp_path):
    command = script(tmp_path, f"""
        print({HEADER!r})
        print("ok: [lab-1]")
        print("PLAY RECAP ***", end="")
        """)
    report = ir.run(command, ir.TaskWatch(TASK), 30)
    assert not report["killed"] and report["rc"] == 0 and report["lines"] == 3
    assert report["problem"] == f"the run ended (exit 0) before the task {TASK!r} reported 'changed'"


def test_a_run_that_never_gets_there_is_killed_at_the_timeout(tmp_path):
    command = script(tmp_path, """
        import time
        print("PLAY [x] ***", flush=True)
        time.sleep(60)
        """)
    started = time.monotonic()
    report = ir.run(command, ir.TaskWatch(TASK), 1.5)
    assert time.monotonic() - started < 10
    assert not report["killed"] and report["rc"] == -9
    assert "did not report 'changed' within 2s" in report["problem"]


def test_the_exit_status_says_whether_it_was_killed_there(tmp_path, capsys):
    command = script(tmp_path, f"""
        print({HEADER!r})
        print("changed: [lab-1]", flush=True)
        import time; time.sleep(30)
        """)
    assert ir.main(["--task", TASK, "--timeout", "20", "--", *command]) == 0
    assert '"killed": true' in capsys.readouterr().out
    assert ir.main(["--task", "Another task", "--timeout", "1", "--", *command]) == 1


def test_the_command_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        ir.parse_args(["--task", TASK, "--"])
    assert exc.value.code == 2
    assert "give the command to run after --" in capsys.readouterr().err


def test_the_run_sees_no_colour_and_unbuffered_output(tmp_path):
    command = script(tmp_path, """
        import os
        print(os.environ["ANSIBLE_NOCOLOR"], os.environ["ANSIBLE_FORCE_COLOR"], os.environ["PYTHONUNBUFFERED"])
        """)
    report = ir.run(command, ir.TaskWatch(TASK), 30)
    assert report["tail"] == ["1 0 1"]
