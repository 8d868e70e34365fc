# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Synapse's Prometheus metrics: a listener per process and the scrape config.

With metrics on, the main process and every worker get Synapse's dedicated
metrics listener (``type: metrics``), a TCP port bound to its host's metrics
address (``synapse_metrics_address``, per host, default 127.0.0.1: nothing
beyond the host reaches it unless the operator binds it to an address of the
host that Prometheus reaches), never a wildcard and never proxied by nginx:
the main process on ``port`` (default 19090), each worker on ``port_base``
plus its place in the worker list (default 19091 on), as Synapse's own Docker
image numbers them. ``derive_metrics`` returns the topology's ``metrics``
entry: the scrape targets per process (host, bind address, port) and a
Prometheus scrape config following Synapse's docs/metrics-howto.md
(``metrics_path: /_synapse/metrics``, the labels ``job``, ``index`` and
``instance``). The optional firewall admits ``allowed_clients``
(``synapse_metrics_allowed_clients``) to the metrics ports and resets every
other source (firewall.py).

Plain Python over plain data; build_topology calls it once every listener
has its port, so a metrics port that clashes with one of them, or with the
port of PostgreSQL or Redis on the same host, is refused by name.
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError

from ansible_collections.polylith.synapse.plugins.plugin_utils.shared_inputs import (
    DEFAULT_METRICS_ADDRESS,
    METRICS_ADDRESS,
    METRICS_CLIENTS,
    check_metrics_address,
    check_metrics_clients,
    kind,
    show,
)

DEFAULT_METRICS_PORT = 19090
DEFAULT_METRICS_PORT_BASE = 19091
# Synapse runs as an unprivileged user: it cannot bind a port below 1024.
LOWEST_PORT = 1024
METRICS_PATH = "/_synapse/metrics"
SCRAPE_JOB = "synapse"
SCRAPE_INTERVAL = "15s"
# The `job` label of the main process (docs/metrics-howto.md).
MAIN_JOB = "master"
# The filter option's keys and the inventory variables they come from.
SETTINGS = {
    "enabled": "synapse_metrics_enabled",
    "port": "synapse_metrics_port",
    "port_base": "synapse_metrics_port_base",
    # Per host: inventory host name to bind address (unset: DEFAULT_METRICS_ADDRESS).
    "addresses": METRICS_ADDRESS,
    "allowed_clients": METRICS_CLIENTS,
}
# How Ansible writes a boolean that reached the filter as a string (-e x=true).
TRUE_WORDS = frozenset({"true", "yes", "on"})
FALSE_WORDS = frozenset({"false", "no", "off"})
BACKEND_VARIABLES = {"postgres": "synapse_database_port", "redis": "synapse_redis_port"}


def _fail(message: str) -> None:
    raise AnsibleFilterError(f"synapse_topology: {message}")


def _enabled(value):
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    _fail(
        f"{SETTINGS['enabled']} is {show(value)} (a {kind(value)}); set it to true or false "
        "(default false)."
    )
    return False


def _port(key, value, default, highest, room=""):
    if value is None:
        return default
    port = value
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not LOWEST_PORT <= port <= highest:
        _fail(
            f"{SETTINGS[key]} is {show(value)}; give a TCP port from {LOWEST_PORT} to {highest}"
            f"{room} (default {default}); Synapse runs unprivileged and cannot bind a port "
            f"below {LOWEST_PORT}."
        )
    return port


def _addresses(value, hosts):
    """The per-host bind addresses as given (None or "" keeps the default), by known host."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(
            f"metrics addresses must map inventory hosts to their {METRICS_ADDRESS}, got "
            f"{show(value)}; e.g. {{app1: 10.0.0.2}}."
        )
    unknown = sorted(str(host) for host in value if host not in hosts)
    if unknown:
        _fail(
            f"metrics addresses name {', '.join(unknown)}, not among the inventory hosts "
            f"({', '.join(sorted(hosts))})."
        )
    return {host: address for host, address in value.items() if address is not None and address != ""}


def _allowed_clients(value):
    problems = check_metrics_clients(value)
    if problems:
        _fail(" ".join(problems))
    return [str(client) for client in value or []]


def metrics_settings(given, worker_count, hosts=()):
    """The metrics option checked (None keeps a default).

    ``given`` maps enabled, port, port_base, addresses (inventory host to
    bind address) and allowed_clients to their values; ``hosts`` are the
    inventory hosts ``addresses`` may name.
    """
    if given is None:
        given = {}
    if not isinstance(given, dict):
        keys = list(SETTINGS)
        _fail(f"metrics must map {', '.join(keys[:-1])} and {keys[-1]} to their values, got {show(given)}.")
    unknown = sorted(str(key) for key in given if key not in SETTINGS)
    if unknown:
        _fail(f"metrics sets {', '.join(unknown)}; it takes {', '.join(SETTINGS)}.")
    room = f", so that each of the {worker_count} workers gets a port from it on" if worker_count > 1 else ""
    return {
        "enabled": _enabled(given.get("enabled")),
        "addresses": _addresses(given.get("addresses"), hosts),
        "allowed_clients": _allowed_clients(given.get("allowed_clients")),
        "port": _port("port", given.get("port"), DEFAULT_METRICS_PORT, 65535),
        "port_base": _port(
            "port_base",
            given.get("port_base"),
            DEFAULT_METRICS_PORT_BASE,
            65535 - max(worker_count - 1, 0),
            room,
        ),
    }


def _bracket(address):
    return f"[{address}]" if ":" in address else address


def bind_address(settings, host):
    """Where ``host`` binds its metrics listeners: its synapse_metrics_address, else loopback."""
    address = settings["addresses"].get(host, DEFAULT_METRICS_ADDRESS)
    problem = check_metrics_address(host, address)
    if problem:
        _fail(problem)
    return address


def _claim(taken, backend_ports, host, port, owner, variable):
    key = (host, f"port {port}")
    other = taken.get(key) or backend_ports.get((host, port))
    if other:
        free = "a free port" if variable == SETTINGS["port"] else "the start of a free range, one port per worker"
        _fail(
            f"the metrics listener of {owner} would listen on port {port} on host {host!r} "
            f"(from {variable}), where {other} listens already; set {variable} to {free} "
            f"(defaults: {SETTINGS['port']} {DEFAULT_METRICS_PORT}, {SETTINGS['port_base']} "
            f"{DEFAULT_METRICS_PORT_BASE})."
        )
    taken[key] = f"the metrics listener of {owner}"


def derive_metrics(main, workers, numbers, settings, taken, backends):
    """The topology's ``metrics`` entry; with metrics on, adds each process's listener.

    ``main`` and ``workers`` are the processes as build_topology builds them
    (their ``config`` gains the metrics listener), ``numbers`` each worker's
    instance number (1 for a worker of count 1), ``settings`` what
    metrics_settings returned (each host's bind address among them),
    ``taken`` the ports the other listeners hold per host and ``backends``
    the topology's backends entry.
    """
    if not settings["enabled"]:
        return {"enabled": False, "targets": [], "scrape_config": None}
    backend_ports = {
        (backend["host"], backend["port"]): f"{name} ({BACKEND_VARIABLES[name]})"
        for name, backend in backends.items()
    }
    processes = [(main, MAIN_JOB, 1, settings["port"], SETTINGS["port"])]
    processes += [
        (worker, worker["group"], number, settings["port_base"] + slot, SETTINGS["port_base"])
        for slot, (worker, number) in enumerate(zip(workers, numbers))
    ]
    targets = []
    for process, job, index, port, variable in processes:
        host = process["host"]
        address = bind_address(settings, host)
        _claim(taken, backend_ports, host, port, process["name"], variable)
        listener = {"type": "metrics", "port": port, "bind_addresses": [address]}
        key = "listeners" if process is main else "worker_listeners"
        process["config"][key].append(listener)
        targets.append(
            {
                "name": process["name"],
                "host": host,
                "address": address,
                "port": port,
                # Bound to loopback: only a Prometheus on the same host scrapes it.
                "loopback": ipaddress.ip_address(address).is_loopback,
                "types": list(process.get("types", [])),
                "job": job,
                "index": index,
                "target": f"{_bracket(address)}:{port}",
            }
        )
    return {"enabled": True, "targets": targets, "scrape_config": scrape_config(targets)}


def scrape_config(targets):
    """A Prometheus config holding one scrape job for every target (docs/metrics-howto.md)."""
    return {
        "scrape_configs": [
            {
                "job_name": SCRAPE_JOB,
                "scrape_interval": SCRAPE_INTERVAL,
                "metrics_path": METRICS_PATH,
                "static_configs": [
                    {
                        "targets": [target["target"]],
                        # Prometheus label values are strings.
                        "labels": {
                            "instance": target["host"],
                            "job": target["job"],
                            "index": str(target["index"]),
                        },
                    }
                    for target in targets
                ],
            }
        ]
    }
