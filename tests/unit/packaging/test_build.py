"""What a build of the collection ships, and that its metadata agrees with itself."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
import tarfile

import pytest
import yaml
from ansible.galaxy.dependency_resolution.versioning import meets_requirements
from ansible.release import __version__ as ANSIBLE_CORE_VERSION
from packaging.specifiers import SpecifierSet

from conftest import ROOT

HOME = "https://github.com/polylith/synapse"

# The top-level entries a user of the collection gets, and nothing else.
SHIPPED = {
    "CHANGELOG.md",
    "FILES.json",
    "LICENSE",
    "MANIFEST.json",
    "README.md",
    "changelogs",
    "docs",
    "inventories",
    "meta",
    "playbooks",
    "plugins",
    "roles",
}
SHIPPED_CHANGELOGS = {"changelogs/changelog.yaml", "changelogs/config.yaml"}

# Local state that a checkout collects, left out of the copy that is built
# (.collections links back to the checkout) and then faked in it.
LOCAL_STATE = (".git", ".venv", ".collections", ".cache", ".lab", ".ansible", ".pytest_cache",
               ".mypy_cache", ".ruff_cache", "__pycache__", "*.tar.gz", ".plugin-cache.yaml")
TOOL_DROPPINGS = {
    # ansible-lint's nested copy of the collection, the issue this test guards.
    ".ansible/collections/ansible_collections/polylith/synapse/galaxy.yml": "namespace: polylith\n",
    ".ansible/roles/placeholder.yml": "---\n",
    ".pytest_cache/v/cache/lastfailed": "{}\n",
    ".mypy_cache/3.11/cache.json": "{}\n",
    ".ruff_cache/CACHEDIR.TAG": "",
    ".cache/ansible-test/.ansible/test/cache/get_pip_24_2.py": "",
    ".venv/bin/python": "",
    ".lab/inventory.yml": "---\n",
    ".collections/ansible_collections/polylith/synapse/README.md": "",
    "tests/output/junit/python3.11-sanity.xml": "",
    "plugins/filter/__pycache__/synapse_topology.cpython-311.pyc": "",
    "changelogs/fragments/some-change.yml": "---\nminor_changes:\n  - Something.\n",
    "changelogs/.plugin-cache.yaml": "---\n",
    "polylith-synapse-0.0.1.tar.gz": "",
    "elsewhere.tar.gz": "",
}


def build(source, output):
    subprocess.run(
        ["ansible-galaxy", "collection", "build", "--output-path", str(output), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (tarball,) = output.glob("*.tar.gz")
    return tarball


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The collection built from a copy of the checkout with tool droppings in it."""
    source = tmp_path_factory.mktemp("checkout") / "synapse"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(*LOCAL_STATE))
    for path, content in TOOL_DROPPINGS.items():
        (source / path).parent.mkdir(parents=True, exist_ok=True)
        (source / path).write_text(content)
    tarball = build(source, tmp_path_factory.mktemp("dist"))
    with tarfile.open(tarball) as archive:
        members = {member.name: member for member in archive.getmembers()}
        manifest = json.load(archive.extractfile("MANIFEST.json"))
        license_text = archive.extractfile("LICENSE").read().decode()
    return {"source": source, "tarball": tarball, "members": members,
            "manifest": manifest, "license": license_text}


def test_only_what_a_user_needs_ships(built):
    top = {name.split("/")[0] for name in built["members"]}
    assert top == SHIPPED, (
        f"unexpected: {sorted(top - SHIPPED)}, missing: {sorted(SHIPPED - top)}; "
        "add tool caches and development files to build_ignore in galaxy.yml"
    )


def test_no_cache_or_build_leftover_ships_at_any_depth(built):
    leftovers = [
        name for name in built["members"]
        if set(name.split("/")) & {".ansible", ".pytest_cache", ".cache", ".venv", "__pycache__", "fragments"}
        or name.endswith((".pyc", ".tar.gz", ".plugin-cache.yaml"))
    ]
    assert leftovers == []


def test_changelogs_ship_without_fragments(built):
    shipped = {name for name in built["members"] if name.startswith("changelogs/")}
    assert shipped == SHIPPED_CHANGELOGS


def test_every_file_of_the_shipped_directories_ships(built):
    """build_ignore leaves out the droppings and fragments, not part of the content."""
    source = built["source"]
    droppings = set(TOOL_DROPPINGS)
    expected = {
        str(path.relative_to(source))
        for top in SHIPPED if (source / top).is_dir()
        for path in (source / top).rglob("*")
        if path.is_file()
        and str(path.relative_to(source)) not in droppings
        and not str(path.relative_to(source)).startswith("changelogs/fragments/")
    }
    shipped = {name for name, member in built["members"].items() if member.isfile()}
    assert expected - shipped == set()


def test_metadata_names_the_project_everywhere(built):
    info = built["manifest"]["collection_info"]
    assert (info["namespace"], info["name"]) == ("polylith", "synapse")
    assert info["repository"] == HOME
    assert info["homepage"] == HOME
    assert info["issues"] == f"{HOME}/issues"
    assert info["documentation"].startswith(f"{HOME}/")
    assert "example.invalid" not in json.dumps(info)


def test_license_file_matches_the_declared_license(built):
    assert built["manifest"]["collection_info"]["license"] == ["GPL-3.0-or-later"]
    assert "GNU GENERAL PUBLIC LICENSE" in built["license"]
    assert "Version 3, 29 June 2007" in built["license"]


def requirements_yml():
    data = yaml.safe_load((ROOT / "requirements.yml").read_text())
    return {entry["name"]: entry["version"] for entry in data["collections"]}


def test_requirements_yml_lists_galaxy_dependencies(built):
    assert requirements_yml() == built["manifest"]["collection_info"]["dependencies"]


def shipped_collection(fqcn):
    namespace, name = fqcn.split(".")
    return sysconfig.get_paths()["purelib"] + f"/ansible_collections/{namespace}/{name}/MANIFEST.json"


@pytest.mark.parametrize("collection", sorted(requirements_yml()))
def test_the_ansible_package_ships_versions_in_range(collection):
    """The `ansible` release requirements.txt installs ships what requirements.yml asks for."""
    with open(shipped_collection(collection)) as handle:
        version = json.load(handle)["collection_info"]["version"]
    assert meets_requirements(version, requirements_yml()[collection]), (
        f"ansible ships {collection} {version}, outside requirements.yml's {requirements_yml()[collection]}"
    )


FQCN = re.compile(r"\b([a-z][a-z0-9_]*)\.([a-z][a-z0-9_]*)\.[a-z][a-z0-9_]*\b")


def used_collections():
    """Collections whose modules or plugins the roles and playbooks name."""
    purelib = sysconfig.get_paths()["purelib"]
    used = set()
    for path in [*ROOT.glob("roles/**/*.yml"), *ROOT.glob("roles/**/*.j2"), *ROOT.glob("playbooks/*.yml")]:
        for namespace, name in FQCN.findall(path.read_text()):
            if (namespace, name) in {("ansible", "builtin"), ("polylith", "synapse")}:
                continue
            if os.path.isdir(f"{purelib}/ansible_collections/{namespace}/{name}"):
                used.add(f"{namespace}.{name}")
    return used


def test_dependencies_are_the_collections_the_roles_use():
    assert used_collections() == set(requirements_yml())


def test_requires_ansible_admits_the_ansible_core_the_tests_run():
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    assert ANSIBLE_CORE_VERSION in SpecifierSet(runtime["requires_ansible"])
    for role_meta in ROOT.glob("roles/*/meta/main.yml"):
        minimum = yaml.safe_load(role_meta.read_text())["galaxy_info"]["min_ansible_version"]
        assert f"{minimum}.0" in SpecifierSet(runtime["requires_ansible"]), role_meta
