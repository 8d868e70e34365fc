"""The order and batches of a rolling restart, and the settings that forbid one."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.polylith.synapse.plugins.filter.synapse_topology import (
    synapse_assignments,
    synapse_restart_batches,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.restarts import (
    ASSIGNMENT_SETTINGS,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_catalogue import (
    WORKER_TYPES,
)

ONE_HOST = {"hosts": {"app1": "10.0.0.1"}, "main_host": "app1"}
TWO_HOSTS = {"hosts": {"app1": "10.0.0.1", "app2": "10.0.0.2"}, "main_host": "app1"}


def types_of(topo):
    return {worker["name"]: worker["types"] for worker in topo["workers"]}


def check_invariants(topo, batches, size, due=None):
    """Every due worker once; writers first; no batch too large or darkening a type."""
    names = [name for batch in batches for name in batch]
    expected = [w["name"] for w in topo["workers"] if due is None or w["name"] in due]
    assert sorted(names) == sorted(expected) and len(names) == len(set(names))
    types = types_of(topo)
    instances = {}
    for worker_types in types.values():
        for name in worker_types:
            instances[name] = instances.get(name, 0) + 1
    writes = [any(WORKER_TYPES[t].streams for t in types[name]) for name in names]
    assert writes == sorted(writes, reverse=True), "a stream writer restarts after another worker"
    for batch in batches:
        assert 1 <= len(batch) <= size
        assert len({any(WORKER_TYPES[t].streams for t in types[n]) for n in batch}) == 1, batch
        for type_name, count in instances.items():
            in_batch = sum(type_name in types[name] for name in batch)
            assert in_batch <= max(1, count // 2), f"{batch} restarts {in_batch} of {count} {type_name}"


def test_seed002_restarts_writers_first_then_at_most_half_of_each_type():
    topo = build_topology(preset="seed002", **ONE_HOST)
    batches = synapse_restart_batches(topo)
    # Writers (client_sync's streams, media's quarantine stream, tasks'
    # events) first; then at most 2 of the 4 room workers and of the 4
    # senders at a time.
    assert batches == [
        ["client_sync", "media", "tasks"],
        ["federation_reader", "rooms1", "sender1", "rooms2"],
        ["sender2", "rooms3", "sender3", "rooms4"],
        ["sender4"],
    ]
    check_invariants(topo, batches, 4)


def test_two_instances_of_a_type_never_restart_together():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "count": 2, "hosts": ["app1", "app2"]},
         {"name": "reader", "types": ["client_reader"], "count": 3}],
        **TWO_HOSTS,
    )
    batches = synapse_restart_batches(topo, size=10)
    assert batches == [["sync1", "reader1"], ["sync2", "reader2"], ["reader3"]]
    check_invariants(topo, batches, 10)


def test_a_type_shared_by_two_entries_counts_as_one():
    """Two entries serving sync: restarting both at once would leave sync dark."""
    topo = build_topology(
        [{"name": "sync_a", "types": ["synchrotron"]},
         {"name": "sync_b", "types": ["synchrotron", "client_reader"]}],
        **ONE_HOST,
    )
    assert synapse_restart_batches(topo) == [["sync_a"], ["sync_b"]]


def test_only_due_workers_restart_and_unknown_names_are_ignored():
    topo = build_topology(preset="seed002", **ONE_HOST)
    due = ["rooms1", "rooms2", "client_sync", "retired_worker"]
    batches = synapse_restart_batches(topo, due=due)
    # Half of the four rooms workers may restart together; the others keep serving.
    assert batches == [["client_sync"], ["rooms1", "rooms2"]]
    check_invariants(topo, batches, 4, due=set(due))
    assert synapse_restart_batches(topo, due=[]) == []


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("preset", ["seed000", "seed001", "seed002", "one-of-each", "specialized-workers"])
def test_every_preset_keeps_the_rules(preset, size):
    topo = build_topology(preset=preset, **ONE_HOST)
    check_invariants(topo, synapse_restart_batches(topo, size=size), size)


def test_a_monolith_has_nothing_to_batch():
    assert synapse_restart_batches(build_topology(None, **ONE_HOST)) == []


@pytest.mark.parametrize("size", [0, -1, "4", True, 1.5])
def test_a_bad_batch_size_names_the_variable(size):
    topo = build_topology(preset="seed000", **ONE_HOST)
    with pytest.raises(AnsibleFilterError, match="synapse_worker_restart_batch_size is .*whole number of 1 or more"):
        synapse_restart_batches(topo, size=size)


def test_a_bad_input_is_named():
    with pytest.raises(AnsibleFilterError, match="expected the derived deployment"):
        synapse_restart_batches(["sync"])
    with pytest.raises(AnsibleFilterError, match="expected a list of worker names"):
        synapse_restart_batches(build_topology(preset="seed000", **ONE_HOST), due="sync")


def test_assignments_name_every_writer_and_duty():
    topo = build_topology(preset="specialized-workers", **ONE_HOST)
    found = synapse_assignments(topo)
    assert set(found) == set(ASSIGNMENT_SETTINGS)
    assert found["stream_writers"]["events"] == ["stream_writer_events"]
    assert found["run_background_tasks_on"] == "background"
    assert found["pusher_instances"] == ["pusher"]
    # Listener addresses and metrics are not assignments: a rolling restart suits them.
    assert "instance_map" not in found and "enable_metrics" not in found


def test_assignments_change_with_writers_and_duties_only():
    base = [{"name": "sync", "types": ["synchrotron"]}, {"name": "events", "types": ["event_persister"]}]
    before = synapse_assignments(build_topology(base, **ONE_HOST))
    more_sync = base + [{"name": "sync2", "types": ["synchrotron"]}]
    assert synapse_assignments(build_topology(more_sync, **ONE_HOST)) == before
    metrics = synapse_assignments(build_topology(base, metrics={"enabled": True}, **ONE_HOST))
    assert metrics == before
    second_persister = [base[0], {"name": "events", "types": ["event_persister"], "count": 2}]
    assert synapse_assignments(build_topology(second_persister, **ONE_HOST)) != before
    background = base + [{"name": "tasks", "types": ["background_worker"]}]
    assert synapse_assignments(build_topology(background, **ONE_HOST)) != before
    monolith = synapse_assignments(build_topology(None, **ONE_HOST))
    assert monolith["run_background_tasks_on"] is None and monolith != before
