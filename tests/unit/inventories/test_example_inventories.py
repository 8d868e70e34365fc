"""The example inventories derive the deployments their comments describe.

Each inventory under inventories/ is read the way ansible-playbook reads it
(groups, host and group variables, without rendering the secret lookups) and
its worker list goes through the topology filter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.manager import VariableManager

from ansible_collections.polylith.synapse.plugins.plugin_utils import shared_inputs as si
from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)

INVENTORIES = Path(__file__).resolve().parents[3] / "inventories"


def read(name):
    """The inventory's groups and each host's variables (lookups left unrendered)."""
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(INVENTORIES / name / "hosts.yml")])
    manager = VariableManager(loader=loader, inventory=inventory)
    hostvars = {host.name: manager.get_vars(host=host) for host in inventory.get_hosts()}
    groups = {group: [h.name for h in inventory.groups[group].get_hosts()] for group in inventory.groups}
    return groups, hostvars


def derive(name, inventory=None):
    groups, hostvars = inventory or read(name)
    shared = hostvars[groups["synapse_main"][0]]
    # Host addresses the way the topology reads them (synapse_address, else ansible_host).
    plain = {h: {k: v for k, v in hv.items() if k in ("ansible_host", "synapse_address")} for h, hv in hostvars.items()}
    return build_topology(
        shared.get("synapse_workers"),
        preset=shared.get("synapse_worker_preset"),
        groups=groups,
        hostvars=plain,
    )


@pytest.mark.parametrize("name", sorted(p.name for p in INVENTORIES.iterdir() if (p / "hosts.yml").is_file()))
def test_every_example_inventory_derives_a_deployment(name):
    topo = derive(name)
    assert topo["main"]["host"]
    assert topo["workers"]


def test_the_multi_host_example_spreads_what_its_comments_say():
    topo = derive("multi-host")
    edge, db = "matrix.example.org", "db.example.internal"
    workers = {"worker1.example.internal", "worker2.example.internal"}
    assert topo["main"]["host"] == edge
    placed = {w["name"]: w["host"] for w in topo["workers"]}
    assert placed["persister"] == edge and placed["sender"] == edge
    for group in ("sync", "client", "fedin"):
        assert {placed[f"{group}1"], placed[f"{group}2"]} == workers
    # The database host runs no Synapse process; both backends live there and
    # listen on TCP for the other hosts, reached at their private addresses.
    assert db not in {w["host"] for w in topo["workers"]}
    for backend in ("postgres", "redis"):
        assert topo["backends"][backend]["host"] == db
        assert topo["backends"][backend]["listen_tcp"] is True
    assert topo["shared_config"]["instance_map"]["main"]["host"] == "10.0.0.10"
    # nginx on the edge reaches the remote sync workers over TCP.
    assert all(not s.startswith("unix:") for s in topo["nginx"]["upstreams"]["synapse_synchrotron"]["servers"])


@pytest.mark.parametrize("name", sorted(p.name for p in INVENTORIES.iterdir() if (p / "hosts.yml").is_file()))
def test_every_example_inventory_passes_the_input_checks(name):
    # The secret lookups stay unrendered here; their values are 40 letters and digits.
    groups, hostvars = read(name)
    for values in hostvars.values():
        for secret in ("synapse_database_password", "synapse_redis_password"):
            if "lookup('ansible.builtin.password'" in values.get(secret, ""):
                values[secret] = "x" * 40
    assert si.input_problems(groups, hostvars) == []
    topo = derive(name, (groups, hostvars))
    assert si.input_problems(groups, hostvars, deployment=topo) == []
