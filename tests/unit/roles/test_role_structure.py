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
        text = template.read_text()
        if template.name.endswith("_files.json.j2"):
            # A path -> content mapping for synapse_files (JSON: no comment
            # line): a content from a template of the role carries the header
            # itself; a secret's file holds the secret alone.
            assert "lookup('ansible.builtin.template', '" in text or template.name == "secret_files.json.j2", template.name
            continue
        assert "ansible_managed | comment" in text, template.name


PHASES = ("preflight", "install", "configure", "run")
PUBLIC_ROLES = [role for role in ROLES if not role.startswith("_")]


@pytest.mark.parametrize("role", PUBLIC_ROLES)
def test_phases_carry_uniform_tags(role):
    """`<role>` selects everything; each `<role>_<phase>` selects its phase and the checks."""
    tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / "main.yml").read_text())
    phase_tags = {f"{role}_{phase}" for phase in PHASES}
    for task in tasks:
        tags = set(task.get("tags") or [])
        assert role in tags, f"{task['name']!r} lacks the role-wide tag {role}"
        phases = tags & phase_tags
        assert phases, f"{task['name']!r} carries no phase tag of {sorted(phase_tags)}"
        if task.get("ansible.builtin.import_tasks") == "preflight.yml":
            assert phases == phase_tags, f"the preflight must run with every phase tag, has {sorted(phases)}"
        else:
            assert len(phases) == 1, f"{task['name']!r} belongs to several phases: {sorted(phases)}"
        stray = {t for t in tags - phases - {role} if not t.startswith(f"{role}_")}
        assert not stray, f"{task['name']!r} carries tags of another role: {sorted(stray)}"


@pytest.mark.parametrize("role", PUBLIC_ROLES)
def test_roles_depend_on_the_one_derivation(role):
    meta = yaml.safe_load((ROOT / "roles" / role / "meta" / "main.yml").read_text())
    assert {"role": "polylith.synapse._deployment"} in meta["dependencies"]


def test_the_deployment_is_derived_in_one_place():
    """One call of the topology filter in the shipped roles and playbooks: the internal role's."""
    calls = [
        path.relative_to(ROOT).as_posix()
        for top in ("roles", "playbooks", "extensions")
        for path in (ROOT / top).rglob("*.yml")
        if "polylith.synapse.synapse_topology(" in path.read_text()
    ]
    assert calls == ["roles/_deployment/tasks/main.yml"]


def _registered(node):
    """Every name a task list registers, at any depth (blocks included)."""
    if isinstance(node, list):
        for item in node:
            yield from _registered(item)
    elif isinstance(node, dict):
        if isinstance(node.get("register"), str):
            yield node["register"]
        for key in ("block", "rescue", "always"):
            yield from _registered(node.get(key))


@pytest.mark.parametrize("role", ROLES)
def test_a_registered_result_never_hides_a_role_variable(role):
    # A registered name outranks the role's vars: a task registering the name
    # of a vars/main.yml or defaults entry replaces that value for every later
    # task (and for the same task's own `when`, once it is skipped).
    variables = set()
    for path in (ROOT / "roles" / role).glob("*/main.yml"):
        if path.parent.name in ("vars", "defaults"):
            variables |= set(yaml.safe_load(path.read_text()) or {})
    registered = set()
    for path in (ROOT / "roles" / role / "tasks").glob("*.yml"):
        registered |= set(_registered(yaml.safe_load(path.read_text())))
    assert registered & variables == set()


def test_the_registered_names_are_found():
    # The walk above sees what the roles register (nginx's preflight among them).
    found = set()
    for path in (ROOT / "roles").glob("*/tasks/*.yml"):
        found |= set(_registered(yaml.safe_load(path.read_text())))
    assert {"__nginx_tls_given_files", "__nginx_acme_ca_bundle_stat"} <= found
