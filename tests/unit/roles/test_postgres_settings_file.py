"""The postgres role's memory settings as a run renders them: sized, fixed, overridden, refused."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from ansible_collections.polylith.synapse.plugins.plugin_utils.postgres_memory import (
    FALLBACK,
    postgres_memory,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from conftest import COLLECTIONS, ROOT

PLAY = Path(__file__).parent / "files" / "postgres_memory_play.yml"


def render(tmp_path, gather_hardware, **values):
    """Run the play; return its result and the settings file's name: value pairs."""
    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "synapse_server_name": "example.org",
                "synapse_database_password": "db-Passw0rd",
                "synapse_redis_password": "redis-Passw0rd",
                "synapse_workers": [{"name": "sync", "types": ["synchrotron"], "count": 2}],
                **values,
            },
            "children": {
                "synapse_main": {"hosts": {"app1": {"ansible_host": "127.0.0.1"}}},
                "postgres": {"hosts": {"app1": {}}},
            },
        }
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory))
    output = tmp_path / "postgresql-synapse.conf"
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1"}
    extra = json.dumps({"gather_hardware": gather_hardware, "output_file": str(output)})
    result = subprocess.run(["ansible-playbook", "-i", str(path), "-e", extra, str(PLAY)],
                            capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    settings = {}
    if output.exists():
        settings = dict(re.findall(r"^([a-z_]+) = '([^']*)'$", output.read_text(), re.MULTILINE))
    return result, settings


def memory_settings(settings):
    return {name: settings[name] for name in FALLBACK}


def test_fixed_by_default_even_with_the_hosts_ram_known(tmp_path):
    result, settings = render(tmp_path, True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert memory_settings(settings) == FALLBACK


def test_sized_from_the_hosts_ram_and_its_synapse_processes(tmp_path):
    result, settings = render(tmp_path, True, postgres_memory_from_ram=True)
    assert result.returncode == 0, result.stdout + result.stderr
    memtotal = int(re.search(r"memtotal_mb=(\d+)", result.stdout).group(1))
    # main and two synchrotrons on this host, 3 x 10 + 20 connections.
    deployment = build_topology([{"name": "sync", "types": ["synchrotron"], "count": 2}],
                                hosts={"app1": "127.0.0.1"}, main_host="app1")
    assert settings["max_connections"] == "50"
    assert memory_settings(settings) == postgres_memory(deployment, "app1", memtotal, 50)


def test_without_facts_the_fixed_values_and_the_operators_win(tmp_path):
    result, settings = render(tmp_path, False, postgres_work_mem="16MB")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "memtotal_mb=none" in result.stdout
    assert memory_settings(settings) == {**FALLBACK, "work_mem": "16MB"}


def test_shared_buffers_larger_than_the_host_is_refused(tmp_path):
    result, settings = render(tmp_path, True, postgres_shared_buffers="64TB")
    assert result.returncode != 0
    assert "postgres_shared_buffers (64TB) must be less than app1's memory" in result.stdout
    assert settings == {}
