"""Unit tests of the topology filter: catalogue, derivation, routing and validation."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.polylith.synapse.plugins.filter.synapse_topology import (
    FilterModule,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_catalogue import (
    BALANCE_KEYS,
    BALANCE_METHODS,
    MAIN_WRITER,
    EndpointGroup,
    MULTI_WRITER_STREAMS,
    SINGLE_WRITER_STREAMS,
    STREAMS_MAIN_ALSO_WRITES,
    WORKER_TYPES,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_presets import (
    PRESETS,
)


def writers(*names, stream):
    """A stream's writers: the workers, then main where it writes the stream too."""
    return [*names, *([MAIN_WRITER] if stream in STREAMS_MAIN_ALSO_WRITES else [])]


ONE_HOST = {"hosts": {"app1": "10.0.0.1"}, "main_host": "app1"}
THREE_HOSTS = {
    "hosts": {"app1": "10.0.0.1", "app2": "10.0.0.2", "app3": "10.0.0.3"},
    "main_host": "app1",
}

# One worker of every type; the single-writer streams each on their own worker.
EVERY_TYPE = [{"name": name, "types": [name]} for name in WORKER_TYPES]
# The pools take a share of other types' requests (room-ID requests, initial
# syncs) while they run; without them every type serves all of its endpoints.
POOLS = ("room_worker", "initial_synchrotron")
WITHOUT_POOLS = [w for w in EVERY_TYPE if w["name"] not in POOLS]


def topology(workers, **options):
    return build_topology(workers, **{**ONE_HOST, **options})


def route(topo, target, method="GET"):
    """Where nginx sends a request: (worker type of the upstream, upstream).

    The location is chosen for the decoded path; a limited route sends the
    requests its map names (by method, or by a missing query argument) to
    its upstream and every other request to the map's default.
    """
    nginx = topo["nginx"]
    path, _, query = target.partition("?")
    path = unquote(path)
    for pattern in nginx["denied_patterns"]:
        if re.search(pattern, path):
            return ("denied", None)
    for item in nginx["routes"]:
        if re.search(item["pattern"], path):
            upstream = item["upstream"]
            if item["upstream_variable"]:
                (chooser,) = [m for m in nginx["maps"] if m["variable"] == item["upstream_variable"]]
                if chooser["source"] == "$request_method":
                    value = method
                else:
                    name = chooser["source"].removeprefix("$arg_")
                    value = next((v for k, _, v in (a.partition("=") for a in query.split("&")) if k == name), "")
                upstream = next((c["value"] for c in chooser["cases"] if c["pattern"] == value), chooser["default"])
            return (_type_of(nginx, upstream), upstream)
    return ("main", nginx["default_upstream"])


def _type_of(nginx, upstream):
    if upstream == nginx["default_upstream"]:
        return "main"
    (worker_type,) = {r["worker_type"] for r in nginx["routes"] if r["upstream"] == upstream}
    return worker_type


def worker(topo, name):
    return next(w for w in topo["workers"] if w["name"] == name)


def fails(workers, match, **options):
    with pytest.raises(AnsibleFilterError, match=match):
        topology(workers, **options)


# --- the catalogue ------------------------------------------------------------


def test_catalogue_has_every_docker_worker_type():
    # The types of Synapse's docker/configure_workers_and_start.py, and two
    # pools the operators' layouts run: ESS's initial-synchrotron and
    # seed002's room workers.
    assert set(WORKER_TYPES) == {
        "pusher", "user_dir", "media_repository", "appservice", "federation_sender",
        "synchrotron", "client_reader", "federation_reader", "federation_inbound",
        "event_persister", "background_worker", "event_creator", "account_data",
        "presence", "receipts", "to_device", "device_lists", "typing", "push_rules",
        "thread_subscriptions",
        *POOLS,
    }  # fmt: skip


def test_a_group_is_limited_one_way_only():
    with pytest.raises(ValueError, match="not both"):
        EndpointGroup("x", ("^/_x$",), methods=("GET",), without_arg="since")


def test_limited_groups_share_no_pattern():
    # A limited route's other requests go to the next type listing its
    # pattern without a limit; two limits on one pattern would hide each other.
    limited = [p for t in WORKER_TYPES.values() for g in t.endpoints if g.methods or g.without_arg for p in g.patterns]
    assert len(limited) == len(set(limited))


def test_catalogue_streams_are_the_ones_synapse_knows():
    streams = {s for t in WORKER_TYPES.values() for s in t.streams}
    assert streams == SINGLE_WRITER_STREAMS | MULTI_WRITER_STREAMS
    for worker_type in WORKER_TYPES.values():
        for stream in worker_type.streams:
            assert worker_type.shardable == (stream in MULTI_WRITER_STREAMS), worker_type.name


@pytest.mark.parametrize("name", sorted(WORKER_TYPES))
def test_catalogue_entry_is_consistent(name):
    worker_type = WORKER_TYPES[name]
    assert worker_type.worker_app == "synapse.app.generic_worker"
    assert worker_type.summary
    assert set(worker_type.resources) <= {"client", "federation", "media"}
    # A type with endpoints needs a listener resource to serve them, and back.
    assert bool(worker_type.endpoints) == bool(worker_type.resources)
    for group in worker_type.endpoints:
        assert group.balance in BALANCE_METHODS
        for pattern in group.patterns:
            assert pattern.startswith("^/_"), pattern
            re.compile(pattern)


@pytest.mark.parametrize("name", sorted(WORKER_TYPES))
def test_every_type_alone_derives_its_settings(name):
    worker_type = WORKER_TYPES[name]
    topo = topology([{"name": "w", "types": [name]}])
    (only,) = topo["workers"]
    shared = topo["shared_config"]
    assert only["worker_app"] == worker_type.worker_app
    assert only["config"]["worker_name"] == "w"
    for key, value in worker_type.worker_settings.items():
        assert only["config"][key] == value
    for stream in worker_type.streams:
        assert shared["stream_writers"][stream] == writers("w", stream=stream)
    if worker_type.streams:
        assert shared["instance_map"]["w"] == {"path": "/run/matrix-synapse/w-replication.sock"}
    else:
        assert "w" not in shared["instance_map"]
        assert "stream_writers" not in shared
    for setting in worker_type.instance_lists:
        assert shared[setting] == ["w"]
    for setting in worker_type.duties:
        assert shared[setting] == "w"
    for key, value in worker_type.shared_settings.items():
        assert shared[key] == value
    # Every endpoint of the type reaches it, through its own upstream.
    for group in worker_type.endpoints:
        for pattern in group.patterns:
            matching = [r for r in topo["nginx"]["routes"] if r["pattern"] == pattern]
            assert [r["worker_type"] for r in matching] == [name]
            upstream = topo["nginx"]["upstreams"][matching[0]["upstream"]]
            assert upstream["servers"] == ["unix:/run/matrix-synapse/w.sock"]
            assert upstream["balance"] == group.balance
    if not worker_type.endpoints:
        assert topo["nginx"]["routes"] == []


def test_monolith_has_no_workers_and_no_shared_settings():
    topo = topology(None)
    assert topo["workers"] == []
    assert topo["shared_config"] == {}
    assert topo["nginx"]["routes"] == []
    assert topo["process_count"] == 1
    assert topo["main"]["config"]["listeners"] == [
        {
            "type": "http",
            "path": "/run/matrix-synapse/main.sock",
            "x_forwarded": True,
            "resources": [{"names": ["client", "federation"], "compress": False}],
        }
    ]


def test_main_gets_a_replication_listener_once_there_are_workers():
    topo = topology([{"name": "sync", "types": ["synchrotron"]}])
    purposes = [listener["purpose"] for listener in topo["main"]["listeners"]]
    assert purposes == ["http", "replication"]
    assert topo["shared_config"]["instance_map"] == {
        "main": {"path": "/run/matrix-synapse/main-replication.sock"}
    }


# --- routing: real request paths land on the right worker -----------------------

ROUTED_PATHS = [
    # Sync
    ("/_matrix/client/v3/sync", "synchrotron"),
    ("/_matrix/client/r0/sync", "synchrotron"),
    ("/_matrix/client/v3/events", "synchrotron"),
    ("/_matrix/client/v3/initialSync", "synchrotron"),
    ("/_matrix/client/v3/rooms/!r:example.test/initialSync", "synchrotron"),
    # Stream writers
    ("/_matrix/client/v3/rooms/!r:example.test/typing/@u:example.test", "typing"),
    ("/_matrix/client/v3/sendToDevice/m.room.encrypted/txn1", "to_device"),
    ("/_matrix/client/v3/user/@u:example.test/account_data/m.direct", "account_data"),
    ("/_matrix/client/v3/user/@u:example.test/rooms/!r:example.test/account_data/x", "account_data"),
    ("/_matrix/client/v3/user/@u:example.test/rooms/!r:example.test/tags/u.work", "account_data"),
    ("/_matrix/client/v3/rooms/!r:example.test/receipt/m.read/$e", "receipts"),
    ("/_matrix/client/v3/rooms/!r:example.test/read_markers", "receipts"),
    ("/_matrix/client/v3/presence/@u:example.test/status", "presence"),
    ("/_matrix/client/v3/pushrules/global/override/rule1", "push_rules"),
    ("/_matrix/client/v3/pushrules/", "push_rules"),
    ("/_matrix/client/v3/keys/upload", "device_lists"),
    ("/_matrix/client/v3/devices", "device_lists"),
    ("/_matrix/client/v3/devices/ABCDEF", "device_lists"),
    ("/_matrix/client/v3/delete_devices", "device_lists"),
    ("/_matrix/client/v3/keys/device_signing/upload", "device_lists"),
    ("/_matrix/client/v3/keys/signatures/upload", "device_lists"),
    ("/_matrix/client/unstable/io.element.msc4306/rooms/!r/thread/$t/subscription", "thread_subscriptions"),
    ("/_matrix/client/unstable/io.element.msc4308/thread_subscriptions", "thread_subscriptions"),
    # Media
    ("/_matrix/media/v3/upload", "media_repository"),
    ("/_matrix/media/v3/download/example.test/abc", "media_repository"),
    ("/_matrix/media/v3/thumbnail/example.test/abc", "media_repository"),
    ("/_matrix/client/v1/media/download/example.test/abc", "media_repository"),
    ("/_matrix/client/v1/media/thumbnail/example.test/abc", "media_repository"),
    ("/_matrix/client/v1/media/config", "media_repository"),
    ("/_matrix/federation/v1/media/download/abc", "media_repository"),
    ("/_synapse/admin/v1/purge_media_cache", "media_repository"),
    ("/_synapse/admin/v1/room/!r:example.test/media", "media_repository"),
    ("/_synapse/admin/v1/room/!r:example.test/media/quarantine", "media_repository"),
    ("/_synapse/admin/v1/user/@u:example.test/media/quarantine", "media_repository"),
    ("/_synapse/admin/v1/media/quarantine/example.test/abc", "media_repository"),
    ("/_synapse/admin/v1/quarantine_media/!r:example.test", "media_repository"),
    ("/_synapse/admin/v1/users/@u:example.test/media", "media_repository"),
    # Federation
    ("/_matrix/federation/v1/send/1234", "federation_inbound"),
    ("/_matrix/federation/v1/version", "federation_reader"),
    ("/_matrix/federation/v1/event/$e", "federation_reader"),
    ("/_matrix/federation/v1/state_ids/!r:example.test", "federation_reader"),
    ("/_matrix/federation/v1/backfill/!r:example.test", "federation_reader"),
    ("/_matrix/federation/v1/make_join/!r:example.test/@u:remote.test", "federation_reader"),
    ("/_matrix/federation/v2/send_join/!r:example.test/$e", "federation_reader"),
    ("/_matrix/federation/v2/invite/!r:example.test/$e", "federation_reader"),
    ("/_matrix/federation/v1/query/profile", "federation_reader"),
    ("/_matrix/federation/v1/user/devices/@u:example.test", "federation_reader"),
    ("/_matrix/federation/v1/hierarchy/!r:example.test", "federation_reader"),
    ("/_matrix/key/v2/query", "federation_reader"),
    # User directory
    ("/_matrix/client/v3/user_directory/search", "user_dir"),
    # Event sending
    ("/_matrix/client/v3/rooms/!r:example.test/send/m.room.message/txn1", "event_creator"),
    ("/_matrix/client/v3/rooms/!r:example.test/state/m.room.name/", "event_creator"),
    ("/_matrix/client/v3/rooms/!r:example.test/redact/$e/txn2", "event_creator"),
    ("/_matrix/client/v3/rooms/!r:example.test/invite", "event_creator"),
    ("/_matrix/client/v3/rooms/!r:example.test/join", "event_creator"),
    ("/_matrix/client/v3/rooms/!r:example.test/leave", "event_creator"),
    ("/_matrix/client/v3/join/#room:example.test", "event_creator"),
    ("/_matrix/client/v3/knock/!r:example.test", "event_creator"),
    ("/_matrix/client/v3/profile/@u:example.test/displayname", "event_creator"),
    # Client reads
    ("/_matrix/client/v3/createRoom", "client_reader"),
    ("/_matrix/client/v3/publicRooms", "client_reader"),
    ("/_matrix/client/v3/rooms/!r:example.test/members", "client_reader"),
    ("/_matrix/client/v3/rooms/!r:example.test/state", "client_reader"),
    ("/_matrix/client/v3/rooms/!r:example.test/messages", "client_reader"),
    ("/_matrix/client/v3/rooms/!r:example.test/context/$e", "client_reader"),
    ("/_matrix/client/v3/rooms/!r:example.test/event/$e", "client_reader"),
    ("/_matrix/client/v1/rooms/!r:example.test/hierarchy", "client_reader"),
    ("/_matrix/client/v1/rooms/!r:example.test/relations/$e", "client_reader"),
    ("/_matrix/client/versions", "client_reader"),
    ("/_matrix/client/v3/login", "client_reader"),
    ("/_matrix/client/v3/register", "client_reader"),
    ("/_matrix/client/v3/register/available", "client_reader"),
    ("/_matrix/client/v3/account/whoami", "client_reader"),
    ("/_matrix/client/v3/joined_rooms", "client_reader"),
    ("/_matrix/client/v3/capabilities", "client_reader"),
    ("/_matrix/client/v3/keys/query", "client_reader"),
    ("/_matrix/client/v3/keys/claim", "client_reader"),
    ("/_matrix/client/v3/room_keys/version", "client_reader"),
    ("/_matrix/client/v3/user/@u:example.test/filter", "client_reader"),
    ("/_matrix/client/v3/user/@u:example.test/filter/1", "client_reader"),
    ("/_matrix/client/v3/directory/room/#room:example.test", "client_reader"),
    ("/_matrix/client/v3/search", "client_reader"),
    ("/_synapse/admin/v1/rooms/!r:example.test", "client_reader"),
    ("/_matrix/client/unstable/org.matrix.msc4140/delayed_events", "client_reader"),
    # The main process: admin (main writes users: test_reads_stay_with_main_while_it_writes_the_stream),
    # logout, unknown paths
    ("/_synapse/admin/v2/users/@u:example.test", "main"),
    ("/_synapse/admin/v1/register", "main"),
    ("/_matrix/client/v3/logout", "main"),
    ("/_matrix/client/v3/account/password", "main"),
    ("/_matrix/client/v3/rooms/!r:example.test/upgrade", "main"),
    ("/_matrix/client/v3/no_such_endpoint", "main"),
    ("/", "main"),
    # Replication never leaves the host through the proxy, nor do metrics
    ("/_synapse/replication/send_event/abc", "denied"),
    ("/_synapse/metrics", "denied"),
]


@pytest.mark.parametrize(("path", "expected"), ROUTED_PATHS)
def test_real_paths_reach_the_right_worker_type(path, expected):
    worker_type, upstream = route(topology(WITHOUT_POOLS), path)
    assert worker_type == expected
    if expected not in ("main", "denied"):
        servers = topology(WITHOUT_POOLS)["nginx"]["upstreams"][upstream]["servers"]
        assert servers == [f"unix:/run/matrix-synapse/{expected}.sock"]


ROOM = "!r:example.test"
# Room version 12 IDs carry no server name (MSC4291).
ROOM_V12 = "!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM"

# With every type running, the pools take their share.
POOL_PATHS = [
    # Initial syncs: no `since` (or an empty one), and /initialSync.
    ("GET", "/_matrix/client/v3/sync", "initial_synchrotron"),
    ("GET", "/_matrix/client/r0/sync?filter=0&timeout=0", "initial_synchrotron"),
    ("GET", "/_matrix/client/v3/sync?since=", "initial_synchrotron"),
    ("GET", "/_matrix/client/v3/initialSync", "initial_synchrotron"),
    ("GET", "/_matrix/client/v3/rooms/#a:example.test/initialSync", "initial_synchrotron"),
    # The other syncs stay with the synchrotrons.
    ("GET", "/_matrix/client/v3/sync?since=s72594_4483_1934&timeout=30000", "synchrotron"),
    ("GET", "/_matrix/client/v3/sync?timeout=30000&since=s1&full_state=true", "synchrotron"),
    ("GET", "/_matrix/client/v3/events", "synchrotron"),
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", "synchrotron"),
    ("POST", "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?pos=3", "synchrotron"),
    # Every request for a room by its ID that a request type serves.
    ("GET", f"/_matrix/client/v3/rooms/{ROOM}/initialSync", "room_worker"),
    ("GET", f"/_matrix/client/v3/rooms/{ROOM}/messages", "room_worker"),
    ("GET", f"/_matrix/client/v3/rooms/{ROOM}/members", "room_worker"),
    ("GET", f"/_matrix/client/v3/rooms/{ROOM}/joined_members", "room_worker"),
    ("GET", f"/_matrix/client/v3/rooms/{ROOM}/state", "room_worker"),
    ("GET", f"/_matrix/client/v3/rooms/{ROOM}/state/m.room.name", "room_worker"),
    ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/state/m.room.member/@u:example.test", "room_worker"),
    ("GET", f"/_matrix/client/v3/rooms/{ROOM}/context/$e", "room_worker"),
    ("GET", f"/_matrix/client/v3/rooms/{ROOM}/event/$e", "room_worker"),
    ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/t1", "room_worker"),
    ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/redact/$e/t2", "room_worker"),
    ("POST", f"/_matrix/client/v3/rooms/{ROOM}/invite", "room_worker"),
    ("POST", f"/_matrix/client/v3/join/{ROOM}", "room_worker"),
    ("POST", f"/_matrix/client/v3/knock/{ROOM}", "room_worker"),
    ("GET", f"/_matrix/client/v1/rooms/{ROOM}/hierarchy", "room_worker"),
    ("GET", f"/_matrix/client/v1/rooms/{ROOM}/threads", "room_worker"),
    ("GET", f"/_matrix/client/v1/rooms/{ROOM}/timestamp_to_event", "room_worker"),
    ("GET", f"/_matrix/client/v1/rooms/{ROOM}/relations/$e/m.thread", "room_worker"),
    ("GET", f"/_matrix/client/v3/rooms/{ROOM}/aliases", "room_worker"),
    ("GET", f"/_matrix/client/v1/room_summary/{ROOM}", "room_worker"),
    ("GET", f"/_matrix/client/v3/room_keys/keys/{ROOM}/session1", "room_worker"),
    ("GET", f"/_matrix/client/v3/rooms/{ROOM_V12}/messages", "room_worker"),
    ("GET", "/_matrix/client/v3/rooms/%21r%3Aexample.test/messages", "room_worker"),
    ("GET", f"/_matrix/federation/v1/state_ids/{ROOM}", "room_worker"),
    ("GET", f"/_matrix/federation/v1/state/{ROOM}/", "room_worker"),
    ("GET", f"/_matrix/federation/v1/backfill/{ROOM}", "room_worker"),
    ("POST", f"/_matrix/federation/v1/get_missing_events/{ROOM}", "room_worker"),
    ("GET", f"/_matrix/federation/v1/make_join/{ROOM}/@u:remote.test", "room_worker"),
    ("PUT", f"/_matrix/federation/v2/send_join/{ROOM}/$e", "room_worker"),
    ("PUT", f"/_matrix/federation/v2/invite/{ROOM}/$e", "room_worker"),
    ("GET", f"/_matrix/federation/v1/event_auth/{ROOM}/$e", "room_worker"),
    ("GET", f"/_matrix/federation/v1/hierarchy/{ROOM}", "room_worker"),
    # Named by alias, or no room: their own type.
    ("POST", "/_matrix/client/v3/join/#a:example.test", "event_creator"),
    ("GET", "/_matrix/client/v3/directory/room/#a:example.test", "client_reader"),
    ("GET", "/_matrix/client/v3/room_keys/version", "client_reader"),
    ("POST", "/_matrix/client/v3/createRoom", "client_reader"),
    ("GET", "/_matrix/federation/v1/event/$e", "federation_reader"),
    ("PUT", "/_matrix/federation/v1/send/1234", "federation_inbound"),
    # A stream's endpoints stay with its writer, main's with main, and the admin API.
    ("PUT", f"/_matrix/client/v3/rooms/{ROOM}/typing/@u:example.test", "typing"),
    ("POST", f"/_matrix/client/v3/rooms/{ROOM}/receipt/m.read/$e", "receipts"),
    ("POST", f"/_matrix/client/v3/rooms/{ROOM}/read_markers", "receipts"),
    ("GET", f"/_matrix/client/v3/user/@u:example.test/rooms/{ROOM}/tags", "account_data"),
    ("PUT", f"/_matrix/client/v3/user/@u:example.test/rooms/{ROOM}/account_data/x", "account_data"),
    ("GET", f"/_matrix/client/unstable/io.element.msc4306/rooms/{ROOM}/thread/$t/subscription", "thread_subscriptions"),
    ("POST", f"/_matrix/client/v3/rooms/{ROOM}/forget", "main"),
    ("POST", f"/_matrix/client/v3/rooms/{ROOM}/upgrade", "main"),
    ("POST", f"/_matrix/client/v3/rooms/{ROOM}/report/$e", "main"),
    ("GET", f"/_matrix/client/v3/directory/list/room/{ROOM}", "main"),
    ("GET", f"/_synapse/admin/v1/rooms/{ROOM}", "client_reader"),
    ("GET", f"/_synapse/admin/v1/room/{ROOM}/media", "media_repository"),
]


@pytest.mark.parametrize(("method", "path", "expected"), POOL_PATHS)
def test_the_pools_take_their_share(method, path, expected):
    assert route(topology(EVERY_TYPE), path, method)[0] == expected


@pytest.mark.parametrize(("method", "path", "expected"), POOL_PATHS)
def test_without_the_pools_their_requests_go_where_they_went(method, path, expected):
    if expected not in POOLS:
        assert route(topology(WITHOUT_POOLS), path, method)[0] == expected
    else:
        assert route(topology(WITHOUT_POOLS), path, method)[0] not in ("main", "denied", *POOLS)


def test_initial_syncs_without_synchrotrons_leave_the_others_to_main():
    topo = topology([{"name": "initial", "types": ["initial_synchrotron"], "count": 2}])
    assert route(topo, "/_matrix/client/v3/sync") == ("initial_synchrotron", "synapse_initial_synchrotron")
    assert route(topo, "/_matrix/client/v3/initialSync") == ("initial_synchrotron", "synapse_initial_synchrotron")
    assert route(topo, "/_matrix/client/v3/sync?since=s1")[0] == "main"
    assert route(topo, "/_matrix/client/v3/events")[0] == "main"
    (sync,) = [r for r in topo["nginx"]["routes"] if r["pattern"] == "^/_matrix/client/(r0|v3)/sync$"]
    assert sync["fallback_upstream"] == "synapse_main" and sync["without_arg"] == "since"


def test_the_initial_sync_route_asks_since():
    topo = topology(
        [
            {"name": "initial", "types": ["initial_synchrotron"], "count": 2},
            {"name": "sync", "types": ["synchrotron"], "count": 3},
        ]
    )
    nginx = topo["nginx"]
    sync = [r for r in nginx["routes"] if r["pattern"] == "^/_matrix/client/(r0|v3)/sync$"]
    # One location: the synchrotrons' own /sync route is the map's default.
    assert sync == [
        {
            "pattern": "^/_matrix/client/(r0|v3)/sync$",
            "upstream": "synapse_initial_synchrotron",
            "worker_type": "initial_synchrotron",
            "methods": [],
            "without_arg": "since",
            "upstream_variable": "$synapse_initial_synchrotron_without_since",
            "fallback_upstream": "synapse_synchrotron",
            "condition": "no since argument",
        }
    ]
    (chooser,) = [m for m in nginx["maps"] if m["variable"] == "$synapse_initial_synchrotron_without_since"]
    assert chooser == {
        "source": "$arg_since",
        "variable": "$synapse_initial_synchrotron_without_since",
        "default": "synapse_synchrotron",
        "cases": [{"pattern": "", "value": "synapse_initial_synchrotron"}],
    }
    # Both pools are sticky by user, on servers of their own.
    upstreams = nginx["upstreams"]
    for name, servers in (("synapse_initial_synchrotron", ["initial1", "initial2"]),
                          ("synapse_synchrotron", ["sync1", "sync2", "sync3"])):
        assert upstreams[name]["hash_key"] == BALANCE_KEYS["user"]["variable"]
        assert upstreams[name]["servers"] == [f"unix:/run/matrix-synapse/{s}.sock" for s in servers]


def test_room_workers_hash_by_room():
    topo = topology([{"name": "rooms", "types": ["room_worker"], "count": 4}])
    upstream = topo["nginx"]["upstreams"]["synapse_room_worker"]
    assert upstream["balance"] == "room" and upstream["hash_key"] == BALANCE_KEYS["room"]["variable"]
    assert len(upstream["servers"]) == 4
    assert [m["source"] for m in topo["nginx"]["maps"] if m["variable"] == "$synapse_balance_room"] == ["$uri"]
    # No room ID: main serves it.
    assert route(topo, "/_matrix/client/v3/createRoom", "POST")[0] == "main"
    assert route(topo, "/_matrix/client/v3/join/#a:example.test", "POST")[0] == "main"
    assert route(topo, f"/_matrix/client/v3/rooms/{ROOM}/messages")[0] == "room_worker"


@pytest.mark.parametrize(("path", "expected"), ROUTED_PATHS)
def test_monolith_sends_everything_not_denied_to_main(path, expected):
    assert route(topology(None), path)[0] == ("denied" if expected == "denied" else "main")


def test_stream_endpoints_fall_back_to_main_without_their_writer():
    topo = topology([{"name": "reader", "types": ["client_reader"]}])
    assert route(topo, "/_matrix/client/v3/rooms/!r:x/typing/@u:x", "PUT")[0] == "main"
    assert route(topo, "/_matrix/client/v3/sendToDevice/m.x/1", "PUT")[0] == "main"
    assert route(topo, "/_matrix/client/v3/pushrules/global/override/r1", "PUT")[0] == "main"
    # Endpoints any generic worker serves fall back to the general reader.
    assert route(topo, "/_matrix/client/v3/keys/upload")[0] == "client_reader"
    assert route(topo, "/_matrix/client/v3/user_directory/search")[0] == "client_reader"


# Requests docs/workers.md lets any generic worker serve for GET ("can be
# handled for GET requests"), with the writes beside them. A worker may not have
# replicated a write yet when the client reads it back (Synapse 1.163 answered a
# push rule read with 404, a presence read with 500), so reads stay with the
# writer: main while no worker writes the stream.
READ_AFTER_WRITE = [
    ("GET", "/_matrix/client/v3/pushrules/"),
    ("GET", "/_matrix/client/r0/pushrules/global/override/.m.rule.master/enabled"),
    ("PUT", "/_matrix/client/v3/pushrules/global/override/r1"),
    ("DELETE", "/_matrix/client/v3/pushrules/global/override/r1"),
    ("GET", "/_matrix/client/v3/user/@u:x/account_data/m.direct"),
    ("GET", "/_matrix/client/v3/user/@u:x/rooms/!r:x/account_data/m.fully_read"),
    ("GET", "/_matrix/client/v3/user/@u:x/rooms/!r:x/tags"),
    ("PUT", "/_matrix/client/v3/user/@u:x/account_data/m.direct"),
    ("PUT", "/_matrix/client/v3/user/@u:x/rooms/!r:x/tags/m.favourite"),
    ("GET", "/_matrix/client/v3/presence/@u:x/status"),
    ("PUT", "/_matrix/client/v3/presence/@u:x/status"),
]
ADMIN_USER = [("GET", "/_synapse/admin/v2/users/@u:x"), ("PUT", "/_synapse/admin/v2/users/@u:x")]


def test_reads_stay_with_main_while_it_writes_the_stream():
    topo = topology([{"name": "reader", "types": ["client_reader"]}])
    for method, path in [*READ_AFTER_WRITE, *ADMIN_USER]:
        assert route(topo, path, method)[0] == "main", (method, path)
        if method == "GET":
            assert route(topo, path, "HEAD")[0] == "main", path


def test_a_writer_takes_its_reads_and_writes():
    writers = ["push_rules", "account_data", "presence"]
    topo = topology([{"name": "reader", "types": ["client_reader"]}, *({"name": w, "types": [w]} for w in writers)])
    for method, path in READ_AFTER_WRITE:
        assert route(topo, path, method)[0] in writers, (method, path)
    reader_patterns = [r["pattern"] for r in topo["nginx"]["routes"] if r["worker_type"] == "client_reader"]
    assert not any("pushrules" in p or "account_data" in p or "presence" in p for p in reader_patterns)


# A transaction ID, event type or state key the client chooses, spelled like
# another endpoint's segment, stays with its own endpoint.
CHOSEN_SEGMENTS = [
    ("PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/typing", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/send/typing/t1", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/tags", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/account_data", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/receipt", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/send/receipt/t1", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/send/read_markers/t1", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/state/m.x/typing", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/state/m.x/messages", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/state/m.x/members", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/state/m.x/state", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/send/context/t1", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/send/event/t1", "event_creator"),
    ("PUT", "/_matrix/client/v3/rooms/!r:x/send/m.room.message/aliases", "event_creator"),
    ("PUT", "/_matrix/client/v3/user/@u:x/account_data/filter", "account_data"),
    ("GET", "/_matrix/client/unstable/rooms/!r:x/relations/$e/send", "client_reader"),
    ("GET", "/_matrix/client/unstable/rooms/!r:x/relations/$e/m.annotation/join", "client_reader"),
    ("GET", "/_matrix/client/v1/rooms/!r:x/relations/$e/m.thread/m.room.message", "client_reader"),
]


@pytest.mark.parametrize(("method", "path", "expected"), CHOSEN_SEGMENTS)
def test_a_client_chosen_segment_does_not_steer_a_request(method, path, expected):
    assert route(topology(WITHOUT_POOLS), path, method)[0] == expected
    # Without the type that serves it, the request goes to main, not to a
    # type whose endpoint it resembles.
    others = [w for w in WITHOUT_POOLS if w["name"] != expected]
    assert route(topology(others), path, method)[0] == "main"
    # Room workers take the room's request whatever its chosen segment says.
    if expected in ("event_creator", "client_reader"):
        assert route(topology(EVERY_TYPE), path, method)[0] == "room_worker"
        assert route(topology([{"name": "rooms", "types": ["room_worker"]}]), path, method)[0] == "room_worker"


# An encoded "/" inside an ID is decoded before nginx matches: the request
# matches no worker route of the endpoint and main serves it.
@pytest.mark.parametrize(
    "path",
    [
        "/_matrix/client/v3/rooms/!r:x/typing/@u/typing/x",
        "/_matrix/client/v3/rooms/!r/x:x/receipt/m.read/$e",
        "/_matrix/client/v3/user/@u:x/account_data/a/b",
    ],
)
def test_a_decoded_slash_falls_to_main(path):
    assert route(topology(EVERY_TYPE), path, "PUT")[0] == "main"


def test_routes_list_each_pattern_once_in_priority_order():
    routes = topology(EVERY_TYPE)["nginx"]["routes"]
    patterns = [r["pattern"] for r in routes]
    assert len(patterns) == len(set(patterns))
    # A pattern both device_lists and client_reader serve goes to the writer.
    keys_upload = next(r for r in routes if r["pattern"].endswith("/keys/upload"))
    assert keys_upload["worker_type"] == "device_lists"


def test_balancing_follows_the_catalogue():
    topo = topology(
        [
            {"name": "sync", "types": ["synchrotron"], "count": 2},
            {"name": "inbound", "types": ["federation_inbound"], "count": 2},
            {"name": "creator", "types": ["event_creator"], "count": 2},
            {"name": "reader", "types": ["client_reader"], "count": 2},
        ]
    )
    upstreams = topo["nginx"]["upstreams"]
    assert upstreams["synapse_synchrotron"]["balance"] == "user"
    assert upstreams["synapse_synchrotron"]["hash_key"] == BALANCE_KEYS["user"]["variable"]
    assert upstreams["synapse_federation_inbound"]["balance"] == "origin"
    assert upstreams["synapse_event_creator"]["balance"] == "room"
    assert upstreams["synapse_client_reader"]["balance"] == "least_conn"
    assert upstreams["synapse_client_reader"]["hash_key"] is None
    assert upstreams["synapse_client_reader_by_room"]["balance"] == "room"
    assert route(topo, "/_matrix/client/v3/rooms/!r:x/messages")[1] == "synapse_client_reader_by_room"
    # Every hash key used has its nginx map, and only those.
    variables = {m["variable"] for m in topo["nginx"]["maps"]}
    for upstream in upstreams.values():
        if upstream["hash_key"]:
            assert upstream["hash_key"] in variables
    assert {m["variable"] for m in topology(None)["nginx"]["maps"]} == set()


def test_balance_key_maps_extract_the_key():
    def apply(method, **request):
        value = None
        for item in BALANCE_KEYS[method]["maps"]:
            source = request.get(item["source"], "")
            value = item["default"]
            for pattern, result in item["cases"]:
                if pattern == "" and source == "":
                    value = result
                    break
                # nginx (PCRE) writes named groups (?<x>...), Python (?P<x>...).
                match = pattern and re.search(pattern.removeprefix("~").replace("(?<", "(?P<"), source)
                if match:
                    value = result.replace("$" + next(iter(match.groupdict())), match.group(1))
                    break
            request[item["variable"]] = request.get(value, value)
        return request[BALANCE_KEYS[method]["variable"]]

    assert apply("user", **{"$http_authorization": "Bearer syt_YWxpY2U_abc_def"}) == "YWxpY2U"
    assert apply("user", **{"$arg_access_token": "syt_Ym9i_x_y"}) == "Ym9i"
    assert (
        apply("origin", **{"$http_authorization": 'X-Matrix origin="remote.test:8448",key="ed25519:a",sig="s"'})
        == "remote.test:8448"
    )
    assert apply("origin", **{"$http_authorization": "X-Matrix origin=remote.test,key=k"}) == "remote.test"
    assert apply("room", **{"$uri": "/_matrix/client/v3/rooms/!abc:x/messages"}) == "!abc:x"
    assert apply("room", **{"$uri": "/_matrix/client/api/v1/rooms/!abc:x/send/m/1"}) == "!abc:x"
    assert apply("room", **{"$uri": "/_matrix/client/v3/join/#a:x"}) == "#a:x"
    # The room ID wherever the path names it (nginx's $uri is decoded).
    assert apply("room", **{"$uri": "/_matrix/federation/v1/state_ids/!abc:x"}) == "!abc:x"
    assert apply("room", **{"$uri": "/_matrix/federation/v2/send_join/!abc:x/$e"}) == "!abc:x"
    assert apply("room", **{"$uri": "/_matrix/client/v3/room_keys/keys/!abc:x/s1"}) == "!abc:x"
    assert apply("room", **{"$uri": "/_matrix/client/unstable/org.matrix.msc2432/rooms/!abc:x/aliases"}) == "!abc:x"
    assert apply("room", **{"$uri": "/_matrix/client/v1/room_summary/!abc:x"}) == "!abc:x"
    # Its segment ends it, also before a user ID with a server name of its own.
    assert apply("room", **{"$uri": "/_matrix/client/v3/rooms/!abc:x/state/m.room.member/@u:y"}) == "!abc:x"
    assert apply("room", **{"$uri": f"/_matrix/client/v3/rooms/{ROOM_V12}/messages"}) == ROOM_V12
    assert apply("room", **{"$uri": f"/_matrix/federation/v1/backfill/{ROOM_V12}"}) == ROOM_V12
    # No room: the whole path.
    assert apply("room", **{"$uri": "/_matrix/client/v3/profile/@u:x"}) == "/_matrix/client/v3/profile/@u:x"


# --- expansion, placement and listeners -----------------------------------------


def test_count_expands_names_and_places_round_robin():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "count": 3, "hosts": ["app2", "app3"]}],
        **THREE_HOSTS,
    )
    assert [(w["name"], w["group"], w["host"]) for w in topo["workers"]] == [
        ("sync1", "sync", "app2"),
        ("sync2", "sync", "app3"),
        ("sync3", "sync", "app2"),
    ]
    assert topo["hosts"] == {"app1": [], "app2": ["sync1", "sync3"], "app3": ["sync2"]}
    assert topo["process_count"] == 4


def test_workers_default_to_the_main_host():
    topo = build_topology([{"name": "pusher", "types": ["pusher"]}], **THREE_HOSTS)
    assert worker(topo, "pusher")["host"] == "app1"


def test_single_host_uses_unix_sockets_everywhere():
    topo = topology(EVERY_TYPE)
    for process in [topo["main"], *topo["workers"]]:
        for listener in process["listeners"]:
            assert listener["path"].startswith("/run/matrix-synapse/"), process["name"]
            assert "port" not in listener
    for location in topo["shared_config"]["instance_map"].values():
        assert set(location) == {"path"}


def test_socket_dir_is_honoured():
    topo = topology([{"name": "typing", "types": ["typing"]}], socket_dir="/run/synapse/")
    assert topo["shared_config"]["instance_map"]["typing"] == {"path": "/run/synapse/typing-replication.sock"}


def test_workers_on_other_hosts_use_tcp_on_inventory_addresses():
    topo = build_topology(
        [
            {"name": "typing", "types": ["typing"], "hosts": ["app2"]},
            {"name": "sender", "types": ["federation_sender"], "hosts": ["app3"]},
            {"name": "sync", "types": ["synchrotron"]},
        ],
        **THREE_HOSTS,
    )
    instance_map = topo["shared_config"]["instance_map"]
    assert instance_map["main"] == {"host": "10.0.0.1", "port": 9093}
    assert instance_map["typing"] == {"host": "10.0.0.2", "port": 9101}
    typing = worker(topo, "typing")
    # nginx on app1 reaches the app2 worker over TCP, bound to app2's address.
    assert typing["listeners"][0]["upstream_server"] == "10.0.0.2:8101"
    assert typing["config"]["worker_listeners"][0]["bind_addresses"] == ["10.0.0.2"]
    # The synchrotron shares nginx's host: its public listener stays a socket.
    assert worker(topo, "sync")["listeners"][0]["upstream_server"] == "unix:/run/matrix-synapse/sync.sock"
    # A worker with nothing to serve keeps a local health socket only.
    (health,) = worker(topo, "sender")["listeners"]
    assert health["resources"] == ["health"] and health["path"].endswith("/sender.sock")


def test_remote_proxy_reaches_main_over_tcp():
    topo = build_topology([], proxy_hosts=["app2"], **THREE_HOSTS)
    assert topo["main"]["listeners"][0]["upstream_server"] == "10.0.0.1:8008"
    assert topo["nginx"]["upstreams"]["synapse_main"]["servers"] == ["10.0.0.1:8008"]


@pytest.mark.parametrize(
    ("workers", "crosses"),
    [
        ([], False),
        ([{"name": "sync", "types": ["synchrotron"], "hosts": ["app1"]}], False),
        ([{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}], True),
    ],
    ids=["monolith", "workers-beside-main", "worker-on-another-host"],
)
def test_replication_crosses_hosts_only_with_a_worker_away_from_main(workers, crosses):
    topo = build_topology(workers, **THREE_HOSTS)
    assert topo["replication_crosses_hosts"] is crosses
    replication = [
        listener
        for process in [topo["main"], *topo["workers"]]
        for listener in process["listeners"]
        if listener["purpose"] == "replication"
    ]
    # Over TCP exactly when it crosses hosts.
    assert all(("port" in listener) is crosses for listener in replication)


def test_ipv6_addresses_are_bracketed_for_nginx():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}],
        hosts={"app1": "fd00::1", "app2": "fd00::2"},
        main_host="app1",
    )
    assert worker(topo, "sync")["listeners"][0]["upstream_server"] == "[fd00::2]:8101"


def test_explicit_ports_count_up_per_instance():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "count": 2, "hosts": ["app2"], "port": 8500}],
        **THREE_HOSTS,
    )
    assert [w["listeners"][0]["port"] for w in topo["workers"]] == [8500, 8501]


def test_duties_go_to_the_first_instance_and_lists_to_all():
    topo = topology(
        [
            {"name": "media", "types": ["media_repository"], "count": 2},
            {"name": "sender", "types": ["federation_sender"], "count": 3},
            {"name": "pusher", "types": ["pusher"], "count": 2},
            {"name": "persister", "types": ["event_persister"], "count": 2},
        ]
    )
    shared = topo["shared_config"]
    assert shared["media_instance_running_background_jobs"] == "media1"
    assert shared["enable_media_repo"] is False
    assert shared["federation_sender_instances"] == ["sender1", "sender2", "sender3"]
    assert shared["pusher_instances"] == ["pusher1", "pusher2"]
    assert shared["stream_writers"]["events"] == ["persister1", "persister2"]
    assert shared["stream_writers"]["quarantined_media_changes"] == ["media1", "media2", "master"]
    assert worker(topo, "media2")["config"]["enable_media_repo"] is True


def test_combined_worker_writes_several_streams():
    writers = ["account_data", "presence", "receipts", "to_device", "typing", "push_rules"]
    topo = topology([{"name": "stream_writer", "types": writers}])
    for stream in writers:
        assert topo["shared_config"]["stream_writers"][stream] == ["stream_writer"]
    (only,) = topo["workers"]
    assert [listener["purpose"] for listener in only["listeners"]] == ["http", "replication"]
    assert only["listeners"][0]["resources"] == ["client"]


# --- validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("workers", "match"),
    [
        ({"name": "sync"}, "must be a list of workers"),
        (["sync"], r"synapse_workers\[0\] is a string, 'sync'; expected a mapping"),
        ([["sync"]], r"synapse_workers\[0\] is a list, \['sync'\]; expected a mapping"),
        ([{"name": "sync", "types": [["synchrotron"]]}], r"lists \['synchrotron'\], a list, among its types"),
        ([{"name": "sync", "types": [{"synchrotron": 1}]}], r"a mapping, among its types"),
        ([{"name": "sync", "types": {"synchrotron": 1}}], r"worker types \(got \{'synchrotron': 1\}\)"),
        ([{"name": "sync", "types": ["synchrotron"], "hosts": [["app1"]]}], r"lists \['app1'\], a list, among its hosts"),
        ([{"name": "sync", "types": ["synchrotron"], 1: "x", "extra": 2}], r"unknown key\(s\) 1, extra"),
        ([{"name": ["sync"], "types": ["synchrotron"]}], r"got \['sync'\]"),
        ([{"types": ["synchrotron"]}], r"needs a name matching \[a-z\]\[a-z0-9_\]\*"),
        ([{"name": "Sync", "types": ["synchrotron"]}], "needs a name matching"),
        ([{"name": "sync-1", "types": ["synchrotron"]}], "needs a name matching"),
        ([{"name": 3, "types": ["synchrotron"]}], "needs a name matching"),
        ([{"name": "main", "types": ["synchrotron"]}], "reserved for Synapse's main process"),
        ([{"name": "master", "types": ["synchrotron"]}], "reserved"),
        (
            [{"name": "sync", "types": ["synchrotron"]}, {"name": "sync", "types": ["pusher"]}],
            "two workers are named 'sync'",
        ),
        (
            [{"name": "sync", "types": ["synchrotron"], "count": 2}, {"name": "sync1", "types": ["pusher"]}],
            "expands to instance 'sync1'|'sync1' .*already names",
        ),
        ([{"name": "sync", "types": ["synchrotorn"]}], "unknown type 'synchrotorn'. Known types: account_data, "),
        ([{"name": "sync", "types": []}], "needs 'types'"),
        ([{"name": "sync"}], "needs 'types'"),
        ([{"name": "sync", "types": ["synchrotron", "synchrotron"]}], "lists a type twice"),
        ([{"name": "sync", "types": ["synchrotron"], "count": 0}], r"count 0 \(a number\); count must be a whole number of 1 or more"),
        ([{"name": "sync", "types": ["synchrotron"], "count": -2}], "count must be"),
        ([{"name": "sync", "types": ["synchrotron"], "count": "3"}], "count must be"),
        ([{"name": "sync", "types": ["synchrotron"], "count": True}], "count must be"),
        ([{"name": "sync", "types": ["synchrotron"], "hosts": ["db9"]}], "placed on 'db9', which is not in the inventory"),
        ([{"name": "sync", "types": ["synchrotron"], "hosts": []}], "give a non-empty list of inventory hosts"),
        ([{"name": "sync", "types": ["synchrotron"], "port": 70000}], "port 70000"),
        ([{"name": "sync", "types": ["synchrotron"], "nmae": "x"}], r"unknown key\(s\) nmae"),
        (
            [{"name": "typing", "types": ["typing"], "count": 2}],
            "typing1, typing2 all write the 'typing' stream, which Synapse allows only one instance",
        ),
        (
            [{"name": "a", "types": ["presence"]}, {"name": "b", "types": ["presence", "typing"]}],
            "a, b all write the 'presence' stream",
        ),
        (
            [{"name": "bg", "types": ["background_worker"], "count": 2}],
            "bg1, bg2 all have type 'background_worker', a duty Synapse runs on one instance only",
        ),
        ([{"name": "a", "types": ["user_dir"]}, {"name": "b", "types": ["user_dir"]}], "type 'user_dir'"),
        ([{"name": "a", "types": ["appservice"], "count": 3}], "type 'appservice'"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(workers, match):
    fails(workers, match)


@pytest.mark.parametrize("stream", sorted(SINGLE_WRITER_STREAMS))
def test_every_single_writer_stream_refuses_a_second_writer(stream):
    name = next(t.name for t in WORKER_TYPES.values() if stream in t.streams)
    fails([{"name": "w", "types": [name], "count": 2}], f"write the '{stream}' stream")


@pytest.mark.parametrize("stream", sorted(MULTI_WRITER_STREAMS))
def test_multi_writer_streams_accept_several_writers(stream):
    name = next(t.name for t in WORKER_TYPES.values() if stream in t.streams)
    topo = topology([{"name": "w", "types": [name], "count": 3}])
    assert topo["shared_config"]["stream_writers"][stream] == writers("w1", "w2", "w3", stream=stream)


def test_media_repositories_must_share_a_host():
    with pytest.raises(AnsibleFilterError, match="media_repository instances must share one host.*media1 on app2, media2 on app3"):
        build_topology(
            [{"name": "media", "types": ["media_repository"], "count": 2, "hosts": ["app2", "app3"]}],
            **THREE_HOSTS,
        )


def test_port_clashes_are_refused():
    with pytest.raises(AnsibleFilterError, match="both listen on port 8600 on host 'app2'"):
        build_topology(
            [
                {"name": "a", "types": ["synchrotron"], "hosts": ["app2"], "port": 8600},
                {"name": "b", "types": ["client_reader"], "hosts": ["app2"], "port": 8600},
            ],
            **THREE_HOSTS,
        )
    with pytest.raises(AnsibleFilterError, match="main both listen on port 8008"):
        build_topology(
            [{"name": "a", "types": ["synchrotron"], "port": 8008}],
            proxy_hosts=["app2"],
            **THREE_HOSTS,
        )


def test_same_port_on_different_hosts_is_fine():
    topo = build_topology(
        [
            {"name": "a", "types": ["synchrotron"], "hosts": ["app2"], "port": 8600},
            {"name": "b", "types": ["client_reader"], "hosts": ["app3"], "port": 8600},
        ],
        **THREE_HOSTS,
    )
    assert [w["listeners"][0]["port"] for w in topo["workers"]] == [8600, 8600]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"preset": "no-such-preset"}, "unknown synapse_worker_preset 'no-such-preset'. Use one of: "),
        ({"preset": ["monolith"]}, r"unknown synapse_worker_preset \['monolith'\]. Use one of: "),
        ({"main_host": "db9"}, "main_host 'db9' is not among the inventory hosts"),
        ({"proxy_hosts": ["web9"]}, "proxy host 'web9' is not among"),
        ({"socket_dir": "run/x"}, "socket_dir must be an absolute path"),
        ({"hosts": []}, "'hosts' must map inventory host names"),
    ],
)
def test_bad_options_are_refused(options, match):
    with pytest.raises(AnsibleFilterError, match=match):
        build_topology(None, **{**ONE_HOST, **options})


def test_main_host_is_required_with_several_hosts():
    with pytest.raises(AnsibleFilterError, match="give main_host"):
        build_topology(None, hosts=THREE_HOSTS["hosts"])


# --- presets and the filter interface --------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid(name):
    topo = topology(None, preset=name)
    assert topo["workers"] == topology(list(PRESETS[name].workers))["workers"]
    assert PRESETS[name].summary


def test_explicit_workers_win_over_the_preset():
    topo = topology([{"name": "sync", "types": ["synchrotron"]}], preset="monolith")
    assert [w["name"] for w in topo["workers"]] == ["sync"]
    assert topology([], preset=sorted(PRESETS)[-1])["workers"] == []


def test_filter_module_exposes_the_topology_and_its_views():
    filters = FilterModule().filters()
    assert set(filters) == {
        "synapse_topology",
        "synapse_instance_map",
        "synapse_stream_writers",
        "synapse_nginx_routes",
        "synapse_input_problems",
        "synapse_capacity_warnings",
        "synapse_postgres_memory",
        "synapse_cache_autotuning",
        "synapse_signing_key_refusal",
        "synapse_restart_batches",
        "synapse_assignments",
        "synapse_acme_problems",
    }
    workers = [{"name": "typing", "types": ["typing"]}, {"name": "sync", "types": ["synchrotron"]}]
    whole = filters["synapse_topology"](workers, **ONE_HOST)
    assert whole == topology(workers)
    assert filters["synapse_instance_map"](workers, **ONE_HOST) == whole["shared_config"]["instance_map"]
    assert filters["synapse_stream_writers"](workers, **ONE_HOST) == {"typing": ["typing"]}
    assert filters["synapse_nginx_routes"](workers, **ONE_HOST) == whole["nginx"]
    assert filters["synapse_instance_map"](None, **ONE_HOST) == {}
    with pytest.raises(AnsibleFilterError, match="unknown type"):
        filters["synapse_nginx_routes"]([{"name": "x", "types": ["nope"]}], **ONE_HOST)


# --- reading the inventory -----------------------------------------------------------


def test_inventory_groups_give_hosts_main_and_proxies():
    groups = {
        "all": ["app1", "app2", "web", "db"],
        "synapse_main": ["app1"],
        "synapse_workers": ["app1", "app2"],
        "nginx": ["web"],
        "postgres": ["db"],
    }
    hostvars = {
        "app1": {"ansible_host": "192.0.2.1", "synapse_address": "10.0.0.1"},
        "app2": {"ansible_host": "10.0.0.2"},
        "web": {},
        "db": {"ansible_host": "10.0.0.9"},
    }
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}], groups=groups, hostvars=hostvars
    )
    assert topo["main"]["host"] == "app1"
    assert set(topo["hosts"]) == {"app1", "app2", "web"}
    # nginx runs on "web", so main and workers are reached over TCP.
    assert topo["main"]["listeners"][0]["upstream_server"] == "10.0.0.1:8008"
    assert worker(topo, "sync")["listeners"][0]["upstream_server"] == "10.0.0.2:8101"
    assert topo["shared_config"]["instance_map"]["main"] == {"host": "10.0.0.1", "port": 9093}
    with pytest.raises(AnsibleFilterError, match="placed on 'db', which is not in the inventory"):
        build_topology([{"name": "x", "types": ["pusher"], "hosts": ["db"]}], groups=groups, hostvars=hostvars)


def test_single_host_inventory_without_nginx_group_proxies_on_main():
    topo = build_topology(None, preset="monolith", groups={"synapse_main": ["lab1"]}, hostvars={"lab1": {}})
    assert topo["main"]["listeners"][0]["upstream_server"] == "unix:/run/matrix-synapse/main.sock"


def test_inventory_without_main_host_is_refused():
    with pytest.raises(AnsibleFilterError, match="no host in group 'synapse_main'"):
        build_topology(None, groups={"nginx": ["web"]}, hostvars={"web": {}})


def test_readme_tables_are_generated_from_the_catalogue():
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run(
        [sys.executable, str(ROOT / "tests/tools/readme_tables.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    readme = (ROOT / "README.md").read_text()
    for name in WORKER_TYPES:
        assert f"| `{name}` |" in readme
    for name in PRESETS:
        assert f"| `{name}` |" in readme


# --- PostgreSQL and Redis ---------------------------------------------------------------


def test_backends_share_the_main_host_by_default_and_use_sockets():
    topo = build_topology(PRESETS["seed002"].workers, **ONE_HOST)
    common = {
        "host": "app1",
        "address": "10.0.0.1",
        "listen_tcp": False,
        "client_hosts": ["app1"],
        "tcp_client_addresses": [],
    }
    assert topo["backends"]["postgres"] == {
        **common,
        "port": 5432,
        "socket_dir": "/var/run/postgresql",
        "database": "synapse",
        "user": "synapse",
        "connections": {
            "app1": {"host": "/var/run/postgresql", "port": 5432, "dbname": "synapse", "user": "synapse"}
        },
    }
    assert topo["backends"]["redis"] == {
        **common,
        "port": 6379,
        "socket_path": "/run/redis/redis-server.sock",
        "connections": {"app1": {"path": "/run/redis/redis-server.sock"}},
    }


def test_backends_on_a_database_host_are_reached_over_tcp_by_every_synapse_host():
    groups = {
        "synapse_main": ["app1"],
        "synapse_workers": ["app1", "app2"],
        "postgres": ["db"],
        "redis": ["db"],
    }
    hostvars = {
        "app1": {"ansible_host": "192.0.2.1", "synapse_address": "10.0.0.1"},
        "app2": {"ansible_host": "10.0.0.2"},
        "db": {"ansible_host": "10.0.0.9"},
    }
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}], groups=groups, hostvars=hostvars
    )
    for name in ("postgres", "redis"):
        backend = topo["backends"][name]
        assert backend["host"] == "db"
        assert backend["address"] == "10.0.0.9"
        assert backend["listen_tcp"] is True
        assert backend["client_hosts"] == ["app1", "app2"]
        assert backend["tcp_client_addresses"] == ["10.0.0.1", "10.0.0.2"]
    # Every Synapse host connects over TCP to the database host's address.
    assert topo["backends"]["postgres"]["connections"]["app2"] == {
        "host": "10.0.0.9",
        "port": 5432,
        "dbname": "synapse",
        "user": "synapse",
    }
    assert topo["backends"]["redis"]["connections"] == {
        "app1": {"host": "10.0.0.9", "port": 6379},
        "app2": {"host": "10.0.0.9", "port": 6379},
    }
    # The database host runs no Synapse process and takes no workers.
    assert "db" not in topo["hosts"]


def test_a_backend_on_the_main_host_listens_on_tcp_once_a_worker_runs_elsewhere():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}], **THREE_HOSTS
    )
    redis = topo["backends"]["redis"]
    assert redis["host"] == "app1"
    assert redis["listen_tcp"] is True
    # The main process on app1 keeps the socket; only app2 connects over TCP.
    assert redis["tcp_client_addresses"] == ["10.0.0.2"]
    # A host without a Synapse process is no client.
    assert redis["client_hosts"] == ["app1", "app2"]
    assert redis["connections"] == {
        "app1": {"path": "/run/redis/redis-server.sock"},
        "app2": {"host": "10.0.0.1", "port": 6379},
    }


def test_backend_hosts_given_directly():
    topo = build_topology(
        [],
        backend_hosts={"postgres": "db"},
        backend_addresses={"db": "10.0.0.9"},
        **ONE_HOST,
    )
    assert topo["backends"]["postgres"]["host"] == "db"
    assert topo["backends"]["postgres"]["tcp_client_addresses"] == ["10.0.0.1"]
    assert topo["backends"]["redis"]["host"] == "app1"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backend_hosts": {"postgres": "db"}}, "the postgres host 'db' has no address"),
        ({"backend_hosts": {"mysql": "app1"}}, "backend_hosts names mysql; it takes postgres, redis"),
    ],
)
def test_bad_backend_hosts_are_refused(options, message):
    with pytest.raises(AnsibleFilterError, match=message):
        build_topology([], **options, **ONE_HOST)


def test_backend_settings_reach_every_connection():
    topo = build_topology(
        [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}],
        backend_settings={
            "postgres": {"port": "5433", "database": "matrix", "user": "matrix", },
            "redis": {"port": None},
        },
        **THREE_HOSTS,
    )
    postgres = topo["backends"]["postgres"]
    assert (postgres["port"], postgres["database"], postgres["user"]) == (5433, "matrix", "matrix")
    assert postgres["connections"]["app1"] == {
        "host": "/var/run/postgresql",
        "port": 5433,
        "dbname": "matrix",
        "user": "matrix",
    }
    assert postgres["connections"]["app2"]["host"] == "10.0.0.1"
    # None keeps the default.
    assert topo["backends"]["redis"]["port"] == 6379


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mysql": {}}, "backend_settings names mysql; it takes postgres, redis"),
        ({"redis": {"socket_path": "/tmp/r.sock"}}, r"backend_settings.redis sets socket_path; it takes port"),
        ({"postgres": {"port": 0}}, r"the postgres port must be a TCP port \(1-65535\), got 0"),
        ({"redis": {"port": "six"}}, r"the redis port must be a TCP port \(1-65535\), got 'six'"),
        ({"postgres": {"port": True}}, "the postgres port must be a TCP port"),
        ({"postgres": {"database": "Synapse"}}, "database name 'Synapse' must be a lower-case SQL identifier"),
        ({"postgres": {"user": "1synapse"}}, "user name '1synapse' must be a lower-case SQL identifier"),
        ({"postgres": {"database": "template1"}}, "'template1' is one of PostgreSQL's own"),
        ("postgres", "backend_settings must map postgres and redis"),
    ],
)
def test_bad_backend_settings_are_refused(settings, message):
    with pytest.raises(AnsibleFilterError, match=message):
        build_topology([], backend_settings=settings, **ONE_HOST)


def test_a_backend_group_with_two_hosts_is_refused():
    groups = {"synapse_main": ["app1"], "redis": ["db1", "db2"]}
    hostvars = {"app1": {}, "db1": {}, "db2": {}}
    with pytest.raises(AnsibleFilterError, match=r"group 'redis' has 2 hosts \(db1, db2\).*list one host"):
        build_topology([], groups=groups, hostvars=hostvars)


# --- Media across hosts -----------------------------------------------------------


def test_media_repositories_run_on_the_main_host_by_default():
    topo = build_topology([{"name": "media", "types": ["media_repository"], "count": 2}], **THREE_HOSTS)
    assert {w["host"] for w in topo["workers"]} == {"app1"}
    assert topo["media_host"] == "app1"


def test_media_repositories_away_from_the_media_store_are_refused():
    with pytest.raises(
        AnsibleFilterError,
        match=r"worker 'media' serves media but is placed on 'app2', while the media store is on 'app1'",
    ):
        build_topology([{"name": "media", "types": ["media_repository"], "hosts": ["app2"]}], **THREE_HOSTS)


def test_the_media_store_may_live_on_another_host():
    topo = build_topology(
        [{"name": "media", "types": ["media_repository"], "hosts": ["app2"]}],
        media_host="app2",
        **THREE_HOSTS,
    )
    assert topo["media_host"] == "app2"
    assert topo["workers"][0]["host"] == "app2"


@pytest.mark.parametrize(
    ("workers", "media_host", "message"),
    [
        ([], "app2", r"synapse_media_host is 'app2', but no worker serves media"),
        ([], "db9", r"the media store host 'db9' \(synapse_media_host\) is not among the Synapse hosts"),
    ],
)
def test_bad_media_hosts_are_refused(workers, media_host, message):
    with pytest.raises(AnsibleFilterError, match=message):
        build_topology(workers, media_host=media_host, **THREE_HOSTS)
