# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a host can carry the Synapse processes the deployment gives it.

Workers cost CPU for replication: on a 2-core host twelve workers carried
about half the monolith's message rate (docs/benchmark.md). A layout that
puts clearly more processes on a host than its cores carry is warned about at
deploy time; it is not refused, since an idle server may run it on purpose.
"""

from __future__ import annotations

# More Synapse processes per core than this clearly oversubscribes a host.
PROCESSES_PER_CORE = 2

# What one Synapse process holds resident once it has served a little load,
# in MiB (measured on the lab host, docs/benchmark.md), and what the rest of
# the host (PostgreSQL, Redis, nginx, the system) is left at least.
PROCESS_MEMORY_MIB = 150
HOST_RESERVE_MIB = 512


def synapse_processes(deployment, host):
    """The Synapse processes the deployment runs on ``host``: main and workers."""
    count = len(deployment.get("hosts", {}).get(host, []))
    if deployment.get("main", {}).get("host") == host:
        count += 1
    return count


def capacity_warnings(deployment, host, cores, memory_mib):
    """One message per way the deployment oversubscribes ``host``.

    ``cores`` and ``memory_mib`` are the host's (Ansible's facts
    processor_vcpus and memtotal_mb); None skips that check.
    """
    processes = synapse_processes(deployment, host)
    warnings = []
    if not processes:
        return warnings
    advice = (
        "Workers pay across machines, not on one small host: use fewer workers here "
        "(synapse_worker_preset: monolith, or a shorter synapse_workers list), or place "
        "some on other hosts with `hosts:`; see the README's 'Choosing a layout'."
    )
    if cores and processes > PROCESSES_PER_CORE * int(cores):
        warnings.append(
            f"{host} runs {processes} Synapse processes on {int(cores)} cores, more than "
            f"{PROCESSES_PER_CORE} per core: the processes will compete for the CPU and the "
            f"server will be slower than with fewer of them. {advice}"
        )
    if memory_mib:
        wanted = processes * PROCESS_MEMORY_MIB + HOST_RESERVE_MIB
        if wanted > int(memory_mib):
            warnings.append(
                f"{host} runs {processes} Synapse processes in {int(memory_mib)} MiB of memory; "
                f"they need about {PROCESS_MEMORY_MIB} MiB each plus {HOST_RESERVE_MIB} MiB for "
                f"the rest of the host, {wanted} MiB in all. {advice}"
            )
    return warnings
