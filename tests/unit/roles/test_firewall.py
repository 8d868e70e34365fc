"""The optional firewall: which ports each host guards, the nftables rules the
_deployment role renders for them, and the probe verify judges them with.

Where nftables is installed (Debian's `nftables`; tests/run installs it), nft
itself checks the rendered rules (`nft --check`, which changes nothing).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template

from ansible_collections.polylith.synapse.plugins.plugin_utils.shared_inputs import (
    input_problems,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from conftest import ROOT

ROLE = ROOT / "roles" / "_deployment"
init_plugin_loader()

# The multi-host example's shape: PostgreSQL and Redis on db, nginx, main and
# the stream writer on edge, sync workers on wa and wb.
HOSTS = {"edge": "10.0.0.10", "wa": "10.0.0.31", "wb": "10.0.0.32"}
MULTI_HOST = {
    "hosts": HOSTS,
    "main_host": "edge",
    "proxy_hosts": ["edge"],
    "backend_hosts": {"postgres": "db", "redis": "db"},
    "backend_addresses": {"db": "10.0.0.20"},
}
WORKERS = [
    {"name": "persister", "types": ["event_persister"], "hosts": ["edge"]},
    {"name": "sync", "types": ["synchrotron"], "count": 2, "hosts": ["wa", "wb"]},
]
SYNAPSE_ADDRESSES = ["10.0.0.10", "10.0.0.31", "10.0.0.32"]


def by_purpose(rules):
    return {rule["purpose"]: rule for rule in rules}


def test_each_internal_port_admits_only_the_hosts_that_use_it():
    firewall = build_topology(WORKERS, **MULTI_HOST)["firewall"]
    edge = by_purpose(firewall["edge"])
    # Replication: every Synapse host may call main and the stream writer.
    assert set(edge) == {"replication of main", "replication of persister"}
    assert all(rule["sources"] == SYNAPSE_ADDRESSES for rule in edge.values())
    # The sync workers' listeners: nginx on the edge alone.
    assert [(r["purpose"], r["address"], r["port"], r["sources"]) for r in firewall["wa"]] == [
        ("http of sync1", "10.0.0.31", 8102, ["10.0.0.10"])
    ]
    # PostgreSQL and Redis: the Synapse hosts, each on the backend's own port.
    db = by_purpose(firewall["db"])
    assert {name: (r["port"], r["speaks"], r["sources"]) for name, r in db.items()} == {
        "postgres": (5432, "postgres", SYNAPSE_ADDRESSES),
        "redis": (6379, "redis", SYNAPSE_ADDRESSES),
    }


def test_one_host_guards_nothing():
    topo = build_topology([{"name": "persister", "types": ["event_persister"]}], hosts={"app": "10.0.0.2"}, main_host="app")
    assert topo["firewall"] == {"app": []}


def test_ipv6_sources_are_matched_as_ipv6():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "hosts": ["b"]}],
        hosts={"a": "fd00::1", "b": "10.0.0.2"},
        main_host="a",
    )
    (rule,) = topo["firewall"]["b"]
    assert (rule["ipv4_sources"], rule["ipv6_sources"]) == ([], ["fd00::1"])


# Metrics on: the multi-host example with a Prometheus at 10.0.0.5, its
# network and an IPv6 one allowed; the edge binds its metrics to its private
# address, the worker hosts keep loopback.
METRICS_CLIENTS = ["10.0.0.5", "192.0.2.0/24", "2001:db8::/64"]
METRICS = {"enabled": True, "addresses": {"edge": "10.0.0.10"}, "allowed_clients": METRICS_CLIENTS}


def metrics_rules(rules):
    return {rule["purpose"]: rule for rule in rules if rule["speaks"] == "metrics"}


def test_the_metrics_ports_admit_the_allowed_clients_alone():
    topo = build_topology(WORKERS, metrics=METRICS, **MULTI_HOST)
    edge = metrics_rules(topo["firewall"]["edge"])
    assert {purpose: (r["address"], r["port"]) for purpose, r in edge.items()} == {
        "metrics of main": ("10.0.0.10", 19090),
        "metrics of persister": ("10.0.0.10", 19091),
    }
    assert {purpose: (r["address"], r["port"]) for purpose, r in metrics_rules(topo["firewall"]["wa"]).items()} == {
        "metrics of sync1": ("127.0.0.1", 19092)
    }
    for host in ("edge", "wa", "wb"):
        for rule in metrics_rules(topo["firewall"][host]).values():
            # Neither the deployment's hosts nor nginx: the allowed clients only.
            assert rule["sources"] == sorted(METRICS_CLIENTS)
            assert rule["ipv4_sources"] == ["10.0.0.5", "192.0.2.0/24"]
            assert rule["ipv6_sources"] == ["2001:db8::/64"]
    # Every metrics port of every host is guarded, nothing else changed.
    guarded = sorted(r["port"] for rules in topo["firewall"].values() for r in metrics_rules(rules).values())
    assert guarded == sorted(t["port"] for t in topo["metrics"]["targets"])
    assert metrics_rules(topo["firewall"]["db"]) == {}


def test_without_allowed_clients_the_metrics_ports_admit_no_other_host():
    topo = build_topology(WORKERS, metrics={"enabled": True}, **MULTI_HOST)
    rules = [r for host_rules in topo["firewall"].values() for r in metrics_rules(host_rules).values()]
    assert len(rules) == topo["process_count"]
    assert all((r["sources"], r["ipv4_sources"], r["ipv6_sources"]) == ([], [], []) for r in rules)


def test_metrics_off_guards_no_metrics_port():
    topo = build_topology(WORKERS, metrics={"enabled": False, "allowed_clients": METRICS_CLIENTS}, **MULTI_HOST)
    assert all(metrics_rules(rules) == {} for rules in topo["firewall"].values())


def render_rules(host, topo):
    loader = DataLoader()
    variables = loader.load_from_file(str(ROLE / "vars" / "main.yml"), trusted_as_template=True)
    variables.update(
        ansible_managed="Ansible managed: polylith.synapse test",
        inventory_hostname=host,
        polylith_synapse_deployment=topo,
    )
    templar = Templar(loader=loader, variables=variables)
    return templar.template(trust_as_template((ROLE / "templates" / "firewall.nft.j2").read_text()))


def test_rules_accept_the_sources_then_reset_everyone_else():
    text = render_rules("db", build_topology(WORKERS, **MULTI_HOST))
    lines = [line.strip() for line in text.splitlines()]
    accept = "tcp dport 5432 ip saddr { 10.0.0.10, 10.0.0.31, 10.0.0.32 } accept"
    reset = "tcp dport 5432 reject with tcp reset"
    assert accept in lines and reset in lines
    assert lines.index('iif "lo" accept') < lines.index(accept) < lines.index(reset)
    # Everything the table does not name stays the host's business.
    assert "policy accept;" in text and "policy drop" not in text
    # Replaced as a whole: declared, deleted and declared again in one file.
    assert text.index("delete table inet polylith_synapse") < text.index("table inet polylith_synapse {")


def test_rules_admit_the_metrics_clients_then_reset_everyone_else():
    lines = [line.strip() for line in render_rules("edge", build_topology(WORKERS, metrics=METRICS, **MULTI_HOST)).splitlines()]
    for port in (19090, 19091):
        accept4 = f"tcp dport {port} ip saddr {{ 10.0.0.5, 192.0.2.0/24 }} accept"
        accept6 = f"tcp dport {port} ip6 saddr {{ 2001:db8::/64 }} accept"
        reset = f"tcp dport {port} reject with tcp reset"
        assert lines.index('iif "lo" accept') < lines.index(accept4) < lines.index(accept6) < lines.index(reset)
    # No clients: the host itself (loopback) only, every other source reset.
    lines = [line.strip() for line in render_rules("wa", build_topology(WORKERS, metrics={"enabled": True}, **MULTI_HOST)).splitlines()]
    assert [line for line in lines if "19092" in line] == ["tcp dport 19092 reject with tcp reset"]
    assert lines.index('iif "lo" accept') < lines.index("tcp dport 19092 reject with tcp reset")


NFT_CASES = {
    "plain": {},
    "metrics-allowed": {"metrics": METRICS},
    "metrics-alone": {"metrics": {"enabled": True}},
    # Overlapping entries (an address inside an allowed network) are accepted too.
    "metrics-overlapping": {"metrics": {**METRICS, "allowed_clients": ["192.0.2.0/24", "192.0.2.7", "2001:db8::1"]}},
}


@pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed (tests/run installs it)")
@pytest.mark.parametrize("case", sorted(NFT_CASES))
@pytest.mark.parametrize("host", ["db", "edge", "wa"])
def test_nft_accepts_the_rules(tmp_path, host, case):
    path = tmp_path / f"{host}.nft"
    path.write_text(render_rules(host, build_topology(WORKERS, **NFT_CASES[case], **MULTI_HOST)))
    result = subprocess.run(["nft", "--check", "--file", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- the inputs -------------------------------------------------------------


GROUPS = {"synapse_main": ["edge"], "synapse_workers": ["edge", "wa"], "nginx": ["edge"]}


def problems(**edge_values):
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "hosts": ["wa"]}],
        hosts={"edge": "10.0.0.10", "wa": "wa.internal"},
        main_host="edge",
    )
    hostvars = {"edge": {"synapse_address": "10.0.0.10", **edge_values}, "wa": {}}
    return [p for p in input_problems(GROUPS, hostvars, deployment=topo) if "firewall" in p]


def test_a_firewall_flag_that_is_no_boolean_is_refused():
    assert problems(synapse_firewall_enabled="maybe") == [
        "synapse_firewall_enabled of host edge is 'maybe'; set it to true or false."
    ]


def test_a_firewall_flag_given_as_an_extra_var_string_is_taken():
    assert problems(synapse_firewall_enabled="false") == []


def test_a_firewall_cannot_admit_a_host_known_by_name_only():
    (problem,) = problems(synapse_firewall_enabled=True)
    assert "'wa.internal'" in problem and "9093 (replication of main)" in problem
    assert "give that host synapse_address" in problem


def test_without_the_firewall_names_are_not_its_business():
    assert problems() == []


def test_networks_admitted_to_the_metrics_ports_are_no_problem_for_the_firewall():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "hosts": ["wa"]}],
        hosts={"edge": "10.0.0.10", "wa": "10.0.0.31"},
        main_host="edge",
        metrics={"enabled": True, "allowed_clients": ["10.0.5.0/24", "2001:db8::/64"]},
    )
    hostvars = {"edge": {"synapse_address": "10.0.0.10", "synapse_firewall_enabled": True}, "wa": {}}
    assert [p for p in input_problems(GROUPS, hostvars, deployment=topo) if "firewall" in p] == []


# --- the probe verify runs ----------------------------------------------------


def _probe_module():
    spec = importlib.util.spec_from_file_location("probe_ports", ROOT / "tests" / "lab" / "probe_ports.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = _probe_module()


def result(speaks="postgres", state="open", answer=None):
    found = {"purpose": speaks, "address": "10.0.0.20", "port": 5432, "speaks": speaks, "state": state}
    if answer is not None:
        found["answer"] = answer
    return found


@pytest.mark.parametrize(
    ("found", "firewalled", "wrong"),
    [
        (result(state="refused"), True, False),
        (result(state="open", answer="error 28000: no pg_hba.conf entry"), True, True),
        (result(state="timeout"), True, True),
        (result(answer="error 28000: no pg_hba.conf entry"), False, False),
        (result(answer="authentication request 10"), False, False),
        (result(answer="authentication request 0"), False, True),
        (result(state="refused"), False, True),
        (result("redis", answer="-NOAUTH Authentication required."), False, False),
        (result("redis", answer="+PONG"), False, True),
        (result("http"), False, False),
    ],
    ids=[
        "firewalled-refused",
        "firewalled-but-open",
        "firewalled-but-silent",
        "postgres-no-hba-entry",
        "postgres-asks-password",
        "postgres-trusts",
        "unfirewalled-refused",
        "redis-noauth",
        "redis-pong",
        "http-open",
    ],
)
def test_the_probe_judges_each_answer(found, firewalled, wrong):
    assert (probe.judge(found, firewalled) is not None) is wrong


def test_the_probe_sees_a_refused_port_on_loopback():
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Bound, not listening, then closed: the kernel resets the connection.
    assert probe.probe({"address": "127.0.0.1", "port": port, "speaks": "redis"})["state"] == "refused"


# --- the probe's metrics ports: never reachable from outside their host ------------


@pytest.mark.parametrize(
    ("state", "wrong"),
    [("refused", False), ("timeout", False), ("open", True), ("error: [Errno 113] No route to host", True)],
)
def test_the_probe_wants_metrics_ports_closed(state, wrong):
    found = {"purpose": "metrics of main", "address": "10.0.0.10", "port": 19090, "speaks": "metrics", "state": state}
    assert (probe.judge_closed(found) is not None) is wrong


def _free_port():
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_probe_knocks_on_metrics_ports_at_the_hosts_address():
    import socket

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        closed_port = _free_port()
        targets = [
            # Bound to loopback on the host; the prober reaches the host at 127.0.0.1 here.
            {"name": "main", "host": "edge", "address": "127.0.0.1", "port": closed_port},
            {"name": "sync1", "host": "wa", "address": "127.0.0.1", "port": open_port},
            {"name": "sync2", "host": "wb", "address": "127.0.0.1", "port": open_port},
        ]
        results, problems = probe.probe_metrics(targets, {"edge": "127.0.0.1", "wa": "127.0.0.1"}, skip_host="wb")
    assert [(r["host"], r["state"]) for r in results] == [("edge", "refused"), ("wa", "open")]
    assert problems == [
        f"wa: metrics of sync1 at 127.0.0.1:{open_port} must not be reachable from outside its host, "
        "but the connection was open"
    ]


def test_the_probe_judges_metrics_rules_as_closed_ports_not_as_guarded_ones():
    """A metrics port bound to loopback refuses whatever the firewall says: no false alarm."""
    topo = build_topology(WORKERS, metrics={"enabled": True}, **MULTI_HOST)
    port = _free_port()
    for target in topo["metrics"]["targets"]:
        target["port"] = port
    for rules in topo["firewall"].values():
        for rule in rules:
            rule.update(address="127.0.0.1", port=port)
    payload = {
        # Only the metrics rules, on a host without the firewall.
        "firewall": {host: [r for r in rules if r["speaks"] == "metrics"] for host, rules in topo["firewall"].items()},
        "firewalled": {},
        "metrics": topo["metrics"]["targets"],
        "reach": {host: "127.0.0.1" for host in HOSTS},
    }
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "lab" / "probe_ports.py"), json.dumps(payload)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["problems"] == []
    assert len(report["results"]) == topo["process_count"]
    assert {r["state"] for r in report["results"]} == {"refused"}
    assert all(r["purpose"].startswith("metrics of ") for r in report["results"])
