"""The day-two playbooks share one implementation and keep their order.

How restart.yml restarts is tested by running it (test_rolling_restart.py);
here: upgrade.yml installs everywhere, then is restart.yml restricted to what
is due, and site.yml restarts nothing of its own (its roles' run phases are
the same task files as restart.yml's entry points).
"""

from __future__ import annotations

import yaml

from conftest import ROOT

PLAYBOOKS = ROOT / "playbooks"


def load(name):
    return yaml.safe_load((PLAYBOOKS / name).read_text())


def included(play):
    return [(task["ansible.builtin.include_role"]["name"], task["ansible.builtin.include_role"].get("tasks_from"))
            for task in play.get("tasks", []) if "ansible.builtin.include_role" in task]


def test_restart_derives_then_restarts_main_then_the_workers_everywhere():
    derive, main, workers = load("restart.yml")
    assert derive["roles"] == [{"role": "polylith.synapse._deployment"}]
    assert main["hosts"] == "synapse_main" and main["vars"] == {"synapse_main_restart_all": True}
    assert included(main) == [("polylith.synapse.synapse_main", "restart.yml")]
    # Every Synapse host in one play, so each batch runs on all of them together.
    assert workers["hosts"] == "synapse_main:synapse_workers"
    assert workers["vars"] == {"synapse_worker_restart_all": True}
    assert included(workers) == [("polylith.synapse.synapse_worker", "restart.yml")]


def test_upgrade_installs_everywhere_then_imports_restart_for_what_is_due():
    derive, install, restart = load("upgrade.yml")
    assert derive["roles"] == [{"role": "polylith.synapse._deployment"}]
    assert install["hosts"] == "synapse_main:synapse_workers"
    # The install needs the architecture (jemalloc's path), checked on every host first.
    assert install["gather_facts"] is True and install["any_errors_fatal"] is True
    assert included(install) == [("polylith.synapse.synapse_main", "jemalloc_check.yml"),
                                 ("polylith.synapse.synapse_main", "install.yml")]
    assert restart["ansible.builtin.import_playbook"] == "restart.yml"
    assert restart["vars"] == {"synapse_main_restart_all": False, "synapse_worker_restart_all": False}


def test_the_restart_entry_points_are_the_run_phase():
    for role in ("synapse_main", "synapse_worker"):
        tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / "restart.yml").read_text())
        assert [task.get("ansible.builtin.import_tasks") for task in tasks] == ["preflight.yml", "service.yml"]
        main = yaml.safe_load((ROOT / "roles" / role / "tasks" / "main.yml").read_text())
        run = [task for task in main if task.get("ansible.builtin.import_tasks") == "service.yml"]
        assert len(run) == 1 and f"{role}_run" in run[0]["tags"]


def test_site_runs_main_before_the_workers_and_no_role_keeps_restart_handlers():
    names = [play["name"] for play in load("site.yml")]
    assert names.index("Synapse main process") < names.index("Synapse workers")
    for role in ("synapse_main", "synapse_worker"):
        assert not (ROOT / "roles" / role / "handlers").exists()
        for path in (ROOT / "roles" / role / "tasks").glob("*.yml"):
            assert "notify:" not in path.read_text(), f"{path.name} restarts through a handler"


def test_a_failed_batch_stops_every_host():
    (block,) = yaml.safe_load((ROOT / "roles" / "synapse_worker" / "tasks" / "restart_batch.yml").read_text())
    assert block["any_errors_fatal"] is True
    assert [task["name"] for task in block["block"]] == [
        "Restart this host's workers of the batch", "Wait until this host's workers of the batch answer /health"]
