# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn the worker list into a whole Synapse deployment, and check its input.

The logic lives in plugin_utils/topology.py (plain Python, unit-tested); this
file only exposes it to Jinja. Each filter's documentation is in the YAML file
of the same name beside this one.
"""

from __future__ import annotations

from ansible_collections.polylith.synapse.plugins.plugin_utils.capacity import (
    cache_autotuning,
    capacity_warnings,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.postgres_memory import (
    postgres_memory,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.restarts import (
    DEFAULT_BATCH_SIZE,
    assignments,
    restart_batches,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.shared_inputs import (
    acme_problems,
    input_problems,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.signing_key import (
    key_refusal,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)


def synapse_topology(workers=None, **options):
    """The whole derived deployment; see synapse_topology.yml."""
    return build_topology(workers, **options)


def synapse_instance_map(workers=None, **options):
    """The `instance_map` homeserver setting (empty without workers)."""
    return build_topology(workers, **options)["shared_config"].get("instance_map", {})


def synapse_stream_writers(workers=None, **options):
    """The `stream_writers` homeserver setting (empty when main writes every stream)."""
    return build_topology(workers, **options)["shared_config"].get("stream_writers", {})


def synapse_nginx_routes(workers=None, **options):
    """nginx upstreams and ordered routes."""
    return build_topology(workers, **options)["nginx"]


def synapse_input_problems(groups, hostvars=None, deployment=None, host=None, values=None):
    """Problems with the shared inventory variables; see synapse_input_problems.yml."""
    return input_problems(groups, hostvars, deployment, host=host, values=values)


def synapse_acme_problems(values):
    """Problems with the nginx role's ACME settings; see synapse_acme_problems.yml."""
    return acme_problems(values if isinstance(values, dict) else {})


def synapse_capacity_warnings(deployment, host, cores=None, memory_mib=None):
    """How the deployment oversubscribes a host; see synapse_capacity_warnings.yml."""
    return capacity_warnings(deployment, host, cores, memory_mib)


def synapse_postgres_memory(deployment, host, memory_mib=None, max_connections=None):
    """PostgreSQL's memory settings for a host; see synapse_postgres_memory.yml."""
    return postgres_memory(deployment, host, memory_mib, max_connections)


def synapse_cache_autotuning(deployment, host, memory_mib=None, share=None, cores=None):
    """Each Synapse process's cache memory ceiling on a host; see synapse_cache_autotuning.yml."""
    return cache_autotuning(deployment, host, memory_mib, share, cores)


def synapse_signing_key_refusal(host, **state):
    """Why a run must not give the server a new signing key; see synapse_signing_key_refusal.yml."""
    return key_refusal(host, **state)


def synapse_restart_batches(deployment, due=None, size=DEFAULT_BATCH_SIZE):
    """The workers to restart, in batches; see synapse_restart_batches.yml."""
    return restart_batches(deployment, due, size)


def synapse_assignments(deployment):
    """Who writes each stream and runs each duty; see synapse_assignments.yml."""
    return assignments(deployment)


class FilterModule:
    """polylith.synapse topology filters."""

    def filters(self):
        return {
            "synapse_topology": synapse_topology,
            "synapse_instance_map": synapse_instance_map,
            "synapse_stream_writers": synapse_stream_writers,
            "synapse_nginx_routes": synapse_nginx_routes,
            "synapse_input_problems": synapse_input_problems,
            "synapse_capacity_warnings": synapse_capacity_warnings,
            "synapse_postgres_memory": synapse_postgres_memory,
            "synapse_cache_autotuning": synapse_cache_autotuning,
            "synapse_signing_key_refusal": synapse_signing_key_refusal,
            "synapse_restart_batches": synapse_restart_batches,
            "synapse_assignments": synapse_assignments,
            "synapse_acme_problems": synapse_acme_problems,
        }
