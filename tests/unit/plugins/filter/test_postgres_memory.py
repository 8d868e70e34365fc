"""PostgreSQL's memory settings sized from the host's RAM, its Synapse processes and max_connections."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.polylith.synapse.plugins.filter.synapse_topology import (
    FilterModule,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.capacity import (
    PROCESS_MEMORY_MIB,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.postgres_memory import (
    FALLBACK,
    SYSTEM_RESERVE_MIB,
    postgres_memory,
    postgres_share_mib,
    postgres_unit,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)

ONE_HOST = {"hosts": {"app1": "10.0.0.1"}, "main_host": "app1"}
DB_HOST = {"hosts": {"app1": "10.0.0.1", "db1": "10.0.0.9"}, "main_host": "app1"}

FILTER = FilterModule().filters()["synapse_postgres_memory"]


def layout(processes, **hosts):
    """main on app1 and processes - 1 synchrotrons beside it."""
    workers = [{"name": "sync", "types": ["synchrotron"], "count": processes - 1}] if processes > 1 else []
    return build_topology(workers, **hosts)


def sizes(shared_buffers, effective_cache_size, work_mem, maintenance_work_mem):
    return {
        "shared_buffers": shared_buffers,
        "effective_cache_size": effective_cache_size,
        "work_mem": work_mem,
        "maintenance_work_mem": maintenance_work_mem,
    }


@pytest.mark.parametrize(
    ("memory_mib", "expected"),
    [
        (2048, sizes("512MB", "1536MB", "17MB", "128MB")),
        (4096, sizes("1GB", "3GB", "34MB", "256MB")),
        (24576, sizes("6GB", "18GB", "64MB", "1536MB")),
        (65536, sizes("8GB", "48GB", "64MB", "2GB")),
        (1024, sizes("256MB", "768MB", "8MB", "64MB")),
        (512, sizes("128MB", "384MB", "4MB", "64MB")),
    ],
)
def test_a_database_host_of_its_own_uses_all_of_its_ram(memory_mib, expected):
    # max_connections 30: one Synapse process's pool of 10 plus 20 reserved.
    assert postgres_memory(layout(1, **DB_HOST), "db1", memory_mib, 30) == expected


@pytest.mark.parametrize(
    ("memory_mib", "processes", "max_connections", "expected"),
    [
        (2048, 3, 50, sizes("320MB", "960MB", "6MB", "83MB")),
        (2048, 13, 150, sizes("128MB", "384MB", "4MB", "64MB")),
        (4096, 3, 50, sizes("832MB", "2496MB", "17MB", "211MB")),
        (4096, 13, 150, sizes("448MB", "1408MB", "4MB", "118MB")),
        (24576, 3, 50, sizes("5952MB", "17856MB", "64MB", "1491MB")),
        (24576, 13, 150, sizes("5568MB", "16768MB", "37MB", "1398MB")),
    ],
)
def test_synapse_on_the_same_host_keeps_its_memory(memory_mib, processes, max_connections, expected):
    assert postgres_memory(layout(processes, **ONE_HOST), "app1", memory_mib, max_connections) == expected


def test_the_share_leaves_room_for_each_synapse_process_and_the_system():
    assert postgres_share_mib(4096, 0) == 4096
    assert postgres_share_mib(4096, 3) == 4096 - 3 * PROCESS_MEMORY_MIB - SYSTEM_RESERVE_MIB
    # More processes than the host holds (the capacity check warns): a quarter of the RAM stays.
    assert postgres_share_mib(2048, 13) == 512


def test_only_the_processes_on_the_database_host_count():
    topo = build_topology([{"name": "sync", "types": ["synchrotron"], "count": 12}], **DB_HOST)
    assert postgres_memory(topo, "db1", 4096, 150)["shared_buffers"] == "1GB"


def test_shared_buffers_stays_put_when_the_kernel_reports_a_few_mb_less():
    topo = layout(1, **DB_HOST)
    assert postgres_memory(topo, "db1", 3925, 30)["shared_buffers"] == postgres_memory(topo, "db1", 3900, 30)[
        "shared_buffers"
    ]


def test_more_connections_mean_less_work_mem_down_to_the_floor():
    topo = layout(1, **DB_HOST)
    assert postgres_memory(topo, "db1", 8192, 30)["work_mem"] == "64MB"
    assert postgres_memory(topo, "db1", 8192, 100)["work_mem"] == "20MB"
    assert postgres_memory(topo, "db1", 8192, 1000)["work_mem"] == "4MB"


def test_without_the_memory_fact_the_fixed_values_remain():
    assert postgres_memory(layout(13, **ONE_HOST), "app1", None, None) == FALLBACK
    assert FALLBACK == sizes("256MB", "1GB", "8MB", "128MB")


def test_sizes_are_written_in_postgresql_units():
    assert postgres_unit(128) == "128MB"
    assert postgres_unit(1024) == "1GB"
    assert postgres_unit(1536) == "1536MB"
    assert postgres_unit(8192) == "8GB"


def test_facts_given_as_strings_are_accepted():
    topo = layout(1, **DB_HOST)
    assert postgres_memory(topo, "db1", "4096", "30") == postgres_memory(topo, "db1", 4096, 30)


@pytest.mark.parametrize(
    ("deployment", "host", "memory_mib", "max_connections", "message"),
    [
        ([], "db1", 4096, 30, "the input must be the derived deployment (a dict), got list."),
        ({}, "", 4096, 30, "host must be an inventory host name, got ''."),
        ({}, "db1", "4 GB", 30, "memory_mib must be a whole number, got '4 GB' (str)."),
        ({}, "db1", 0, 30, "memory_mib must be at least 1, got 0."),
        ({}, "db1", 4096, None, "max_connections must be a whole number, got None (NoneType)."),
        ({}, "db1", 4096, 0, "max_connections must be at least 1, got 0."),
        ({}, "db1", True, 30, "memory_mib must be a whole number, got True (bool)."),
    ],
)
def test_bad_input_is_named(deployment, host, memory_mib, max_connections, message):
    with pytest.raises(AnsibleFilterError) as error:
        postgres_memory(deployment, host, memory_mib, max_connections)
    assert str(error.value) == f"synapse_postgres_memory: {message}"


def test_the_filter_passes_its_options_through():
    topo = layout(3, **ONE_HOST)
    assert FILTER(topo, "app1", memory_mib=4096, max_connections=50) == postgres_memory(topo, "app1", 4096, 50)
    assert FILTER(topo, "app1") == FALLBACK
