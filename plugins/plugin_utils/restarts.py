# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""In which order the Synapse workers restart, and when they must all stop first.

A rolling restart restarts the main process first, then the workers in
batches, each batch healthy before the next. ``restart_batches`` decides the
batches: stream writers before the other workers (like main, they are what
the others read from, so on an upgrade they run the new release first), and
never more than half of the instances of a worker type at once, so every
type with several instances keeps serving.

Some settings must be the same in every running process: who writes each
stream and who runs each single duty. Two processes reading different values
would both write a stream Synapse allows one writer for, shard events by room
differently, or send the same pushes and federation traffic twice. When
``assignments`` changes, every worker stops before main starts with the new
settings, instead of a rolling restart.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.polylith.synapse.plugins.plugin_utils.shared_inputs import (
    kind,
    show,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_catalogue import (
    WORKER_TYPES,
)

# Workers restarted at once when synapse_worker_restart_batch_size is unset.
DEFAULT_BATCH_SIZE = 4

# homeserver settings naming the processes that write a stream or run a duty.
ASSIGNMENT_SETTINGS = tuple(
    sorted(
        {"stream_writers"}
        | {setting for worker_type in WORKER_TYPES.values() for setting in worker_type.instance_lists}
        | {setting for worker_type in WORKER_TYPES.values() for setting in worker_type.duties}
        | {setting for worker_type in WORKER_TYPES.values() for setting in worker_type.shared_settings}
    )
)


def _fail(message: str) -> None:
    raise AnsibleFilterError(f"synapse_restart_batches: {message}")


def _workers(deployment):
    if not isinstance(deployment, dict) or not isinstance(deployment.get("workers"), list):
        _fail(
            f"expected the derived deployment (polylith_synapse_deployment), got a {kind(deployment)}."
        )
    return deployment["workers"]


def _writes_a_stream(worker) -> bool:
    return any(WORKER_TYPES[name].streams for name in worker["types"] if name in WORKER_TYPES)


def _spread(workers):
    """Instances of one worker entry spread out: the first of each entry, then the second, ..."""
    groups = {}
    for worker in workers:
        groups.setdefault(worker.get("group", worker["name"]), []).append(worker)
    spread = []
    for index in range(max((len(members) for members in groups.values()), default=0)):
        spread.extend(members[index] for members in groups.values() if index < len(members))
    return spread


def restart_batches(deployment, due=None, size=DEFAULT_BATCH_SIZE):
    """The names of the workers to restart, in batches to restart one after the other.

    ``due`` names the workers to restart (None: every worker); names the
    deployment does not hold are ignored. Each batch holds at most ``size``
    workers, and of each worker type at most half of its instances in the
    whole deployment (at least one). Stream writers come first, in batches
    of their own.
    """
    workers = _workers(deployment)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        _fail(
            f"synapse_worker_restart_batch_size is {show(size)}; set it to a whole number of 1 or "
            f"more (default {DEFAULT_BATCH_SIZE})."
        )
    if due is not None and not isinstance(due, (list, tuple)):
        _fail(f"due is a {kind(due)}, {show(due)}; expected a list of worker names.")
    wanted = None if due is None else {str(name) for name in due}
    instances = {}
    for worker in workers:
        for name in worker["types"]:
            instances[name] = instances.get(name, 0) + 1
    most = {name: max(1, count // 2) for name, count in instances.items()}

    batches = []
    for phase in (True, False):
        pending = _spread(
            [w for w in workers if _writes_a_stream(w) is phase and (wanted is None or w["name"] in wanted)]
        )
        while pending:
            batch, taken = [], {}
            for worker in pending:
                if len(batch) == size:
                    break
                if any(taken.get(name, 0) + 1 > most[name] for name in worker["types"]):
                    continue
                batch.append(worker)
                for name in worker["types"]:
                    taken[name] = taken.get(name, 0) + 1
            batches.append([worker["name"] for worker in batch])
            pending = [worker for worker in pending if worker not in batch]
    return batches


def assignments(deployment):
    """Who writes each stream and runs each duty: the settings every process must agree on."""
    if not isinstance(deployment, dict) or not isinstance(deployment.get("shared_config"), dict):
        raise AnsibleFilterError(
            "synapse_assignments: expected the derived deployment (polylith_synapse_deployment), "
            f"got a {kind(deployment)}."
        )
    shared = deployment["shared_config"]
    return {setting: shared.get(setting) for setting in ASSIGNMENT_SETTINGS}
