"""Every role documents exactly its defaults, and has the parts operators expect."""

from __future__ import annotations

import pytest
import yaml

from conftest import ROOT

ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())


def test_the_five_roles_exist():
    assert set(ROLES) >= {"synapse_main", "synapse_worker"}


@pytest.mark.parametrize("role", ROLES)
def test_argument_spec_documents_every_default(role):
    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}
    spec = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(defaults) <= set(options), f"undocumented: {sorted(set(defaults) - set(options))}"
    assert set(options) <= set(defaults), f"documented but not in defaults: {sorted(set(options) - set(defaults))}"
    for name, option in options.items():
        assert option.get("description"), f"{name} has no description"
        assert option.get("type"), f"{name} has no type"


@pytest.mark.parametrize("role", ROLES)
def test_variables_carry_the_role_prefix(role):
    defaults = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text()) or {}
    for name in defaults:
        assert name.startswith(f"{role}_"), name
    internals = yaml.safe_load((ROOT / "roles" / role / "vars" / "main.yml").read_text()) or {}
    for name in internals:
        assert name.startswith(f"__{role}_"), name


@pytest.mark.parametrize("role", ROLES)
def test_role_has_readme_with_data_safety_section(role):
    readme = (ROOT / "roles" / role / "README.md").read_text()
    assert "Idempotence" in readme and "data safety" in readme


@pytest.mark.parametrize("role", ROLES)
def test_templates_carry_the_managed_header(role):
    for template in (ROOT / "roles" / role / "templates").glob("*.j2"):
        assert "ansible_managed | comment" in template.read_text(), template.name
