# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whether a host can carry the Synapse processes the deployment gives it, and
how much memory each of them may fill with caches.

Workers cost CPU for replication: on a 2-core host twelve workers carried
about half the monolith's message rate (docs/benchmark.md). A layout that
puts clearly more processes on a host than its cores carry is warned about at
deploy time; it is not refused, since an idle server may run it on purpose.

Under jemalloc, Synapse evicts cache entries once the process's allocated
memory passes a ceiling (``caches.cache_autotuning``). The host's memory is
shared out among all the Synapse processes it runs, after what PostgreSQL,
Redis, nginx and the system keep.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

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


# The share of a host's memory its Synapse processes together may fill before
# they evict cache entries: less where PostgreSQL shares the host (its shared
# buffers and the page cache it reads through), more where Synapse has it
# alone with Redis (capped by its maxmemory), nginx and the system.
CACHE_SHARE_WITH_POSTGRES = 0.5
CACHE_SHARE_WITHOUT_POSTGRES = 0.7
# Once past the ceiling, a process evicts until it is back under this part of
# it (Synapse's own example: 1024M and 758M) ...
CACHE_TARGET_RATIO = 0.75
# ... but never entries used within this time, so hot caches stay.
CACHE_MIN_TTL = "5m"


def cache_memory_share(deployment, host):
    """The default share of ``host``'s memory for its Synapse processes."""
    postgres = deployment.get("backends", {}).get("postgres", {})
    return CACHE_SHARE_WITH_POSTGRES if postgres.get("host") == host else CACHE_SHARE_WITHOUT_POSTGRES


def cache_autotuning(deployment, host, memory_mib, share=None, cores=None):
    """Synapse's ``caches.cache_autotuning`` for each Synapse process on ``host``.

    ``memory_mib`` is the host's memory (the fact memtotal_mb); ``share`` the
    part of it all the host's Synapse processes may fill together (None: the
    default for the host, see cache_memory_share). Each process gets an equal
    part: the figure Synapse compares is jemalloc's allocated bytes of the
    whole process. With ``cores`` (the fact processor_vcpus) the part is
    counted for the most processes the host carries (PROCESSES_PER_CORE per
    core) or the ones it runs, whichever is more: adding or removing a worker
    within that leaves every process's ceiling, so nothing else restarts.
    None when there is nothing to share out: the memory is unknown or the
    host runs no Synapse process.
    """
    if share is None:
        share = cache_memory_share(deployment, host)
    share = _share(share)
    processes = synapse_processes(deployment, host)
    if not memory_mib or not processes:
        return None
    if cores:
        processes = max(processes, PROCESSES_PER_CORE * int(cores))
    ceiling = int(int(memory_mib) * share / processes)
    if ceiling < 1:
        return None
    return {
        "max_cache_memory_usage": f"{ceiling}M",
        "target_cache_memory_usage": f"{int(ceiling * CACHE_TARGET_RATIO)}M",
        "min_cache_ttl": CACHE_MIN_TTL,
    }


def _share(value):
    """``value`` as a fraction above 0 and at most 1, or a precise error."""
    try:
        share = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        share = None
    if share is None or not 0 < share <= 1:
        raise AnsibleFilterError(
            f"synapse_cache_autotuning: the memory share must be a number above 0 and at most 1 "
            f"(e.g. 0.5 for half the host's memory), got {value!r} ({type(value).__name__})"
        )
    return share
