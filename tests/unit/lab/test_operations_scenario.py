"""What the operations scenario (extensions/molecule/operations) relies on,
checked on the controller so that a lab run cannot pass vacuously or fail
for a name that drifted:

- it deploys an older release than the one the collection targets, and the
  schema delta main's log must show after the upgrade is one the targeted
  release has and the older one lacks;
- the task the interrupted run is killed after exists, and is the one that
  puts homeserver.yaml live;
- the worker it adds changes neither homeserver.yaml's nor workers.yaml's
  share of the topology, nor any other process's config, so only it starts;
- tests/run runs it by default.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import yaml

import synapse
from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import build_topology
from conftest import ROOT

SCENARIO = ROOT / "extensions" / "molecule" / "operations"


def load(path):
    return yaml.safe_load(Path(path).read_text())


def release(text):
    return tuple(int(part) for part in text.split("."))


INVENTORY = load(SCENARIO / "inventory.yml")["all"]["vars"]
VERIFY_VARS = load(SCENARIO / "verify_vars.yml")
DEFAULT_RELEASE = load(ROOT / "roles" / "synapse_main" / "defaults" / "main.yml")["synapse_main_version"]


def play(name):
    return next(p for p in load(SCENARIO / "verify.yml") if p["name"] == name)


def test_it_upgrades_from_an_older_release_to_the_targeted_one():
    assert release(INVENTORY["synapse_main_version"]) < release(DEFAULT_RELEASE)
    # The role default is the release installed here, which the unit tests hold to the targeted series.
    assert DEFAULT_RELEASE == metadata.version("matrix-synapse")


def test_the_schema_delta_it_looks_for_comes_with_the_targeted_release():
    delta = VERIFY_VARS["verify_upgrade_delta"]
    version, name = delta.split("/")
    schema = Path(synapse.__file__).parent / "storage" / "schema" / "main" / "delta" / version
    assert (schema / name).is_file(), f"{delta} is not a schema delta of Synapse {synapse.__version__}"
    # Synapse logs "Applying schema <version>/<file>" for it (prepare_database).
    source = (Path(synapse.__file__).parent / "storage" / "prepare_database.py").read_text()
    assert 'logger.info("Applying schema %s", relative_path)' in source
    assert "relative_path = os.path.join(str(v), file_name)" in source


def test_the_interrupted_run_is_killed_after_homeserver_yaml_goes_live():
    task_name = play("A run killed half-way is finished by the next one")["vars"]["verify_task"]
    tasks = load(ROOT / "roles" / "synapse_main" / "tasks" / "configure.yml")
    (task,) = [t for t in tasks if t.get("name") == task_name]
    copy = task["ansible.builtin.copy"]
    assert copy["dest"].endswith("/homeserver.yaml") and copy["remote_src"] is True
    # Nothing in the role restarts Synapse from a handler: a run killed there has restarted nothing.
    assert not (ROOT / "roles" / "synapse_main" / "handlers").exists() or "restart" not in (
        ROOT / "roles" / "synapse_main" / "handlers" / "main.yml"
    ).read_text().lower()


def test_the_added_worker_leaves_every_other_process_config_as_it_was():
    hosts = {"lab-1": "10.213.57.10"}
    workers = INVENTORY["synapse_workers"]
    added = VERIFY_VARS["verify_added_worker"]
    before = build_topology(workers, main_host="lab-1", hosts=hosts)
    after = build_topology(workers + [added], main_host="lab-1", hosts=hosts)
    assert after["shared_config"] == before["shared_config"]
    assert after["main"] == before["main"]
    by_name = {w["name"]: w for w in after["workers"]}
    for worker in before["workers"]:
        assert by_name.pop(worker["name"]) == worker
    assert list(by_name) == [added["name"]]
    assert VERIFY_VARS["verify_added_unit"] == f"matrix-synapse-worker@{added['name']}.service"


def test_the_layout_has_a_stream_writer_and_a_synchrotron_to_kill():
    types = {t for w in INVENTORY["synapse_workers"] for t in w["types"]}
    assert "event_persister" in types and "synchrotron" in types


def test_tests_run_runs_it_on_debian_13_by_default():
    script = (ROOT / "tests" / "run").read_text()
    default = re.search(r"\$\{LAB_RUNS:-([^}]*)\}", script).group(1).split()
    assert "operations:trixie" in default
