# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Derive a whole worker deployment from one worker list.

``build_topology`` validates the operator's worker list and returns everything
the roles render: each worker instance with its host, listeners and own
config; the homeserver settings the workers imply; and nginx's upstreams and
ordered routes. It is plain Python over plain data, so the unit tests call it
directly. Every error is raised before any host is touched and names the
worker, the problem and the fix.
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

from ansible_collections.polylith.synapse.plugins.plugin_utils.firewall import (
    guarded_ports,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.metrics import (
    derive_metrics,
    metrics_settings,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.shared_inputs import (
    METRICS_ADDRESS,
    kind,
    show,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_catalogue import (
    BALANCE_KEYS,
    MAIN_WRITER,
    PROXY_DENIED_PATTERNS,
    ROUTE_PRIORITY,
    SINGLE_WRITER_STREAMS,
    STREAMS_MAIN_ALSO_WRITES,
    WORKER_TYPES,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_presets import (
    PRESETS,
)

MAIN_INSTANCE = "main"
RESERVED_NAMES = frozenset({"main", "master"})
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
ENTRY_KEYS = ("name", "types", "count", "hosts", "port")

# The inventory groups the playbooks and roles use.
MAIN_GROUP = "synapse_main"
WORKERS_GROUP = "synapse_workers"
PROXY_GROUP = "nginx"
# The services every Synapse process connects to, each the inventory group
# that holds its one host (default: the main host).
BACKEND_GROUPS = ("postgres", "redis")

DEFAULT_SOCKET_DIR = "/run/matrix-synapse"
DEFAULT_MAIN_PORT = 8008
DEFAULT_MAIN_REPLICATION_PORT = 9093
DEFAULT_WORKER_PORT_BASE = 8101
DEFAULT_REPLICATION_PORT_BASE = 9101

# How Synapse reaches PostgreSQL and Redis: Debian's sockets and ports, and the
# database Synapse owns. ``backend_settings`` overrides the keys marked
# settable; the sockets are where Debian's packages put them.
BACKEND_DEFAULTS = {
    "postgres": {
        "port": 5432,
        "socket_dir": "/var/run/postgresql",
        "database": "synapse",
        "user": "synapse",
    },
    "redis": {"port": 6379, "socket_path": "/run/redis/redis-server.sock"},
}
SETTABLE_BACKEND_KEYS = {"postgres": ("port", "database", "user"), "redis": ("port",)}
# Lower-case SQL identifiers that need no quoting; not PostgreSQL's own databases.
SQL_IDENTIFIER_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
RESERVED_DATABASES = frozenset({"postgres", "template0", "template1"})


def _fail(message: str) -> None:
    raise AnsibleFilterError(f"synapse_topology: {message}")


def _known(values) -> str:
    return ", ".join(sorted(values))


def resolve_workers(workers, preset):
    """The worker list: the operator's own, else the named preset's."""
    if workers is not None:
        return workers
    name = preset or "monolith"
    if not isinstance(name, str) or name not in PRESETS:
        _fail(
            f"unknown synapse_worker_preset {show(name)}. Use one of: {_known(PRESETS)}, "
            "or set synapse_workers to your own list."
        )
    return [dict(entry) for entry in PRESETS[name].workers]


def _check_entry(index, entry, hosts, main_host):
    """Validate one worker-list entry and return it normalised."""
    where = f"synapse_workers[{index}]"
    if not isinstance(entry, dict):
        _fail(
            f"{where} is a {kind(entry)}, {show(entry)}; expected a mapping such as "
            "{name: sync, types: [synchrotron]}."
        )
    name = entry.get("name")
    if name is not None:
        where = f"worker {show(name)} ({where})"
    unknown = sorted((str(key) for key in entry if key not in ENTRY_KEYS))
    if unknown:
        _fail(
            f"{where} has unknown key(s) {', '.join(unknown)}; the keys are "
            f"{', '.join(ENTRY_KEYS)}."
        )
    if not isinstance(name, str) or not NAME_RE.match(name):
        _fail(
            f"{where} needs a name matching [a-z][a-z0-9_]* (got {show(name)}); "
            "rename it, e.g. 'sync' or 'federation_sender'."
        )
    if name in RESERVED_NAMES:
        _fail(
            f"{where}: the name {name!r} is reserved for Synapse's main process; "
            "choose another name."
        )

    types = entry.get("types")
    if isinstance(types, str):
        types = [types]
    if not isinstance(types, (list, tuple)) or not types:
        _fail(
            f"{where} needs 'types', a non-empty list of worker types (got {show(types)}). "
            f"Known types: {_known(WORKER_TYPES)}."
        )
    for worker_type in types:
        if not isinstance(worker_type, str):
            _fail(
                f"{where} lists {show(worker_type)}, a {kind(worker_type)}, among its types; "
                f"each type is a name such as synchrotron. Known types: {_known(WORKER_TYPES)}."
            )
        if worker_type not in WORKER_TYPES:
            _fail(
                f"{where} has unknown type {show(worker_type)}. Known types: "
                f"{_known(WORKER_TYPES)}."
            )
    if len(set(types)) != len(types):
        _fail(f"{where} lists a type twice in {show(types)}; list each type once.")

    count = entry.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        _fail(
            f"{where} has count {show(count)} (a {kind(count)}); count must be a whole number "
            "of 1 or more, written without quotes."
        )

    placement = entry.get("hosts", [main_host])
    if isinstance(placement, str):
        placement = [placement]
    if not isinstance(placement, (list, tuple)) or not placement:
        _fail(f"{where} has 'hosts' {show(placement)}; give a non-empty list of inventory hosts.")
    for host in placement:
        if not isinstance(host, str):
            _fail(
                f"{where} lists {show(host)}, a {kind(host)}, among its hosts; each is an "
                f"inventory host name, one of {_known(hosts)}."
            )
        if host not in hosts:
            _fail(
                f"{where} is placed on {host!r}, which is not in the inventory "
                f"hosts given ({_known(hosts)}); fix the name or add the host."
            )

    port = entry.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535 - count
    ):
        _fail(
            f"{where} has port {show(port)}; give a TCP port from 1 to {65535 - count}, "
            "written without quotes."
        )

    return {
        "name": name,
        "types": list(types),
        "count": count,
        "hosts": list(placement),
        "port": port,
    }


def _expand(entries):
    """Every instance, in list order: sync x3 -> sync1, sync2, sync3."""
    instances = []
    owner = {}
    for entry in entries:
        for number in range(1, entry["count"] + 1):
            name = entry["name"] if entry["count"] == 1 else f"{entry['name']}{number}"
            if name in owner:
                _fail(
                    f"worker {entry['name']!r} expands to instance {name!r}, which worker "
                    f"{owner[name]!r} already names; rename one of them."
                )
            owner[name] = entry["name"]
            host = entry["hosts"][(number - 1) % len(entry["hosts"])]
            port = entry["port"] + number - 1 if entry["port"] is not None else None
            instances.append(
                {
                    "name": name,
                    "group": entry["name"],
                    "types": entry["types"],
                    "host": host,
                    "port": port,
                    "number": number,
                }
            )
    return instances


def _check_exclusive(instances):
    """Single-writer streams and singleton duties may have one instance only."""
    for stream in sorted(SINGLE_WRITER_STREAMS):
        writers = [i["name"] for i in instances if _writes(i, stream)]
        if len(writers) > 1:
            _fail(
                f"workers {', '.join(writers)} all write the {stream!r} stream, which "
                f"Synapse allows only one instance to write; keep the {stream!r} type "
                "on a single worker with count 1."
            )
    for worker_type in WORKER_TYPES.values():
        members = [i["name"] for i in instances if worker_type.name in i["types"]]
        if not worker_type.shardable and len(members) > 1:
            _fail(
                f"workers {', '.join(members)} all have type {worker_type.name!r}, a duty "
                "Synapse runs on one instance only; keep it on a single worker with count 1."
            )
        if worker_type.same_host and len({i["host"] for i in instances if i["name"] in members}) > 1:
            placed = ", ".join(f"{i['name']} on {i['host']}" for i in instances if i["name"] in members)
            _fail(
                f"{worker_type.name} instances must share one host (they share the media "
                f"store), but they are placed as {placed}; give them one host."
            )


def _check_media_host(instances, media_host, main_host, hosts):
    """Media repositories run where the media store is: nothing moves it silently."""
    if media_host not in hosts:
        _fail(
            f"the media store host {media_host!r} (synapse_media_host) is not among the "
            f"Synapse hosts ({_known(hosts)}); name one of them."
        )
    serving = [i for i in instances if any(WORKER_TYPES[t].same_host for t in i["types"])]
    if media_host != main_host and not serving:
        _fail(
            f"synapse_media_host is {media_host!r}, but no worker serves media, so the main "
            f"process serves it from its own host {main_host!r}; add a media_repository "
            f"worker on {media_host!r}, or leave synapse_media_host unset."
        )
    for instance in serving:
        if instance["host"] != media_host:
            _fail(
                f"worker {instance['name']!r} serves media but is placed on {instance['host']!r}, "
                f"while the media store is on {media_host!r} (synapse_media_host, default the "
                "main host). Place the media repositories on that host, or move the media store "
                "there first and set synapse_media_host (see the README's 'Media across hosts')."
            )
    return media_host


def _writes(instance, stream):
    return any(stream in WORKER_TYPES[t].streams for t in instance["types"])


class _Listeners:
    """Chooses UNIX sockets or TCP and hands out ports, refusing clashes."""

    def __init__(self, hosts, socket_dir):
        self.hosts = hosts
        self.socket_dir = socket_dir.rstrip("/")
        self.taken = {}

    def _claim(self, host, key, owner):
        if (host, key) in self.taken:
            _fail(
                f"{owner} and {self.taken[(host, key)]} both listen on {key} on host "
                f"{host!r}; give one of them another port (the 'port' key) or name."
            )
        self.taken[(host, key)] = owner

    def make(self, owner, host, purpose, resources, unix, port):
        if unix:
            suffix = "" if purpose == "http" else f"-{purpose}"
            path = f"{self.socket_dir}/{owner}{suffix}.sock"
            self._claim(host, path, owner)
            listener = {"purpose": purpose, "path": path, "upstream_server": f"unix:{path}"}
            config = {"type": "http", "path": path}
        else:
            address = self.hosts[host]
            self._claim(host, f"port {port}", owner)
            listener = {
                "purpose": purpose,
                "address": address,
                "port": port,
                "upstream_server": f"{_bracket(address)}:{port}",
            }
            config = {"type": "http", "port": port, "bind_addresses": [address]}
        if purpose == "http" and resources != ["health"]:
            config["x_forwarded"] = True
        config["resources"] = [{"names": list(resources), "compress": False}]
        listener["resources"] = list(resources)
        return listener, config


def _bracket(address):
    return f"[{address}]" if ":" in address else address


def _location(listener):
    if "path" in listener:
        return {"path": listener["path"]}
    return {"host": listener["address"], "port": listener["port"]}


def _host_address(hostvars, host):
    """Where other hosts reach `host`: synapse_address, else ansible_host, else its name."""
    values = hostvars[host]
    return values.get("synapse_address") or values.get("ansible_host") or host


def inventory_layout(groups, hostvars):
    """main_host, hosts, proxy_hosts, backends and metrics addresses read from the inventory."""
    main_hosts = list(groups.get(MAIN_GROUP) or [])
    if not main_hosts:
        _fail(
            f"the inventory has no host in group {MAIN_GROUP!r}; add the host that "
            "runs Synapse's main process to it."
        )
    names = []
    for group in (MAIN_GROUP, WORKERS_GROUP, PROXY_GROUP):
        for host in groups.get(group) or []:
            if host not in names:
                names.append(host)
    backend_hosts = {}
    for group in BACKEND_GROUPS:
        members = list(groups.get(group) or [])
        if len(members) > 1:
            _fail(
                f"the inventory group {group!r} has {len(members)} hosts ({', '.join(members)}); "
                f"every Synapse process uses one {group} server, so list one host in it."
            )
        if members:
            backend_hosts[group] = members[0]
    return {
        "main_host": main_hosts[0],
        "hosts": {host: _host_address(hostvars, host) for host in names},
        "proxy_hosts": list(groups.get(PROXY_GROUP) or []) or None,
        "backend_hosts": backend_hosts,
        "backend_addresses": {
            host: _host_address(hostvars, host) for host in backend_hosts.values()
        },
        # Where each host binds its metrics listeners (unset: loopback).
        "metrics_addresses": {host: hostvars[host].get(METRICS_ADDRESS) for host in names},
    }


def build_topology(
    workers=None,
    main_host=None,
    hosts=None,
    socket_dir=None,
    preset=None,
    proxy_hosts=None,
    groups=None,
    hostvars=None,
    backend_hosts=None,
    backend_addresses=None,
    backend_settings=None,
    media_host=None,
    main_port=DEFAULT_MAIN_PORT,
    main_replication_port=DEFAULT_MAIN_REPLICATION_PORT,
    port_base=DEFAULT_WORKER_PORT_BASE,
    replication_port_base=DEFAULT_REPLICATION_PORT_BASE,
    metrics=None,
):
    """Validate the worker list and derive the whole deployment from it.

    ``hosts`` maps inventory host names to the address other hosts reach them
    at; ``main_host`` runs the main process; ``proxy_hosts`` run nginx (default:
    the main host). Listeners use UNIX sockets in ``socket_dir`` where every
    process that connects to them shares the listener's host, and TCP on the
    host's address where one does not. Given the inventory's ``groups`` and
    ``hostvars`` instead, it reads the hosts from the groups synapse_main,
    synapse_workers and nginx.

    ``backend_hosts`` maps "postgres" and "redis" to the host that runs each
    (default: the main host), ``backend_addresses`` gives the addresses of
    those not in ``hosts``; with ``groups`` both come from the groups postgres
    and redis. ``backend_settings`` sets the PostgreSQL port, database and
    user and the Redis port (see BACKEND_DEFAULTS); None keeps a default.
    ``media_host`` holds the media store (default: the main host): the media
    repositories run there. ``metrics`` (enabled, port, port_base,
    addresses, allowed_clients) gives every process a metrics listener on its
    host's metrics address, loopback unless ``addresses`` (with ``groups``:
    each host's synapse_metrics_address) names another (see metrics.py).
    """
    if groups is not None:
        layout = inventory_layout(groups, hostvars or {})
        main_host = main_host or layout["main_host"]
        hosts = hosts or layout["hosts"]
        proxy_hosts = proxy_hosts or layout["proxy_hosts"]
        backend_hosts = backend_hosts or layout["backend_hosts"]
        backend_addresses = backend_addresses or layout["backend_addresses"]
        if metrics is None or isinstance(metrics, dict):
            metrics = dict(metrics or {})
            given = metrics.get("addresses")
            if given is None or isinstance(given, dict):
                # Each host's synapse_metrics_address, unless the option names it.
                metrics["addresses"] = {**layout["metrics_addresses"], **(given or {})}
    if socket_dir is None:
        socket_dir = DEFAULT_SOCKET_DIR
    if hosts is None:
        hosts = {main_host or "localhost": "127.0.0.1"}
    if not isinstance(hosts, dict) or not hosts:
        _fail("'hosts' must map inventory host names to addresses, e.g. {app1: 10.0.0.2}.")
    if main_host is None:
        if len(hosts) != 1:
            _fail(f"give main_host, one of the inventory hosts {_known(hosts)}.")
        main_host = next(iter(hosts))
    if main_host not in hosts:
        _fail(f"main_host {main_host!r} is not among the inventory hosts ({_known(hosts)}).")
    proxy_hosts = list(proxy_hosts) if proxy_hosts else [main_host]
    for host in proxy_hosts:
        if host not in hosts:
            _fail(f"proxy host {host!r} is not among the inventory hosts ({_known(hosts)}).")
    if not isinstance(socket_dir, str) or not socket_dir.startswith("/"):
        _fail(f"socket_dir must be an absolute path, got {socket_dir!r}.")

    workers = resolve_workers(workers, preset)
    if not isinstance(workers, (list, tuple)):
        _fail(
            f"synapse_workers must be a list of workers, got a {kind(workers)}, {show(workers)}; "
            "see the README's 'Describing workers'."
        )
    entries = [_check_entry(i, e, hosts, main_host) for i, e in enumerate(workers)]
    seen = set()
    for entry in entries:
        if entry["name"] in seen:
            _fail(f"two workers are named {entry['name']!r}; worker names must be unique.")
        seen.add(entry["name"])
    instances = _expand(entries)
    _check_exclusive(instances)
    media_host = _check_media_host(instances, media_host or main_host, main_host, hosts)

    synapse_hosts = {main_host} | {i["host"] for i in instances}
    replication_over_unix = len(synapse_hosts) == 1
    listeners = _Listeners(hosts, socket_dir)

    main_listeners = [
        listeners.make(
            MAIN_INSTANCE,
            main_host,
            "http",
            ["client", "federation"],
            proxy_hosts == [main_host],
            main_port,
        )
    ]
    if instances:
        main_listeners.append(
            listeners.make(
                MAIN_INSTANCE,
                main_host,
                "replication",
                ["replication"],
                replication_over_unix,
                main_replication_port,
            )
        )
    main = {
        "name": MAIN_INSTANCE,
        "host": main_host,
        "listeners": [listener for listener, _conf in main_listeners],
        # The `listeners` key of homeserver.yaml.
        "config": {"listeners": [conf for _listener, conf in main_listeners]},
    }

    expanded = []
    for slot, instance in enumerate(instances):
        types = [WORKER_TYPES[t] for t in instance["types"]]
        resources = sorted({r for t in types for r in t.resources})
        public = bool(resources)
        http = listeners.make(
            instance["name"],
            instance["host"],
            "http",
            resources or ["health"],
            # A health-only listener is reached from its own host alone.
            (proxy_hosts == [instance["host"]]) if public else True,
            instance["port"] if instance["port"] is not None else port_base + slot,
        )
        worker_listeners = [http]
        if any(t.needs_replication_listener for t in types):
            worker_listeners.append(
                listeners.make(
                    instance["name"],
                    instance["host"],
                    "replication",
                    ["replication"],
                    replication_over_unix,
                    replication_port_base + slot,
                )
            )
        config = {
            "worker_app": types[0].worker_app,
            "worker_name": instance["name"],
            "worker_listeners": [conf for _listener, conf in worker_listeners],
        }
        for worker_type in types:
            config.update(worker_type.worker_settings)
        expanded.append(
            {
                "name": instance["name"],
                "group": instance["group"],
                "types": instance["types"],
                "worker_app": config["worker_app"],
                "host": instance["host"],
                "listeners": [listener for listener, _conf in worker_listeners],
                "config": config,
            }
        )

    shared = _shared_config(main, expanded)
    backends = _backends(
        main_host,
        synapse_hosts,
        hosts,
        backend_hosts or {},
        backend_addresses or {},
        _backend_settings(backend_settings),
    )
    metrics_given = metrics_settings(metrics, len(expanded), hosts)
    metrics_section = derive_metrics(
        main,
        expanded,
        [instance["number"] for instance in instances],
        metrics_given,
        listeners.taken,
        backends,
    )
    if metrics_section["enabled"]:
        shared["enable_metrics"] = True
    return {
        "main": main,
        "workers": expanded,
        "shared_config": shared,
        "nginx": _nginx(main, expanded),
        "hosts": {
            host: [w["name"] for w in expanded if w["host"] == host] for host in hosts
        },
        "socket_dir": listeners.socket_dir,
        "process_count": 1 + len(expanded),
        # Whether replication runs over TCP between hosts: only then does it
        # need worker_replication_secret (a UNIX socket is guarded by its
        # permissions).
        "replication_crosses_hosts": bool(expanded) and not replication_over_unix,
        # The host that holds the media store (and serves media).
        "media_host": media_host,
        "backends": backends,
        # Per host, the TCP ports only the deployment's hosts (the metrics
        # ports: only synapse_metrics_allowed_clients) may reach, for the
        # optional firewall.
        "firewall": guarded_ports(
            [main, *expanded],
            hosts,
            proxy_hosts,
            synapse_hosts,
            backends,
            metrics_section["targets"],
            metrics_given["allowed_clients"],
        ),
        # Each process's metrics listener (host, address, port) and the
        # Prometheus scrape config; empty unless metrics are on.
        "metrics": metrics_section,
    }


def _backend_settings(given):
    """BACKEND_DEFAULTS with the operator's settings, each checked."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        _fail(f"backend_settings must map postgres and redis to their settings, got {given!r}.")
    unknown = sorted(set(given) - set(BACKEND_GROUPS))
    if unknown:
        _fail(f"backend_settings names {', '.join(unknown)}; it takes {_known(BACKEND_GROUPS)}.")
    settings = {}
    for name in BACKEND_GROUPS:
        values = given.get(name) or {}
        extra = sorted(set(values) - set(SETTABLE_BACKEND_KEYS[name]))
        if extra:
            _fail(
                f"backend_settings.{name} sets {', '.join(extra)}; "
                f"it takes {_known(SETTABLE_BACKEND_KEYS[name])}."
            )
        merged = dict(BACKEND_DEFAULTS[name])
        merged.update({key: value for key, value in values.items() if value is not None})
        port = merged["port"]
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            _fail(f"the {name} port must be a TCP port (1-65535), got {merged['port']!r}.")
        merged["port"] = port
        settings[name] = merged
    for key in ("database", "user"):
        value = settings["postgres"][key]
        if not isinstance(value, str) or not SQL_IDENTIFIER_RE.match(value):
            _fail(
                f"the PostgreSQL {key} name {value!r} must be a lower-case SQL identifier "
                "(letters, digits and _, not starting with a digit, at most 63 characters)."
            )
    if settings["postgres"]["database"] in RESERVED_DATABASES:
        _fail(
            f"the PostgreSQL database {settings['postgres']['database']!r} is one of PostgreSQL's "
            f"own ({_known(sorted(RESERVED_DATABASES))}); name Synapse's database otherwise."
        )
    return settings


def _connection(name, settings, backend_host, backend_address, client_host):
    """How a Synapse process on ``client_host`` reaches a backend."""
    if name == "postgres":
        local = client_host == backend_host
        return {
            "host": settings["socket_dir"] if local else backend_address,
            "port": settings["port"],
            "dbname": settings["database"],
            "user": settings["user"],
        }
    if client_host == backend_host:
        return {"path": settings["socket_path"]}
    return {"host": backend_address, "port": settings["port"]}


def _backends(main_host, synapse_hosts, hosts, backend_hosts, backend_addresses, settings):
    """Where PostgreSQL and Redis run and who reaches them how.

    A Synapse process uses a backend's UNIX socket when it shares the
    backend's host and TCP otherwise, so the backend listens on TCP exactly
    when some Synapse process runs elsewhere. ``connections`` gives each
    Synapse host its own way in; the backend's roles read the same entry.
    """
    unknown = sorted(set(backend_hosts) - set(BACKEND_GROUPS))
    if unknown:
        _fail(f"backend_hosts names {', '.join(unknown)}; it takes {_known(BACKEND_GROUPS)}.")
    addresses = {**backend_addresses, **hosts}
    backends = {}
    for name in BACKEND_GROUPS:
        host = backend_hosts.get(name) or main_host
        if host not in addresses:
            _fail(
                f"the {name} host {host!r} has no address; put it in the inventory group "
                f"{name!r} or among the hosts ({_known(hosts)})."
            )
        remote = sorted(h for h in synapse_hosts if h != host)
        backends[name] = {
            "host": host,
            "address": addresses[host],
            **settings[name],
            "listen_tcp": bool(remote),
            # Inventory hosts that run a Synapse process, and the addresses of
            # those that connect over TCP (for pg_hba.conf and firewalls).
            "client_hosts": sorted(synapse_hosts),
            "tcp_client_addresses": list(dict.fromkeys(addresses[h] for h in remote)),
            "connections": {
                client: _connection(name, settings[name], host, addresses[host], client)
                for client in sorted(synapse_hosts)
            },
        }
    return backends


def _replication(process):
    for listener in process["listeners"]:
        if listener["purpose"] == "replication":
            return listener
    return None


def _shared_config(main, workers):
    """Every homeserver.yaml key the worker list implies."""
    if not workers:
        return {}
    shared = {"instance_map": {MAIN_INSTANCE: _location(_replication(main))}}
    stream_writers = {}
    for worker in workers:
        replication = _replication(worker)
        if replication is not None:
            shared["instance_map"][worker["name"]] = _location(replication)
        for type_name in worker["types"]:
            worker_type = WORKER_TYPES[type_name]
            for stream in worker_type.streams:
                stream_writers.setdefault(stream, []).append(worker["name"])
            for setting in worker_type.instance_lists:
                shared.setdefault(setting, []).append(worker["name"])
            for setting in worker_type.duties:
                # The first instance takes a duty that may only run once.
                shared.setdefault(setting, worker["name"])
            shared.update(worker_type.shared_settings)
    for stream in sorted(STREAMS_MAIN_ALSO_WRITES & set(stream_writers)):
        stream_writers[stream].append(MAIN_WRITER)
    if stream_writers:
        shared["stream_writers"] = stream_writers
    return shared


def _condition_map(upstream, group, fallback):
    """The nginx map choosing ``upstream`` for the requests a limited group serves.

    A group limited to some methods maps ``$request_method``; one limited to
    requests without a query argument maps ``$arg_<name>`` (empty when the
    argument is missing). Every other request goes to ``fallback``.
    """
    if group.methods:
        source = "$request_method"
        condition = "for_" + "_".join(m.lower() for m in group.methods)
        cases = [{"pattern": method, "value": upstream} for method in group.methods]
    else:
        source = f"$arg_{group.without_arg}"
        condition = f"without_{group.without_arg}"
        cases = [{"pattern": "", "value": upstream}]
    return {
        "source": source,
        "variable": f"${upstream}_{condition}",
        "default": fallback,
        "cases": cases,
    }


def _condition_text(group):
    """The requests a limited group serves, in words (for the site's comments)."""
    if group.methods:
        return ", ".join(group.methods)
    return f"no {group.without_arg} argument"


def _nginx(main, workers):
    """nginx upstreams and ordered routes: first match wins, else main.

    A route whose endpoint group is limited (to some ``methods``, or to
    requests ``without_arg``) sends those requests to its upstream and every
    other request where the route would send it without the limit: to the
    next running type that lists the same pattern (``fallback_upstream``),
    else to main. Its location proxies to the variable of an nginx map
    (``upstream_variable``) instead of the upstream itself.
    """
    main_upstream = "synapse_main"
    upstreams = {
        main_upstream: {
            "servers": [main["listeners"][0]["upstream_server"]],
            "balance": None,
            "hash_key": None,
        }
    }
    # (pattern, type name, group, upstream) in route order.
    candidates = []
    for type_name in ROUTE_PRIORITY:
        members = [w for w in workers if type_name in w["types"]]
        if not members:
            continue
        servers = [w["listeners"][0]["upstream_server"] for w in members]
        endpoints = WORKER_TYPES[type_name].endpoints
        for group in endpoints:
            # synapse_<type>, or synapse_<type>_by_<balance> for a group that
            # balances unlike the type's first group.
            upstream = f"synapse_{type_name}"
            if group.balance != endpoints[0].balance:
                upstream += f"_by_{group.balance}"
            upstreams[upstream] = {
                "servers": servers,
                "balance": group.balance,
                "hash_key": BALANCE_KEYS[group.balance]["variable"]
                if group.balance in BALANCE_KEYS
                else None,
            }
            candidates.extend((pattern, type_name, group, upstream) for pattern in group.patterns)

    routes = []
    condition_maps = {}
    seen_patterns = set()
    for index, (pattern, type_name, group, upstream) in enumerate(candidates):
        if pattern in seen_patterns:
            continue
        seen_patterns.add(pattern)
        route = {
            "pattern": pattern,
            "upstream": upstream,
            "worker_type": type_name,
            # Empty: every method goes to the upstream.
            "methods": list(group.methods),
            # The query argument whose absence the route serves, else None.
            "without_arg": group.without_arg or None,
            "upstream_variable": None,
            "fallback_upstream": None,
            "condition": None,
        }
        if group.methods or group.without_arg:
            fallback = next(
                (
                    later_upstream
                    for later_pattern, _later_regex, later_group, later_upstream in candidates[index + 1:]
                    if later_pattern == pattern and not (later_group.methods or later_group.without_arg)
                ),
                main_upstream,
            )
            condition_map = _condition_map(upstream, group, fallback)
            known = condition_maps.get(condition_map["variable"])
            if known is not None and known["default"] != fallback:
                condition_map["variable"] += f"_else_{fallback}"
            condition_maps.setdefault(condition_map["variable"], condition_map)
            route.update(
                upstream_variable=condition_map["variable"],
                fallback_upstream=fallback,
                condition=_condition_text(group),
            )
        routes.append(route)
    used = {u["balance"] for u in upstreams.values()}
    return {
        "upstreams": upstreams,
        "routes": routes,
        "default_upstream": main_upstream,
        "denied_patterns": list(PROXY_DENIED_PATTERNS),
        # nginx `map` blocks: the hash keys the upstreams use, then the
        # upstreams of the limited routes.
        "maps": [
            {
                "source": m["source"],
                "variable": m["variable"],
                "default": m["default"],
                "cases": [{"pattern": p, "value": v} for p, v in m["cases"]],
            }
            for method in sorted(used & set(BALANCE_KEYS))
            for m in BALANCE_KEYS[method]["maps"]
        ]
        + list(condition_maps.values()),
    }
