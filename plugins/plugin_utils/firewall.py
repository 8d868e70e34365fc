# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which TCP ports of each host only the deployment's own hosts may reach.

The deployment's internal ports are PostgreSQL and Redis where they listen on
TCP, the replication listeners, and the Synapse listeners nginx reaches over
TCP from another host. With metrics on, each Synapse process's metrics port
joins them, open to the operator's synapse_metrics_allowed_clients alone
(addresses or CIDR networks; the host itself always reaches its own ports
over loopback). ``guarded_ports`` lists them per inventory host with the
sources allowed to connect, for the optional nftables firewall: every other
source is refused. Public ports (nginx's) and everything else on the host are
left to the host's own rules.
"""

from __future__ import annotations

import ipaddress


def _family(address):
    """"ip" or "ip6" for an address, None for a name (nftables wants addresses)."""
    try:
        return "ip6" if ipaddress.ip_address(address).version == 6 else "ip"
    except ValueError:
        return None


def _source_family(source):
    """"ip" or "ip6" for an address or CIDR network a rule admits, None for anything else."""
    try:
        return "ip6" if ipaddress.ip_network(source, strict=False).version == 6 else "ip"
    except ValueError:
        return None


def _rule(address, port, purpose, sources, speaks=None):
    sources = sorted(set(sources))
    return {
        "address": address,
        "port": port,
        "purpose": purpose,
        # The protocol behind the port, for probes: postgres, redis, http,
        # metrics (a metrics listener, reached by synapse_metrics_allowed_clients).
        "speaks": speaks or "http",
        "sources": sources,
        "ipv4_sources": [a for a in sources if _source_family(a) == "ip"],
        "ipv6_sources": [a for a in sources if _source_family(a) == "ip6"],
    }


def guarded_ports(processes, hosts, proxy_hosts, synapse_hosts, backends, metrics_targets=(), metrics_clients=()):
    """Per inventory host, the ports to guard and who may reach them.

    ``processes`` are main and the workers as build_topology returns them,
    ``hosts`` maps inventory hosts to addresses, ``proxy_hosts`` run nginx,
    ``synapse_hosts`` run a Synapse process and ``backends`` is the
    topology's backends entry; ``metrics_targets`` are the topology's
    metrics targets (none with metrics off), open to ``metrics_clients``
    only. A host with nothing on TCP gets an empty list.
    """
    proxy_addresses = [hosts[h] for h in proxy_hosts]
    synapse_addresses = [hosts[h] for h in synapse_hosts]
    rules = {host: [] for host in hosts}
    for process in processes:
        for listener in process["listeners"]:
            if "port" not in listener:
                continue
            if listener["purpose"] == "replication":
                # Every Synapse process may call every replication listener.
                sources = synapse_addresses
            else:
                # Client and federation traffic comes through nginx.
                sources = proxy_addresses
            rules[process["host"]].append(
                _rule(
                    listener["address"],
                    listener["port"],
                    f"{listener['purpose']} of {process['name']}",
                    sources,
                )
            )
    for name, backend in backends.items():
        if backend["listen_tcp"]:
            rules.setdefault(backend["host"], []).append(
                _rule(backend["address"], backend["port"], name, backend["tcp_client_addresses"], name)
            )
    for target in metrics_targets:
        rules[target["host"]].append(
            _rule(target["address"], target["port"], f"metrics of {target['name']}", metrics_clients, "metrics")
        )
    for host_rules in rules.values():
        host_rules.sort(key=lambda rule: rule["port"])
    return rules


def unusable_addresses(hosts):
    """Inventory hosts whose address is a name, which nftables cannot match."""
    return sorted(host for host, address in hosts.items() if _family(address) is None)
