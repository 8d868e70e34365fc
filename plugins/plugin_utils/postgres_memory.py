# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL's memory settings sized from its host's RAM and connection count.

The rules are PostgreSQL's own advice ("Resource Consumption" in its docs)
and pgtune's for a web workload, applied to the RAM PostgreSQL may use:

* the whole host when no Synapse process runs there; else the host less what
  the Synapse processes hold (PROCESS_MEMORY_MIB each) and SYSTEM_RESERVE_MIB
  for the system, Redis and nginx, but never less than a quarter of the host;
* shared_buffers a quarter of it (at least 128MB, at most 8GB: beyond that the
  kernel's page cache serves as well, and a container that sees its host's RAM
  stays sane), effective_cache_size three quarters;
* maintenance_work_mem a sixteenth (64MB to 2GB);
* work_mem what shared_buffers leaves, shared by three sorts or hashes per
  connection (4MB to 64MB: Synapse's queries are short).

shared_buffers and effective_cache_size are rounded down to 64MB, so that the
few MB a kernel update moves the host's MemTotal by rarely changes them
(a new shared_buffers restarts PostgreSQL).
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.polylith.synapse.plugins.plugin_utils.capacity import (
    PROCESS_MEMORY_MIB,
    synapse_processes,
)

# The system, Redis and nginx beside Synapse and PostgreSQL, in MiB.
SYSTEM_RESERVE_MIB = 256

SHARED_BUFFERS_MIN_MIB = 128
SHARED_BUFFERS_MAX_MIB = 8 * 1024
MAINTENANCE_WORK_MEM_MIN_MIB = 64
MAINTENANCE_WORK_MEM_MAX_MIB = 2 * 1024
WORK_MEM_MIN_MIB = 4
WORK_MEM_MAX_MIB = 64
OPERATIONS_PER_CONNECTION = 3
ROUNDING_MIB = 64

# Without the host's memory (facts not gathered): the role's former fixed values.
FALLBACK = {
    "shared_buffers": "256MB",
    "effective_cache_size": "1GB",
    "work_mem": "8MB",
    "maintenance_work_mem": "128MB",
}


def _fail(message: str) -> None:
    raise AnsibleFilterError(f"synapse_postgres_memory: {message}")


def _whole_number(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
        _fail(f"{name} must be a whole number, got {value!r} ({type(value).__name__}).")
    number = int(value)
    if number < minimum:
        _fail(f"{name} must be at least {minimum}, got {number}.")
    return number


def postgres_unit(mib: int) -> str:
    """``mib`` as PostgreSQL writes a size: GB when whole, else MB."""
    return f"{mib // 1024}GB" if mib % 1024 == 0 else f"{mib}MB"


def postgres_share_mib(memory_mib: int, processes: int) -> int:
    """The RAM PostgreSQL may use on a host of ``memory_mib`` running ``processes`` Synapse processes."""
    if not processes:
        return memory_mib
    left = memory_mib - processes * PROCESS_MEMORY_MIB - SYSTEM_RESERVE_MIB
    return max(left, memory_mib // 4)


def memory_settings_mib(share_mib: int, max_connections: int) -> dict:
    """The four settings in MiB for ``share_mib`` of RAM and ``max_connections``."""
    shared_buffers = share_mib // 4 // ROUNDING_MIB * ROUNDING_MIB
    shared_buffers = min(max(shared_buffers, SHARED_BUFFERS_MIN_MIB), SHARED_BUFFERS_MAX_MIB)
    effective_cache_size = max(share_mib * 3 // 4 // ROUNDING_MIB * ROUNDING_MIB, shared_buffers)
    maintenance = min(max(share_mib // 16, MAINTENANCE_WORK_MEM_MIN_MIB), MAINTENANCE_WORK_MEM_MAX_MIB)
    work_mem = max(share_mib - shared_buffers, 0) // (max_connections * OPERATIONS_PER_CONNECTION)
    work_mem = min(max(work_mem, WORK_MEM_MIN_MIB), WORK_MEM_MAX_MIB)
    return {
        "shared_buffers": shared_buffers,
        "effective_cache_size": effective_cache_size,
        "work_mem": work_mem,
        "maintenance_work_mem": maintenance,
    }


def postgres_memory(deployment, host, memory_mib=None, max_connections=None):
    """shared_buffers, effective_cache_size, work_mem and maintenance_work_mem for ``host``.

    ``memory_mib`` is the host's RAM (Ansible's fact memtotal_mb); None returns
    FALLBACK. ``max_connections`` is PostgreSQL's; the values are strings in
    PostgreSQL's units (e.g. 1GB, 448MB).
    """
    if not isinstance(deployment, dict):
        _fail(f"the input must be the derived deployment (a dict), got {type(deployment).__name__}.")
    if not isinstance(host, str) or not host:
        _fail(f"host must be an inventory host name, got {host!r}.")
    if memory_mib is None:
        return dict(FALLBACK)
    memory_mib = _whole_number("memory_mib", memory_mib, 1)
    max_connections = _whole_number("max_connections", max_connections, 1)
    share = postgres_share_mib(memory_mib, synapse_processes(deployment, host))
    return {name: postgres_unit(mib) for name, mib in memory_settings_mib(share, max_connections).items()}
