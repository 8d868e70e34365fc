"""The lab inventory opens the admin API to the controller alone.

tests/lab/deploy creates the admin user through nginx from the controller,
which the lab hosts see connecting from the lab bridge's address (lab.py's
GATEWAY, the first address of LAB_SUBNET). The inventory derives that address
itself; here it is rendered the way Ansible renders it and compared with
lab.py's, for the default subnet and another one.
"""

from __future__ import annotations

import importlib.util
import warnings

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template

from ansible_collections.polylith.synapse.plugins.plugin_utils import shared_inputs as si
from conftest import ROOT

LAB = ROOT / "tests" / "lab"
GROUP_VARS = LAB / "inventory" / "group_vars" / "all.yml"

def lab_gateway(monkeypatch, subnet):
    """lab.py's GATEWAY for LAB_SUBNET=subnet (None: its default); lab.py only reads settings on import."""
    if subnet is None:
        monkeypatch.delenv("LAB_SUBNET", raising=False)
    else:
        monkeypatch.setenv("LAB_SUBNET", subnet)
    spec = importlib.util.spec_from_file_location("polylith_lab_settings", LAB / "lab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.GATEWAY)


def allowed_clients():
    """nginx_admin_api_allowed_clients of the lab inventory, rendered (its lookup reads LAB_SUBNET)."""
    with warnings.catch_warnings():
        # Not at import: collecting the other modules needs the plain importer
        # first, and the template tests may have initialised it already.
        warnings.simplefilter("ignore", UserWarning)
        init_plugin_loader()
    loader = DataLoader()
    variables = loader.load_from_file(str(GROUP_VARS), trusted_as_template=True)
    templar = Templar(loader=loader, variables=variables)
    return templar.template(trust_as_template("{{ nginx_admin_api_allowed_clients }}"))


@pytest.mark.parametrize("subnet", [None, "10.44.0.0/16", "172.31.9.128/25"])
def test_the_admin_api_answers_the_controller_alone(monkeypatch, subnet):
    gateway = lab_gateway(monkeypatch, subnet)
    clients = allowed_clients()
    assert clients == [gateway]
    assert si.check_allowed_clients(clients) == []


def test_the_lab_exports_metrics_on_loopback_to_no_other_host():
    """What verify's metrics checks rely on: metrics on, neither bound elsewhere nor admitted from elsewhere."""
    variables = DataLoader().load_from_file(str(GROUP_VARS))
    assert variables["synapse_metrics_enabled"] is True
    assert "synapse_metrics_address" not in variables
    assert "synapse_metrics_allowed_clients" not in variables
    for host_vars in (LAB / "inventory").rglob("host_vars/*"):
        assert "synapse_metrics" not in host_vars.read_text(), host_vars
