"""synapse_main's and synapse_worker's config templates, rendered by Ansible's own templating.

Each layout is rendered with the roles' defaults and vars from a topology the
real filter builds, into a scratch config directory holding the files the
configs point at, and Synapse's own loader (`python -m synapse.config`) judges
homeserver.yaml, workers.yaml and each worker's file together, as the roles'
`validate` does on a host. The Prometheus scrape config is checked against
the topology it was rendered from.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template
from signedjson.key import generate_signing_key, write_signing_keys

from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from conftest import ROOT

MAIN = ROOT / "roles" / "synapse_main"
WORKER_TEMPLATE = ROOT / "roles" / "synapse_worker" / "templates" / "worker.yaml.j2"

init_plugin_loader()

INVENTORY = {
    "synapse_server_name": "example.org",
    "synapse_public_host": "matrix.example.org",
    "synapse_database_password": "not-a-secret",
    "inventory_hostname": "app1",
    "ansible_managed": "Ansible managed: polylith.synapse test",
}
HOSTS = {"hosts": {"app1": "10.0.0.1"}, "main_host": "app1"}
WORKERS = [
    {"name": "sync", "types": ["synchrotron"], "count": 2},
    {"name": "writers", "types": ["typing", "to_device"]},
    {"name": "sender", "types": ["federation_sender"]},
]


def render(template, topo, config_dir, **extra):
    """A template rendered the way the template module does, with synapse_main's defaults and vars."""
    loader = DataLoader()
    variables = {}
    for path in ("defaults/main.yml", "vars/main.yml"):
        variables.update(loader.load_from_file(str(MAIN / path), trusted_as_template=True))
    variables.update(INVENTORY)
    variables.update(
        polylith_synapse_deployment=topo,
        synapse_main_config_dir=str(config_dir),
        synapse_main_data_dir=str(config_dir / "data"),
        **extra,
    )
    return Templar(loader=loader, variables=variables).template(trust_as_template(template.read_text()))


def deploy(tmp_path, topo, **extra):
    """Every config file the roles write for ``topo``, in a scratch config directory."""
    config_dir = tmp_path / "etc"
    for sub in ("secrets", "log", "workers", "data"):
        (config_dir / sub).mkdir(parents=True, exist_ok=True)
    with (config_dir / "secrets" / "signing.key").open("w") as handle:
        write_signing_keys(handle, [generate_signing_key("a_test")])
    for secret in ("macaroon_secret_key", "form_secret", "registration_shared_secret", "worker_replication_secret"):
        (config_dir / "secrets" / secret).write_text("not-a-secret")
    files = {}
    for name in ("homeserver.yaml", "workers.yaml"):
        files[name] = config_dir / name
        files[name].write_text(render(MAIN / "templates" / f"{name}.j2", topo, config_dir, **extra))
    for process in ["main", *(w["name"] for w in topo["workers"])]:
        (config_dir / "log" / f"{process}.yaml").write_text("version: 1\n")
    for worker in topo["workers"]:
        path = config_dir / "workers" / f"{worker['name']}.yaml"
        path.write_text(render(WORKER_TEMPLATE, topo, config_dir, synapse_worker_instance=worker, **extra))
        files[worker["name"]] = path
    return files


def synapse_config(*paths, expect_ok=True):
    """Synapse's loader judges the files as the roles' validate does (no secret written inline)."""
    args = [sys.executable, "-m", "synapse.config", "--no-secrets-in-config"]
    for path in paths:
        args += ["-c", str(path)]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    if expect_ok:
        assert result.returncode == 0 and "Config parses OK!" in result.stdout, result.stderr or result.stdout
    return result


# (workers, metrics on, the host's synapse_metrics_address: None keeps loopback)
LAYOUTS = {
    "monolith": (None, False, None),
    "monolith-metrics": (None, True, None),
    "workers": (WORKERS, False, None),
    "workers-metrics": (WORKERS, True, None),
    "workers-metrics-private": (WORKERS, True, "10.0.0.1"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_synapse_accepts_the_rendered_configs(tmp_path, layout):
    workers, metrics, address = LAYOUTS[layout]
    topo = build_topology(
        workers or [], metrics={"enabled": metrics, "addresses": {"app1": address}}, **HOSTS
    )
    files = deploy(tmp_path, topo)
    homeserver = yaml.safe_load(files["homeserver.yaml"].read_text())
    shared = yaml.safe_load(files["workers.yaml"].read_text())
    listener_types = [listener["type"] for listener in homeserver["listeners"]]
    if metrics:
        # enable_metrics reaches Synapse with workers and without.
        assert shared["enable_metrics"] is True
        assert listener_types[-1] == "metrics"
        assert homeserver["listeners"][-1] == {
            "type": "metrics",
            "port": 19090,
            "bind_addresses": [address or "127.0.0.1"],
        }
    else:
        assert "enable_metrics" not in shared
        assert "metrics" not in listener_types
    if not workers:
        assert shared["redis"] == {"enabled": False}
    synapse_config(files["homeserver.yaml"], files["workers.yaml"])
    for worker in topo["workers"]:
        rendered = yaml.safe_load(files[worker["name"]].read_text())
        assert ("metrics" in [listener["type"] for listener in rendered["worker_listeners"]]) is metrics
        if metrics:
            assert rendered["worker_listeners"][-1]["bind_addresses"] == [address or "127.0.0.1"]
        synapse_config(files["homeserver.yaml"], files["workers.yaml"], files[worker["name"]])


@pytest.mark.parametrize("address", [None, "10.0.0.1"], ids=["loopback", "private"])
def test_the_scrape_config_is_the_topologys(tmp_path, address):
    topo = build_topology(WORKERS, metrics={"enabled": True, "addresses": {"app1": address}}, **HOSTS)
    text = render(MAIN / "templates" / "prometheus-scrape.yml.j2", topo, tmp_path)
    assert text.splitlines()[:3] == ["#", "# Ansible managed: polylith.synapse test", "#"]
    scrape = yaml.safe_load(text)
    assert scrape == topo["metrics"]["scrape_config"]
    (job,) = scrape["scrape_configs"]
    bound = address or "127.0.0.1"
    assert [static["targets"] for static in job["static_configs"]] == [
        [f"{bound}:19090"], [f"{bound}:19091"], [f"{bound}:19092"], [f"{bound}:19093"], [f"{bound}:19094"],
    ]  # fmt: skip
    # Label values stay strings once written (Prometheus refuses numbers).
    assert "index: '1'" in text


def test_the_scrape_config_path_is_a_documented_role_variable():
    defaults = yaml.safe_load((MAIN / "defaults" / "main.yml").read_text())
    assert defaults["synapse_main_prometheus_scrape_file"] == "{{ synapse_main_config_dir }}/prometheus-scrape.yml"
    tasks = yaml.safe_load((MAIN / "tasks" / "configure.yml").read_text())
    by_name = {task["name"]: task for task in tasks}
    written = by_name["Write the Prometheus scrape config"]
    assert written["polylith.synapse.synapse_files"]["mode"] == "0644"
    assert "{synapse_main_prometheus_scrape_file: " in written["polylith.synapse.synapse_files"]["files"]
    assert written["when"] == "__synapse_main_on_main_host and __synapse_main_metrics.enabled"
    removed = by_name["Remove the Prometheus scrape config while metrics are off"]
    assert removed["ansible.builtin.file"]["state"] == "absent"
    assert removed["when"] == "__synapse_main_on_main_host and not __synapse_main_metrics.enabled"


# --- secrets stay in their files ------------------------------------------------

SECRETS = {
    "synapse_database_password": "db-secret-3f9a",
    "synapse_redis_password": "redis-secret-8c1d",
    "synapse_main_macaroon_secret_key": "macaroon-secret-77ab",
    "synapse_main_form_secret": "form-secret-12cd",
    "synapse_main_registration_shared_secret": "registration-secret-5e5e",
    "synapse_main_worker_replication_secret": "replication-secret-9f9f",
}


def test_no_secret_is_written_into_the_configs(tmp_path):
    """Every secret is a *_path (or the passfile), so the configs hold none of their values."""
    hosts = {"hosts": {"app1": "10.0.0.1", "app2": "10.0.0.2"}, "main_host": "app1"}
    workers = [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}]
    topo = build_topology(workers, **hosts)
    assert topo["replication_crosses_hosts"] and topo["backends"]["redis"]["listen_tcp"]
    supplied = {**SECRETS, "synapse_main_signing_key": "ed25519 a_x " + "A" * 43}
    files = deploy(tmp_path, topo, **supplied)
    texts = {name: path.read_text() for name, path in files.items()}
    for name, text in texts.items():
        for variable, value in supplied.items():
            assert value not in text, f"{variable}'s value is written into {name}"
    homeserver = yaml.safe_load(texts["homeserver.yaml"])
    shared = yaml.safe_load(texts["workers.yaml"])
    secrets = str(tmp_path / "etc" / "secrets")
    assert homeserver["signing_key_path"] == f"{secrets}/signing.key"
    assert homeserver["macaroon_secret_key_path"] == f"{secrets}/macaroon_secret_key"
    assert homeserver["form_secret_path"] == f"{secrets}/form_secret"
    assert homeserver["registration_shared_secret_path"] == f"{secrets}/registration_shared_secret"
    assert homeserver["database"]["args"]["passfile"] == f"{secrets}/pgpass"
    assert "password" not in homeserver["database"]["args"]
    assert shared["worker_replication_secret_path"] == f"{secrets}/worker_replication_secret"
    assert shared["redis"]["password_path"] == f"{secrets}/redis_password"
    assert "password" not in shared["redis"]


def test_a_secret_written_inline_is_refused(tmp_path):
    """--no-secrets-in-config, as the units and validate pass it: extra config cannot inline a secret."""
    topo = build_topology([], **HOSTS)
    files = deploy(tmp_path, topo, synapse_main_extra_config={"turn_shared_secret": "inline-turn-secret"})
    result = synapse_config(files["homeserver.yaml"], files["workers.yaml"], expect_ok=False)
    assert result.returncode != 0
    assert "in-line secret" in result.stderr and "turn_shared_secret" in result.stderr


def test_the_units_refuse_inline_secrets(tmp_path):
    topo = build_topology([], **HOSTS)
    for unit in ("matrix-synapse.service", "matrix-synapse-worker@.service"):
        text = render(MAIN / "templates" / f"{unit}.j2", topo, tmp_path)
        (exec_start,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
        assert " --no-secrets-in-config " in exec_start, exec_start


@pytest.mark.parametrize(
    ("supplied", "written"),
    [
        ("ed25519 a_AbCd " + "B" * 43, "ed25519 a_AbCd " + "B" * 43 + "\n"),
        ("  ed25519\ta_AbCd   " + "B" * 43 + "\n\n", "ed25519 a_AbCd " + "B" * 43 + "\n"),
    ],
)
def test_a_supplied_key_is_written_as_synapse_writes_one(tmp_path, supplied, written):
    """One line, single blanks and a final newline: what signedjson's write_signing_keys writes."""
    topo = build_topology([], **HOSTS)
    tasks = yaml.safe_load((MAIN / "tasks" / "secrets.yml").read_text())
    (task,) = [t for t in tasks if t["name"] == "Write the supplied signing key"]
    content = task["ansible.builtin.copy"]["content"]
    text = render_expression(content[2:content.index("}}")].strip(), topo, tmp_path, synapse_main_signing_key=supplied)
    assert text + content[content.index("}}") + 2:] == written


def test_unset_secrets_are_generated(tmp_path):
    topo = build_topology([], **HOSTS)
    assert render_expression("__synapse_main_signing_key_content", topo, tmp_path) is None
    assert render_expression("__synapse_main_supplied_secrets", topo, tmp_path) == {
        "macaroon_secret_key": None, "form_secret": None, "registration_shared_secret": None,
        "worker_replication_secret": None,
    }  # fmt: skip
    supplied = render_expression("__synapse_main_supplied_secrets", topo, tmp_path, **SECRETS)
    assert supplied["form_secret"] == SECRETS["synapse_main_form_secret"]
    assert supplied["worker_replication_secret"] == SECRETS["synapse_main_worker_replication_secret"]


def render_expression(expression, topo, config_dir, **extra):
    """A variable of the role as Ansible renders it, with the role's defaults and vars."""
    loader = DataLoader()
    variables = {}
    for path in ("defaults/main.yml", "vars/main.yml"):
        variables.update(loader.load_from_file(str(MAIN / path), trusted_as_template=True))
    variables.update(INVENTORY)
    variables.update(polylith_synapse_deployment=topo, synapse_main_config_dir=str(config_dir), **extra)
    return Templar(loader=loader, variables=variables).template(trust_as_template("{{ " + expression + " }}"))


# --- jemalloc and the cache memory budget -------------------------------------------

FACTS = {"architecture": "x86_64", "memtotal_mb": 8192}


def synapse_read(key, *paths):
    """A setting as Synapse parsed it (`python -m synapse.config read KEY`)."""
    args = [sys.executable, "-m", "synapse.config", "read", key, "--no-secrets-in-config"]
    for path in paths:
        args += ["-c", str(path)]
    result = subprocess.run(
        args, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )
    assert result.returncode == 0, result.stderr or result.stdout
    return result.stdout


def test_synapse_takes_the_hosts_cache_budget(tmp_path):
    """8 GiB beside PostgreSQL, main and four workers: 8192 x 0.5 / 5 MiB each, in homeserver.yaml."""
    topo = build_topology(WORKERS, **HOSTS)
    files = deploy(tmp_path, topo, ansible_facts=FACTS, synapse_jemalloc=True)
    homeserver = yaml.safe_load(files["homeserver.yaml"].read_text())
    assert homeserver["caches"] == {
        "cache_autotuning": {"max_cache_memory_usage": "819M", "target_cache_memory_usage": "614M", "min_cache_ttl": "5m"}
    }
    # Every process reads homeserver.yaml: each worker starts with the same ceiling.
    for worker in topo["workers"]:
        assert "caches" not in yaml.safe_load(files[worker["name"]].read_text())
    # As Synapse's cache expiry reads it: bytes and milliseconds.
    output = synapse_read("caches.cache_autotuning", files["homeserver.yaml"], files["workers.yaml"], files["sync1"])
    assert ast.literal_eval(output.split("caches.cache_autotuning: ", 1)[1]) == {
        "max_cache_memory_usage": 819 * 2**20,
        "target_cache_memory_usage": 614 * 2**20,
        "min_cache_ttl": 300_000,
    }, output


@pytest.mark.parametrize(
    "extra",
    [
        {"synapse_jemalloc": False, "ansible_facts": FACTS},
        {"ansible_facts": FACTS},  # jemalloc off by default
        {"synapse_jemalloc": True, "ansible_facts": {"architecture": "x86_64"}},  # memory unknown
        {"synapse_jemalloc": True},  # no facts at all
    ],
    ids=["jemalloc-off", "jemalloc-off-by-default", "no-memory-fact", "no-facts"],
)
def test_no_budget_without_jemalloc_or_the_hosts_memory(tmp_path, extra):
    topo = build_topology(WORKERS, **HOSTS)
    files = deploy(tmp_path, topo, **extra)
    assert "caches" not in yaml.safe_load(files["homeserver.yaml"].read_text())
    synapse_config(files["homeserver.yaml"], files["workers.yaml"])


def test_the_share_is_a_role_variable(tmp_path):
    topo = build_topology([], **HOSTS)
    files = deploy(tmp_path, topo, ansible_facts=FACTS, synapse_jemalloc=True, synapse_main_cache_memory_share=0.25)
    autotuning = yaml.safe_load(files["homeserver.yaml"].read_text())["caches"]["cache_autotuning"]
    assert autotuning["max_cache_memory_usage"] == "2048M"


def test_the_operators_caches_win(tmp_path):
    topo = build_topology([], **HOSTS)
    # Other cache settings are merged with the budget ...
    files = deploy(tmp_path, topo, ansible_facts=FACTS, synapse_jemalloc=True,
                   synapse_main_extra_config={"caches": {"global_factor": 2.0}})
    caches = yaml.safe_load(files["homeserver.yaml"].read_text())["caches"]
    assert caches["global_factor"] == 2.0
    assert caches["cache_autotuning"]["max_cache_memory_usage"] == "4096M"
    synapse_config(files["homeserver.yaml"], files["workers.yaml"])
    # ... an own cache_autotuning replaces it whole, and null turns it off.
    own = {"max_cache_memory_usage": "1G", "target_cache_memory_usage": "800M", "min_cache_ttl": "1m"}
    for value in (own, None):
        files = deploy(
            tmp_path, topo, ansible_facts=FACTS, synapse_jemalloc=True,
            synapse_main_extra_config={"caches": {"cache_autotuning": value}},
        )
        caches = yaml.safe_load(files["homeserver.yaml"].read_text())["caches"]
        assert caches == {"cache_autotuning": value}
        synapse_config(files["homeserver.yaml"], files["workers.yaml"])


@pytest.mark.parametrize(
    ("facts", "library"),
    [
        ({"architecture": "x86_64"}, "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
        ({"architecture": "armv7l"}, "/usr/lib/arm-linux-gnueabihf/libjemalloc.so.2"),
        ({"architecture": "mips"}, None),
        ({}, None),
    ],
)
def test_the_library_path_follows_the_architecture(tmp_path, facts, library):
    """An architecture the role does not know leaves no path; preflight refuses it while jemalloc is on."""
    topo = build_topology([], **HOSTS)
    assert render_expression("__synapse_main_jemalloc_library", topo, tmp_path, ansible_facts=facts) == library
    (check,) = yaml.safe_load((MAIN / "tasks" / "jemalloc_check.yml").read_text())
    assert check["ansible.builtin.assert"]["that"] == "__synapse_main_jemalloc_library is not none"
    assert check["when"] == "synapse_main_jemalloc | bool"
