# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Synapse's Prometheus metrics: a listener per process and the scrape config.

With metrics on, the main process and every worker get Synapse's dedicated
metrics listener (``type: metrics``), a TCP port bound to its host's address
(``synapse_address``), never a wildcard and never proxied by nginx: the main
process on ``port`` (default 19090), each worker on ``port_base`` plus its
place in the worker list (default 19091 on), as Synapse's own Docker image
numbers them. ``derive_metrics`` returns the topology's ``metrics`` entry:
the scrape targets per process (host, address, port: what a firewall opens to
the Prometheus host) and a Prometheus scrape config following Synapse's
docs/metrics-howto.md (``metrics_path: /_synapse/metrics``, the labels
``job``, ``index`` and ``instance``).

Plain Python over plain data; build_topology calls it once every listener
has its port, so a metrics port that clashes with one of them, or with the
port of PostgreSQL or Redis on the same host, is refused by name.
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError

from ansible_collections.polylith.synapse.plugins.plugin_utils.shared_inputs import (
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


def metrics_settings(given, worker_count):
    """The metrics option checked: enabled, port and port_base (None keeps a default)."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        _fail(f"metrics must map enabled, port and port_base to their values, got {show(given)}.")
    unknown = sorted(str(key) for key in given if key not in SETTINGS)
    if unknown:
        _fail(f"metrics sets {', '.join(unknown)}; it takes {', '.join(SETTINGS)}.")
    room = f", so that each of the {worker_count} workers gets a port from it on" if worker_count > 1 else ""
    return {
        "enabled": _enabled(given.get("enabled")),
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


def _check_address(host, address):
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        ip = None
    if ip is None or ip.is_unspecified:
        _fail(
            f"metrics listeners bind to their host's address, but host {host}'s is {show(address)} "
            "(its synapse_address, else ansible_host, else its inventory name), not an IP address "
            f"of the host: set synapse_address for {host} to its IP address, e.g. 10.0.0.2."
        )


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


def derive_metrics(main, workers, numbers, hosts, settings, taken, backends):
    """The topology's ``metrics`` entry; with metrics on, adds each process's listener.

    ``main`` and ``workers`` are the processes as build_topology builds them
    (their ``config`` gains the metrics listener), ``numbers`` each worker's
    instance number (1 for a worker of count 1), ``hosts`` the inventory
    hosts' addresses, ``settings`` what metrics_settings returned, ``taken``
    the ports the other listeners hold per host and ``backends`` the
    topology's backends entry.
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
        address = hosts[host]
        _check_address(host, address)
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
