"""Synapse itself judges what the topology derives.

For every preset (and a multi-host layout), the shared settings and each
worker's own config are written to YAML next to a minimal homeserver.yaml and
loaded by `python -m synapse.config` from the Synapse release the collection
targets, exactly as Synapse loads them at start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_presets import (
    PRESETS,
)

# requirements.txt installs Synapse: a missing one must fail, never skip.
import synapse
from signedjson.key import generate_signing_key, write_signing_keys

TARGET_SERIES = "1.163."


def test_the_targeted_synapse_release_is_installed():
    assert synapse.__version__.startswith(TARGET_SERIES), synapse.__version__


def _minimal_homeserver(tmp_path, topo):
    key_path = tmp_path / "signing.key"
    with key_path.open("w") as handle:
        write_signing_keys(handle, [generate_signing_key("a_test")])
    log_config = tmp_path / "log.yaml"
    log_config.write_text("version: 1\n")
    config = {
        "server_name": "example.test",
        "report_stats": False,
        "signing_key_path": str(key_path),
        "media_store_path": str(tmp_path / "media"),
        "log_config": str(log_config),
        "pid_file": str(tmp_path / "main.pid"),
        "database": {
            "name": "psycopg2",
            "args": {"user": "synapse", "password": "x", "database": "synapse", "host": "/run/postgresql"},
        },
        "redis": {"enabled": True, "path": "/run/redis/redis-server.sock"},
        "worker_replication_secret": "not-a-secret",
        "macaroon_secret_key": "not-a-secret",
        "form_secret": "not-a-secret",
        "suppress_key_server_warning": True,
        **topo["main"]["config"],
        **topo["shared_config"],
    }
    path = tmp_path / "homeserver.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _synapse_config(*paths):
    args = [sys.executable, "-m", "synapse.config"]
    for path in paths:
        args += ["-c", str(path)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _check_all(tmp_path, topo):
    homeserver = _minimal_homeserver(tmp_path, topo)
    jobs = [(homeserver,)]
    for worker in topo["workers"]:
        path = tmp_path / f"{worker['name']}.yaml"
        path.write_text(yaml.safe_dump(worker["config"]))
        jobs.append((homeserver, path))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda job: (job, _synapse_config(*job)), jobs))
    failures = [
        f"{' + '.join(p.name for p in job)}: {result.stderr.strip() or result.stdout.strip()}"
        for job, result in results
        if result.returncode != 0 or "Config parses OK!" not in result.stdout
    ]
    assert not failures, "\n".join(failures)
    return len(results)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_synapse_accepts_every_preset(tmp_path, name):
    topo = build_topology(None, preset=name, main_host="app1", hosts={"app1": "127.0.0.1"})
    assert _check_all(tmp_path, topo) == 1 + len(topo["workers"])


MULTI_HOST = {
    "main_host": "app1",
    "media_host": "app3",
    "hosts": {"app1": "10.0.0.1", "app2": "10.0.0.2", "app3": "10.0.0.3"},
}
MULTI_HOST_WORKERS = [
    {"name": "writers", "types": ["typing", "to_device", "account_data", "presence", "push_rules"], "hosts": ["app2"]},
    {"name": "persister", "types": ["event_persister"], "count": 2, "hosts": ["app2", "app3"]},
    {"name": "sync", "types": ["synchrotron"], "count": 2, "hosts": ["app1", "app3"]},
    {"name": "media", "types": ["media_repository"], "hosts": ["app3"]},
    {"name": "sender", "types": ["federation_sender"], "count": 2, "hosts": ["app2", "app3"]},
]


def test_synapse_accepts_a_multi_host_layout_over_tcp(tmp_path):
    topo = build_topology(MULTI_HOST_WORKERS, **MULTI_HOST)
    assert "host" in topo["shared_config"]["instance_map"]["writers"]
    assert _check_all(tmp_path, topo) == 1 + len(topo["workers"])


def _synapse_read(key, *paths):
    """A setting as Synapse parsed it (`python -m synapse.config read KEY`)."""
    args = [sys.executable, "-m", "synapse.config", "read", key]
    for path in paths:
        args += ["-c", str(path)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    ("addresses", "main_address", "sender2_address"),
    [
        # The default: loopback on every host.
        (None, "127.0.0.1", "127.0.0.1"),
        # Each host's private address (synapse_metrics_address per host).
        ({"app1": "10.0.0.1", "app3": "10.0.0.3"}, "10.0.0.1", "10.0.0.3"),
        # IPv6 loopback on the main host, a private address on app3.
        ({"app1": "::1", "app3": "10.0.0.3"}, "::1", "10.0.0.3"),
    ],
    ids=["loopback", "private", "ipv6-loopback"],
)
def test_synapse_accepts_metrics_listeners_on_every_process(tmp_path, addresses, main_address, sender2_address):
    topo = build_topology(MULTI_HOST_WORKERS, metrics={"enabled": True, "addresses": addresses}, **MULTI_HOST)
    assert _check_all(tmp_path, topo) == 1 + len(topo["workers"])
    homeserver = tmp_path / "homeserver.yaml"
    assert "metrics.enable_metrics: True" in _synapse_read("metrics.enable_metrics", homeserver)
    # Synapse reads them as its dedicated metrics listeners, on the bind address.
    listeners = _synapse_read("server.listeners", homeserver)
    assert f"TCPListenerConfig(port=19090, bind_addresses=['{main_address}'], type='metrics'" in listeners
    target = next(t for t in topo["metrics"]["targets"] if t["name"] == "sender2")
    assert (target["host"], target["address"]) == ("app3", sender2_address)
    worker_listeners = _synapse_read("worker.worker_listeners", homeserver, tmp_path / "sender2.yaml")
    assert (
        f"TCPListenerConfig(port={target['port']}, bind_addresses=['{sender2_address}'], type='metrics'"
        in worker_listeners
    )


def test_synapse_accepts_a_monolith_with_metrics(tmp_path):
    topo = build_topology(None, metrics={"enabled": True}, main_host="app1", hosts={"app1": "127.0.0.1"})
    assert topo["shared_config"] == {"enable_metrics": True}
    assert _check_all(tmp_path, topo) == 1
    assert "type='metrics'" in _synapse_read("server.listeners", tmp_path / "homeserver.yaml")


def test_synapse_rejects_what_the_filter_refuses(tmp_path):
    """The single-writer rule the filter enforces is Synapse's own."""
    topo = build_topology([{"name": "typing", "types": ["typing"]}], main_host="app1", hosts={"app1": "127.0.0.1"})
    topo["shared_config"]["stream_writers"]["typing"] = ["typing", "main"]
    homeserver = _minimal_homeserver(tmp_path, topo)
    result = _synapse_config(homeserver)
    assert result.returncode != 0
    assert "Must only specify one instance to handle `typing` messages" in result.stderr
