"""The topology's metrics: a listener per process, its ports, and the Prometheus scrape config."""

from __future__ import annotations

import re

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_presets import (
    PRESETS,
)

ON = {"enabled": True}
ONE_HOST = {"hosts": {"app1": "10.0.0.1"}, "main_host": "app1"}
THREE_HOSTS = {
    "hosts": {"app1": "10.0.0.1", "app2": "10.0.0.2", "app3": "10.0.0.3"},
    "main_host": "app1",
}
# Metrics bound to each host's private address (synapse_metrics_address per host).
ON_PRIVATE = {"enabled": True, "addresses": dict(THREE_HOSTS["hosts"])}
# Workers spread over three hosts, two of them sharing a group name.
SPREAD = [
    {"name": "writers", "types": ["typing", "to_device"], "hosts": ["app2"]},
    {"name": "sync", "types": ["synchrotron"], "count": 3, "hosts": ["app2", "app3"]},
    {"name": "sender", "types": ["federation_sender"]},
]


def metrics_listeners(process):
    key = "listeners" if process["name"] == "main" else "worker_listeners"
    return [listener for listener in process["config"][key] if listener["type"] == "metrics"]


def processes(topo):
    return [topo["main"], *topo["workers"]]


# --- off by default ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("metrics", [None, {}, {"enabled": False}, {"enabled": None}, {"enabled": "false"}])
def test_metrics_are_off_by_default(name, metrics):
    topo = build_topology(None, preset=name, metrics=metrics, **ONE_HOST)
    assert topo["metrics"] == {"enabled": False, "targets": [], "scrape_config": None}
    assert "enable_metrics" not in topo["shared_config"]
    for process in processes(topo):
        assert metrics_listeners(process) == [], process["name"]


# --- on: ports and bind addresses ---------------------------------------------------


@pytest.mark.parametrize("metrics", [ON, {"enabled": True, "addresses": {}}, {"enabled": True, "addresses": {"app2": None, "app3": ""}}])
def test_by_default_every_metrics_listener_binds_to_loopback(metrics):
    topo = build_topology(SPREAD, metrics=metrics, **THREE_HOSTS)
    assert topo["shared_config"]["enable_metrics"] is True
    for process in processes(topo):
        (listener,) = metrics_listeners(process)
        assert listener["bind_addresses"] == ["127.0.0.1"], process["name"]
    targets = topo["metrics"]["targets"]
    assert [t["target"] for t in targets] == [f"127.0.0.1:{port}" for port in range(19090, 19096)]
    assert all(t["loopback"] for t in targets)
    # The scrape config names the same (loopback) targets.
    static = topo["metrics"]["scrape_config"]["scrape_configs"][0]["static_configs"]
    assert [c["targets"] for c in static] == [[t["target"]] for t in targets]


def test_each_host_binds_its_metrics_to_its_own_address():
    # app2 names its private address; app1 and app3 keep loopback.
    topo = build_topology(SPREAD, metrics={"enabled": True, "addresses": {"app2": "10.0.0.2"}}, **THREE_HOSTS)
    bound = {t["name"]: (t["address"], t["loopback"]) for t in topo["metrics"]["targets"]}
    assert bound == {
        "main": ("127.0.0.1", True),
        "writers": ("10.0.0.2", False),
        "sync1": ("10.0.0.2", False),
        "sync2": ("127.0.0.1", True),
        "sync3": ("10.0.0.2", False),
        "sender": ("127.0.0.1", True),
    }
    # Another loopback address, or IPv6's, is loopback too.
    topo = build_topology(None, metrics={"enabled": True, "addresses": {"app1": "::1"}}, **ONE_HOST)
    assert [(t["target"], t["loopback"]) for t in topo["metrics"]["targets"]] == [("[::1]:19090", True)]


def test_every_process_gets_a_metrics_listener_on_its_hosts_address():
    topo = build_topology(SPREAD, metrics=ON_PRIVATE, **THREE_HOSTS)
    assert topo["shared_config"]["enable_metrics"] is True
    expected = {
        "main": ("app1", 19090),
        "writers": ("app2", 19091),
        "sync1": ("app2", 19092),
        "sync2": ("app3", 19093),
        "sync3": ("app2", 19094),
        "sender": ("app1", 19095),
    }
    for process in processes(topo):
        host, port = expected[process["name"]]
        address = THREE_HOSTS["hosts"][host]
        assert process["host"] == host
        # Synapse's dedicated listener: type, port, bind_addresses and nothing else.
        assert metrics_listeners(process) == [{"type": "metrics", "port": port, "bind_addresses": [address]}]
    # Never a wildcard, and on every host a port of its own.
    taken = {}
    for process in processes(topo):
        for listener in metrics_listeners(process):
            assert listener["bind_addresses"] not in (["0.0.0.0"], ["::"], [""])
            key = (process["host"], listener["port"])
            assert key not in taken, (process["name"], taken.get(key))
            taken[key] = process["name"]


def test_the_metrics_listener_comes_after_the_others():
    """listeners[0] stays each process's HTTP listener (nginx, /health)."""
    topo = build_topology(SPREAD, metrics=ON, **THREE_HOSTS)
    off = build_topology(SPREAD, **THREE_HOSTS)
    assert topo["main"]["config"]["listeners"][:-1] == off["main"]["config"]["listeners"]
    for worker, plain in zip(topo["workers"], off["workers"]):
        assert worker["config"]["worker_listeners"][:-1] == plain["config"]["worker_listeners"]
        assert worker["listeners"] == plain["listeners"]
    assert topo["nginx"] == off["nginx"]
    # The firewall guards the metrics ports besides what it guarded before.
    for host, rules in topo["firewall"].items():
        assert [r for r in rules if r["speaks"] != "metrics"] == off["firewall"][host]
        assert sorted(r["port"] for r in rules if r["speaks"] == "metrics") == sorted(
            t["port"] for t in topo["metrics"]["targets"] if t["host"] == host
        )


def test_a_monolith_with_metrics():
    topo = build_topology(None, metrics=ON, **ONE_HOST)
    assert topo["shared_config"] == {"enable_metrics": True}
    assert metrics_listeners(topo["main"]) == [{"type": "metrics", "port": 19090, "bind_addresses": ["127.0.0.1"]}]
    assert [t["name"] for t in topo["metrics"]["targets"]] == ["main"]


def test_ports_can_be_chosen():
    topo = build_topology(SPREAD, metrics={"enabled": "true", "port": "9000", "port_base": 9200}, **THREE_HOSTS)
    ports = {t["name"]: t["port"] for t in topo["metrics"]["targets"]}
    assert ports == {"main": 9000, "writers": 9200, "sync1": 9201, "sync2": 9202, "sync3": 9203, "sender": 9204}


def test_metrics_are_never_proxied():
    topo = build_topology(SPREAD, metrics=ON, proxy_hosts=["app3"], **THREE_HOSTS)
    ports = {t["port"] for t in topo["metrics"]["targets"]}
    for upstream in topo["nginx"]["upstreams"].values():
        for server in upstream["servers"]:
            assert not re.search(rf":({'|'.join(map(str, ports))})$", server), server
    # No listener nginx reaches serves the metrics resource either.
    for process in processes(topo):
        for listener in process["listeners"]:
            assert "metrics" not in listener["resources"]


# --- targets and the scrape config ----------------------------------------------------


def test_targets_name_each_process_its_host_address_and_port():
    topo = build_topology(SPREAD, metrics=ON_PRIVATE, **THREE_HOSTS)
    targets = topo["metrics"]["targets"]
    assert targets[0] == {
        "name": "main",
        "host": "app1",
        "address": "10.0.0.1",
        "port": 19090,
        "loopback": False,
        "types": [],
        "job": "master",
        "index": 1,
        "target": "10.0.0.1:19090",
    }
    assert targets[3] == {
        "name": "sync2",
        "host": "app3",
        "address": "10.0.0.3",
        "port": 19093,
        "loopback": False,
        "types": ["synchrotron"],
        "job": "sync",
        "index": 2,
        "target": "10.0.0.3:19093",
    }
    assert [(t["name"], t["job"], t["index"]) for t in targets] == [
        ("main", "master", 1),
        ("writers", "writers", 1),
        ("sync1", "sync", 1),
        ("sync2", "sync", 2),
        ("sync3", "sync", 3),
        ("sender", "sender", 1),
    ]
    # What a firewall needs: per host, the ports to open to the Prometheus host.
    per_host = {}
    for target in targets:
        per_host.setdefault(target["host"], []).append(target["port"])
    assert per_host == {"app1": [19090, 19095], "app2": [19091, 19092, 19094], "app3": [19093]}


def test_the_scrape_config_follows_synapses_metrics_howto():
    topo = build_topology(SPREAD, metrics=ON_PRIVATE, **THREE_HOSTS)
    (job,) = topo["metrics"]["scrape_config"]["scrape_configs"]
    assert job["job_name"] == "synapse"
    assert job["metrics_path"] == "/_synapse/metrics"
    assert job["scrape_interval"] == "15s"
    assert job["static_configs"][0] == {
        "targets": ["10.0.0.1:19090"],
        "labels": {"instance": "app1", "job": "master", "index": "1"},
    }
    assert job["static_configs"][4] == {
        "targets": ["10.0.0.2:19094"],
        "labels": {"instance": "app2", "job": "sync", "index": "3"},
    }
    # One target per process, each label set unique, every label value a string.
    assert len(job["static_configs"]) == topo["process_count"]
    labels = [tuple(sorted(c["labels"].items())) for c in job["static_configs"]]
    assert len(set(labels)) == len(labels)
    for static in job["static_configs"]:
        assert all(isinstance(v, str) for v in static["labels"].values())
        assert all(re.match(r"^[a-zA-Z_][a-zA-Z0-9_]*$", k) for k in static["labels"])


def test_ipv6_targets_are_bracketed():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}],
        hosts={"app1": "fd00::1", "app2": "fd00::2"},
        main_host="app1",
        metrics={"enabled": True, "addresses": {"app1": "fd00::1", "app2": "fd00::2"}},
    )
    targets = topo["metrics"]["scrape_config"]["scrape_configs"][0]["static_configs"]
    assert [t["targets"] for t in targets] == [["[fd00::1]:19090"], ["[fd00::2]:19091"]]
    assert metrics_listeners(topo["workers"][0])[0]["bind_addresses"] == ["fd00::2"]


def test_inventory_groups_and_addresses():
    groups = {"synapse_main": ["app1"], "synapse_workers": ["app1", "app2"], "nginx": ["app1"], "postgres": ["db"]}
    hostvars = {
        "app1": {"ansible_host": "192.0.2.1", "synapse_address": "10.0.0.1", "synapse_metrics_address": "10.0.0.1"},
        "app2": {"ansible_host": "10.0.0.2"},
        "db": {"ansible_host": "10.0.0.9"},
    }
    workers = [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}]
    topo = build_topology(workers, groups=groups, hostvars=hostvars, metrics=ON)
    # app1 names its address; app2 names none: loopback, whatever its synapse_address.
    assert [(t["host"], t["target"]) for t in topo["metrics"]["targets"]] == [
        ("app1", "10.0.0.1:19090"),
        ("app2", "127.0.0.1:19091"),
    ]
    # The filter option's addresses win over the inventory's.
    topo = build_topology(
        workers, groups=groups, hostvars=hostvars, metrics={"enabled": True, "addresses": {"app2": "10.0.0.2"}}
    )
    assert [t["target"] for t in topo["metrics"]["targets"]] == ["10.0.0.1:19090", "10.0.0.2:19091"]


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"enabled": "maybe"}, r"synapse_metrics_enabled is 'maybe' \(a string\); set it to true or false"),
        ({"enabled": 1}, r"synapse_metrics_enabled is 1 \(a number\); set it to true or false"),
        ({"enabled": True, "port": 80}, r"synapse_metrics_port is 80; give a TCP port from 1024 to 65535 .*unprivileged"),
        ({"enabled": True, "port": 70000}, r"synapse_metrics_port is 70000; give a TCP port from 1024 to 65535"),
        ({"enabled": True, "port": "ninety"}, r"synapse_metrics_port is 'ninety'; give a TCP port"),
        ({"enabled": True, "port": True}, r"synapse_metrics_port is True; give a TCP port"),
        (
            {"enabled": True, "port_base": 65534},
            r"synapse_metrics_port_base is 65534; give a TCP port from 1024 to 65531, so that each of the 5 workers",
        ),
        ({"enabled": True, "prot": 9000}, r"metrics sets prot; it takes enabled, port, port_base, addresses, allowed_clients"),
        ("yes", r"metrics must map enabled, port, port_base, addresses and allowed_clients to their values"),
        (
            {"enabled": True, "addresses": "10.0.0.2"},
            r"metrics addresses must map inventory hosts to their synapse_metrics_address, got '10.0.0.2'",
        ),
        (
            {"enabled": True, "addresses": {"app9": "10.0.0.9"}},
            r"metrics addresses name app9, not among the inventory hosts \(app1, app2, app3\)",
        ),
        (
            {"enabled": True, "allowed_clients": "10.0.0.5"},
            r"synapse_metrics_allowed_clients is a string, '10.0.0.5'; list the IP addresses or CIDR networks "
            r"Prometheus scrapes from",
        ),
        (
            {"enabled": True, "allowed_clients": ["10.0.0.5", "prometheus.internal"]},
            r"synapse_metrics_allowed_clients\[1\] is 'prometheus.internal', not an IP address or CIDR network",
        ),
        (
            {"enabled": True, "port": 19093},
            r"the metrics listener of sync2 would listen on port 19093 on host 'app1' \(from "
            r"synapse_metrics_port_base\), where the metrics listener of main listens already; set "
            r"synapse_metrics_port_base to the start of a free range",
        ),
        (
            {"enabled": True, "port": 9093},
            r"the metrics listener of main would listen on port 9093 on host 'app1' \(from synapse_metrics_port\), "
            r"where main listens already; set synapse_metrics_port to a free port",
        ),
        (
            {"enabled": True, "port_base": 8100},
            r"the metrics listener of writers would listen on port 8100 on host 'app2'.*where writers listens already",
        ),
        (
            {"enabled": True, "port": 6379},
            r"the metrics listener of main would listen on port 6379 on host 'app1'.*where redis "
            r"\(synapse_redis_port\) listens already",
        ),
    ],
)
def test_bad_metrics_settings_are_refused(metrics, message):
    workers = [
        # An HTTP port reached over TCP from nginx on app3, and replication over TCP.
        {"name": "writers", "types": ["typing"], "hosts": ["app2"], "port": 8100},
        {"name": "sync", "types": ["synchrotron"], "count": 4, "hosts": ["app1"]},
    ]
    with pytest.raises(AnsibleFilterError, match=message):
        build_topology(workers, metrics=metrics, proxy_hosts=["app3"], **THREE_HOSTS)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("app2.example.org", r"synapse_metrics_address of host app2 is 'app2.example.org', not an IP address"),
        ("0.0.0.0", r"synapse_metrics_address of host app2 is '0.0.0.0', a wildcard address"),
        ("::", r"synapse_metrics_address of host app2 is '::', a wildcard address"),
        ("10.0.0.2/24", r"synapse_metrics_address of host app2 is '10.0.0.2/24', not an IP address"),
        (["10.0.0.2"], r"synapse_metrics_address of host app2 is a list, \['10.0.0.2'\]"),
    ],
)
def test_metrics_bind_to_an_ip_address_never_a_wildcard(address, message):
    with pytest.raises(AnsibleFilterError, match=message + r".*set it to 127.0.0.1 \(the default"):
        build_topology(
            [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}],
            metrics={"enabled": True, "addresses": {"app2": address}},
            **THREE_HOSTS,
        )


def test_a_host_known_by_name_only_still_binds_its_metrics_to_loopback():
    # Metrics need no address of the host unless it names one.
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}],
        hosts={"app1": "10.0.0.1", "app2": "app2.example.org"},
        main_host="app1",
        metrics=ON,
    )
    assert [t["target"] for t in topo["metrics"]["targets"]] == ["127.0.0.1:19090", "127.0.0.1:19091"]


def test_the_filter_passes_metrics_through():
    from ansible_collections.polylith.synapse.plugins.filter.synapse_topology import FilterModule

    topo = FilterModule().filters()["synapse_topology"](None, metrics=ON, **ONE_HOST)
    assert topo["metrics"]["enabled"] is True
