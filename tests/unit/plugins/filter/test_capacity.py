"""Capacity: Synapse processes per host against its cores and memory, and their cache budget."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.polylith.synapse.plugins.filter.synapse_topology import (
    FilterModule,
    synapse_capacity_warnings,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.capacity import (
    cache_autotuning,
    capacity_warnings,
    synapse_processes,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from conftest import COLLECTIONS, ROOT

ONE_HOST = {"hosts": {"app1": "10.0.0.1"}, "main_host": "app1"}
TWO_HOSTS = {"hosts": {"app1": "10.0.0.1", "app2": "10.0.0.2"}, "main_host": "app1"}


def test_counts_main_and_workers_per_host():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "count": 3, "hosts": ["app2"]},
         {"name": "sender", "types": ["federation_sender"]}],
        **TWO_HOSTS,
    )
    assert synapse_processes(topo, "app1") == 2
    assert synapse_processes(topo, "app2") == 3
    assert synapse_processes(topo, "db1") == 0


def test_seed002_on_two_cores_is_warned_about():
    topo = build_topology(preset="seed002", **ONE_HOST)
    warnings = capacity_warnings(topo, "app1", 2, 4096)
    assert len(warnings) == 1
    assert "app1 runs 13 Synapse processes on 2 cores" in warnings[0]
    assert "synapse_worker_preset: monolith" in warnings[0]


def test_monolith_and_a_lean_layout_on_two_cores_are_not():
    assert capacity_warnings(build_topology(preset="monolith", **ONE_HOST), "app1", 2, 2048) == []
    lean = build_topology(
        [{"name": "sync", "types": ["synchrotron"]}, {"name": "events", "types": ["event_persister"]}],
        **ONE_HOST,
    )
    assert capacity_warnings(lean, "app1", 2, 2048) == []


def test_four_processes_on_two_cores_pass_five_do_not():
    four = build_topology([{"name": "sync", "types": ["synchrotron"], "count": 3}], **ONE_HOST)
    five = build_topology([{"name": "sync", "types": ["synchrotron"], "count": 4}], **ONE_HOST)
    assert capacity_warnings(four, "app1", 2, None) == []
    assert len(capacity_warnings(five, "app1", 2, None)) == 1


def test_memory_too_small_for_the_processes():
    topo = build_topology(preset="seed002", **ONE_HOST)
    warnings = capacity_warnings(topo, "app1", 64, 1024)
    assert len(warnings) == 1
    assert "13 Synapse processes in 1024 MiB" in warnings[0]
    assert "2462 MiB in all" in warnings[0]


def test_each_host_is_judged_by_its_own_processes():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "count": 6, "hosts": ["app2"]}],
        **TWO_HOSTS,
    )
    assert capacity_warnings(topo, "app1", 2, 4096) == []
    assert "app2 runs 6 Synapse processes on 2 cores" in capacity_warnings(topo, "app2", 2, 4096)[0]
    # A host without Synapse processes (database, proxy) has nothing to warn about.
    assert capacity_warnings(topo, "db1", 1, 256) == []


def test_unknown_facts_skip_the_check():
    topo = build_topology(preset="seed002", **ONE_HOST)
    assert capacity_warnings(topo, "app1", None, None) == []


def test_the_filter_passes_its_options_through():
    topo = build_topology(preset="seed002", **ONE_HOST)
    assert synapse_capacity_warnings(topo, "app1", cores=2, memory_mib=8192) == capacity_warnings(
        topo, "app1", 2, 8192
    )


# --- each process's cache memory ceiling -----------------------------------------


def test_the_host_memory_is_shared_among_its_processes():
    # seed002 on one host: main and 12 workers, PostgreSQL beside them (half the memory).
    topo = build_topology(preset="seed002", **ONE_HOST)
    assert cache_autotuning(topo, "app1", 8192) == {
        "max_cache_memory_usage": "315M",  # 8192 x 0.5 / 13
        "target_cache_memory_usage": "236M",
        "min_cache_ttl": "5m",
    }


def test_the_monolith_gets_the_whole_share():
    topo = build_topology(preset="monolith", **ONE_HOST)
    assert cache_autotuning(topo, "app1", 4096)["max_cache_memory_usage"] == "2048M"
    assert cache_autotuning(topo, "app1", 4096, share=0.25)["max_cache_memory_usage"] == "1024M"


def test_a_host_without_postgres_gives_synapse_more():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "count": 4, "hosts": ["app2"]}],
        **TWO_HOSTS,
    )
    assert topo["backends"]["postgres"]["host"] == "app1"
    # app1: main beside PostgreSQL; app2: four workers alone (0.7 of 4000 / 4).
    assert cache_autotuning(topo, "app1", 4000)["max_cache_memory_usage"] == "2000M"
    assert cache_autotuning(topo, "app2", 4000) == {
        "max_cache_memory_usage": "700M",
        "target_cache_memory_usage": "525M",
        "min_cache_ttl": "5m",
    }


def test_nothing_to_share_out_leaves_autotuning_out():
    topo = build_topology(preset="seed002", **ONE_HOST)
    assert cache_autotuning(topo, "app1", None) is None
    assert cache_autotuning(topo, "app1", 0) is None
    assert cache_autotuning(topo, "db1", 8192) is None


@pytest.mark.parametrize("share", [0, 1.5, -0.1, "half", True, [0.5]])
def test_a_share_outside_zero_to_one_is_refused(share):
    topo = build_topology(preset="monolith", **ONE_HOST)
    with pytest.raises(AnsibleFilterError, match=r"memory share must be a number above 0 and at most 1"):
        cache_autotuning(topo, "app1", 4096, share=share)


def test_a_share_written_as_text_is_read_as_a_number():
    topo = build_topology(preset="monolith", **ONE_HOST)
    assert cache_autotuning(topo, "app1", 4096, share="1")["max_cache_memory_usage"] == "4096M"


def test_the_cache_filter_passes_its_options_through():
    topo = build_topology(preset="seed002", **ONE_HOST)
    autotune = FilterModule().filters()["synapse_cache_autotuning"]
    assert autotune(topo, "app1", memory_mib=8192, share=0.6) == cache_autotuning(topo, "app1", 8192, 0.6)
    assert autotune(topo, "app1", memory_mib=8192, cores=8) == cache_autotuning(topo, "app1", 8192, None, 8)
    assert autotune(topo, "app1") is None


def test_with_the_cores_known_an_added_worker_leaves_the_ceiling():
    """Counted for two processes per core: a worker added within that changes no process's ceiling."""
    one = build_topology([{"name": "sync", "types": ["synchrotron"]}], **ONE_HOST)
    two = build_topology([{"name": "sync", "types": ["synchrotron"], "count": 2}], **ONE_HOST)
    # 4 cores: counted as 8 processes whether 2 or 3 run.
    assert cache_autotuning(one, "app1", 8192, share=0.5, cores=4) == cache_autotuning(two, "app1", 8192, share=0.5, cores=4)
    assert cache_autotuning(one, "app1", 8192, share=0.5, cores=4)["max_cache_memory_usage"] == "512M"
    # Without the cores each process's part follows the processes that run.
    assert cache_autotuning(one, "app1", 8192, share=0.5)["max_cache_memory_usage"] == "2048M"
    assert cache_autotuning(two, "app1", 8192, share=0.5)["max_cache_memory_usage"] == "1365M"
    # More processes than two per core (warned about): counted as they run.
    seed = build_topology(preset="seed002", **ONE_HOST)
    assert cache_autotuning(seed, "app1", 8192, share=0.5, cores=2)["max_cache_memory_usage"] == "315M"


# --- the role's task, as Ansible runs it -----------------------------------------


def run_capacity_play(tmp_path, workers):
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                     "synapse_workers": workers},
            "children": {"synapse_main": {"hosts": {"app1": {"ansible_host": "127.0.0.1"}}}},
        }
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory))
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        ["ansible-playbook", "-i", str(path), str(Path(__file__).parent / "files" / "capacity_play.yml")],
        capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
    )


def test_the_roles_warn_on_the_hosts_own_facts(tmp_path):
    # Four workers per core of this machine: more than any host carries.
    count = 4 * (os.cpu_count() or 1)
    result = run_capacity_play(tmp_path, [{"name": "sync", "types": ["synchrotron"], "count": count}])
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"app1 runs {count + 1} Synapse processes on \d+ cores", result.stdout), result.stdout
    assert result.stdout.count(f"app1 runs {count + 1} Synapse processes on") == 1, result.stdout
    assert "changed=0" in result.stdout


def test_the_roles_stay_quiet_when_the_host_carries_its_processes(tmp_path):
    result = run_capacity_play(tmp_path, [])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Synapse processes on" not in result.stdout
    assert "skipping: [app1]" in result.stdout
