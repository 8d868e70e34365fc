"""The Synapse roles' preflight refuses a metrics address the host does not have.

The first play checks the form of synapse_metrics_address (an IP address,
never a wildcard); only the host's facts tell whether the host has it. Here
the _deployment role's expression is rendered the way Ansible renders it,
against facts as the network subset reports them.
"""

from __future__ import annotations

import warnings

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template

from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from conftest import ROOT

ROLE = ROOT / "roles" / "_deployment"
HOSTS = {"hosts": {"app1": "10.0.0.1", "app2": "10.0.0.2"}, "main_host": "app1"}
WORKERS = [{"name": "sync", "types": ["synchrotron"], "count": 2, "hosts": ["app1", "app2"]}]
# What the network facts hold: no loopback, IPv6 link-local included.
FACTS = {
    "app1": {"all_ipv4_addresses": ["10.0.0.1", "192.0.2.1"], "all_ipv6_addresses": ["fe80::1", "2001:db8::1"]},
    "app2": {"all_ipv4_addresses": ["10.0.0.2"], "all_ipv6_addresses": []},
}


def foreign(host, addresses, facts=FACTS):
    """___deployment_metrics_foreign_addresses of ``host``, rendered."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        init_plugin_loader()
    topo = build_topology(WORKERS, metrics={"enabled": True, "addresses": addresses}, **HOSTS)
    loader = DataLoader()
    variables = loader.load_from_file(str(ROLE / "vars" / "main.yml"), trusted_as_template=True)
    variables.update(inventory_hostname=host, polylith_synapse_deployment=topo, ansible_facts=facts.get(host, {}))
    templar = Templar(loader=loader, variables=variables)
    return templar.template(trust_as_template("{{ ___deployment_metrics_foreign_addresses }}"))


@pytest.mark.parametrize(
    "addresses",
    [
        {},  # loopback, the default: always there
        {"app1": "127.0.0.2", "app2": "::1"},
        {"app1": "10.0.0.1", "app2": "10.0.0.2"},  # each host's own
        {"app1": "192.0.2.1"},  # another address app1 has
        {"app1": "2001:db8::1"},
    ],
)
def test_an_address_the_host_has_passes(addresses):
    assert foreign("app1", addresses) == []
    assert foreign("app2", addresses) == []


def test_an_address_the_host_lacks_is_named():
    # app2's address on app1: app1's processes could not bind it.
    assert foreign("app1", {"app1": "10.0.0.2"}) == ["10.0.0.2"]
    assert foreign("app2", {"app1": "10.0.0.2"}) == []
    assert foreign("app2", {"app2": "2001:db8::1"}) == ["2001:db8::1"]


def test_the_preflight_asserts_it_where_facts_were_gathered():
    (task,) = yaml.safe_load((ROLE / "tasks" / "metrics.yml").read_text())
    assert task["ansible.builtin.assert"]["that"] == "___deployment_metrics_foreign_addresses | length == 0"
    message = task["ansible.builtin.assert"]["fail_msg"]
    assert "synapse_metrics_address of host {{ inventory_hostname }}" in message and "127.0.0.1" in message
    assert task["when"] == ["polylith_synapse_deployment.metrics.enabled", "ansible_facts.all_ipv4_addresses is defined"]
    for role in ("synapse_main", "synapse_worker"):
        tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / "main.yml").read_text())
        imports = [t.get("ansible.builtin.import_role", {}) for t in tasks]
        assert {"name": "polylith.synapse._deployment", "tasks_from": "metrics"} in imports, role
