# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The worker-type catalogue: the one place where Synapse worker types are written.

Each entry says, for one worker type of Synapse 1.163:

* which ``worker_app`` it runs and which HTTP listener resources it serves;
* the request paths (Synapse's own regexes) a reverse proxy should send to it,
  grouped by how requests should be balanced over several instances;
* the replication streams it writes (``stream_writers``);
* the homeserver-wide settings it implies (``*_instances`` lists and the
  ``*_from_worker`` / ``run_background_tasks_on`` duties);
* whether more than one instance of it may run.

Type names are those of Synapse's ``docker/configure_workers_and_start.py``;
endpoint regexes follow ``docs/workers.md`` of the 1.163.2 release, with the
unstable thread-subscription paths taken from
``synapse/rest/client/thread_subscriptions.py``. Where the docs and the code
disagree, the code wins and a comment beside the entry names the file. Which
streams accept a single writer only is read from ``synapse/config/workers.py``.

Some regexes of the docs leave a path open around a ``.*`` (``rooms/.*/typing``),
so a segment the client chooses (a transaction ID, an event type, a state key)
spelled like another endpoint's name sends the request to that endpoint's
worker. Those entries use the shape of the servlet's own pattern instead (the
``PATTERNS`` of ``synapse/rest/client/*.py``): each path parameter one
``[^/]+`` segment, the end anchored with ``$``. nginx matches the decoded URI,
where an encoded ``%2F`` inside an ID has become ``/``; such a request matches
none of these regexes and goes to main, which serves every endpoint.

Nothing else in the collection repeats these facts: the topology filter, the
templates, the README table and the tests all read them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GENERIC_WORKER_APP = "synapse.app.generic_worker"

# How requests for a group of endpoints are spread over several instances.
# The nginx role turns each into an upstream balancing directive.
BALANCE_METHODS = {
    "least_conn": "the instance with the fewest open connections",
    "user": "sticky by the user of the access token (`hash` of the token's localpart)",
    "origin": "sticky by the sending server (`hash` of the X-Matrix origin)",
    "room": "sticky by the room named in the request path (its ID, or the alias a join names)",
}

# How nginx derives the hash key of each sticky balance method: maps from a
# request property to the key variable named by "variable". Access tokens look
# like syt_<localpart>_..., federation requests carry `X-Matrix origin=...`.
BALANCE_KEYS = {
    "user": {
        "variable": "$synapse_balance_user",
        "maps": (
            {
                "source": "$arg_access_token",
                "variable": "$synapse_balance_user_from_query",
                "default": "$arg_access_token",
                "cases": (("~syt_(?<user>.*?)_.*", "$user"),),
            },
            {
                "source": "$http_authorization",
                "variable": "$synapse_balance_user",
                "default": "$http_authorization",
                "cases": (
                    ("~Bearer syt_(?<user>.*?)_.*", "$user"),
                    ("", "$synapse_balance_user_from_query"),
                ),
            },
        ),
    },
    "origin": {
        "variable": "$synapse_balance_origin",
        "maps": (
            {
                "source": "$http_authorization",
                "variable": "$synapse_balance_origin",
                "default": "$remote_addr",
                "cases": ((r"~X-Matrix\s.*origin=\W?(?<origin>[\w.:\-\[\]]+)", "$origin"),),
            },
        ),
    },
    # The room of a request: the segment after rooms/, join/ or knock/ (a room
    # ID, or the alias a join or knock names), else the first segment that
    # starts with a room ID's sigil "!" (federation paths, room_keys/keys/...).
    # $uri is decoded, so %21abc%3Aexample.org and !abc:example.org key alike.
    # seed002 keys its room workers by the room ID found the same way, after
    # the first "!" or "%21" of $request_uri; its capture runs greedily to the
    # path's last ":server" (/rooms/!r:x/state/m.room.member/@u:y keys on
    # "!r:x/state/m.room.member/@u"), and room version 12 IDs, which carry no
    # ":server" (MSC4291), match it not at all. Ending the ID at its segment
    # keeps every request for a room on one worker.
    "room": {
        "variable": "$synapse_balance_room",
        "maps": (
            {
                "source": "$uri",
                "variable": "$synapse_balance_room",
                "default": "$uri",
                "cases": (
                    ("~^/_matrix/client/(?:api/v1|[^/]+)/(?:rooms|join|knock)/(?<room>[^/]+)", "$room"),
                    ("~^/_matrix/(?:client|federation)/(?:[^/]*/)*?(?<room>![^/]+)", "$room"),
                ),
            },
        ),
    },
}

# Streams that Synapse 1.163 lets only one instance write
# (synapse/config/workers.py: "Must only specify one instance to handle ...").
SINGLE_WRITER_STREAMS = frozenset(
    {"typing", "to_device", "account_data", "presence", "push_rules"}
)

# Streams that accept several writers.
MULTI_WRITER_STREAMS = frozenset(
    {
        "events",
        "receipts",
        "device_lists",
        "thread_subscriptions",
        "quarantined_media_changes",
    }
)

# How `stream_writers` names the main process: MAIN_PROCESS_INSTANCE_NAME of
# synapse/config/workers.py. Only `instance_map` accepts "main" (Synapse renames
# that key to "master"); a writer called "main" fails the instance_map check on
# the workers and is not the main process on main itself.
MAIN_WRITER = "master"

# Streams the main process writes even when workers are their writers, so main
# stays among their writers. quarantined_media_changes: the background update
# flag_existing_quarantined_media (synapse/storage/databases/main/room.py,
# schema delta main/94/05) writes the stream and asserts that its process is a
# writer; background updates run on main only (synapse/app/homeserver.py).
# docs/workers.md lists only the media repositories as its writers.
STREAMS_MAIN_ALSO_WRITES = frozenset({"quarantined_media_changes"})

# HTTP methods for an endpoint group that Synapse serves on workers for some
# methods only. HEAD is answered as GET (synapse/http/server.py).
READ_METHODS = ("GET", "HEAD")

# Paths the reverse proxy must never forward:
# - replication is unauthenticated and unencrypted (docs/workers.md, "Shared
#   configuration");
# - metrics are unauthenticated and tell anyone the server's load, users and
#   rooms: an HTTP listener given the `metrics` resource (with enable_metrics)
#   serves them at /_synapse/metrics (METRICS_PREFIX, synapse/metrics/__init__.py),
#   so a listener nginx forwards to must not hand them to the public server;
#   they are scraped on a private listener instead.
PROXY_DENIED_PATTERNS = ("^/_synapse/replication/", "^/_synapse/metrics")

# A prefix shared by many client-server regexes below.
_C = "^/_matrix/client/(api/v1|r0|v3|unstable)"
_C3 = "^/_matrix/client/(r0|v3|unstable)"

# Sync paths a synchrotron serves and an initial synchrotron takes the initial
# syncs of (docs/workers.md, "Load balancing"): /sync, and the legacy
# /initialSync of every room or of one.
SYNC_PATTERN = "^/_matrix/client/(r0|v3)/sync$"
INITIAL_SYNC_PATTERNS = (
    "^/_matrix/client/(api/v1|r0|v3)/initialSync$",
    "^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
)

# Endpoints of a stream writer that docs/workers.md also lets any generic
# worker serve for GET ("can be handled for GET requests"): push rules,
# account data, tags, presence and GET /_synapse/admin/v2/users/{user}. They
# all stay with their writer (main while no worker writes the stream), reads
# included. A worker learns of a write only when replication reaches it, so a
# client that writes and reads back at once can read the old state from it:
# in Synapse 1.163 a push rule PUT on main and read at once from a generic
# worker answered 404 (the default scenario's client check), and a generic
# worker answered GET presence/{userId}/status with 500 while main wrote
# presence (the multi-host scenario's). Clients see these through /sync too.
#
# Account data and tags. docs/workers.md lists (r0|v3|unstable)/.*/tags and
# .*/account_data, which a transaction ID or state key named "tags" or
# "account_data" matches too (PUT .../rooms/{roomId}/send/{type}/tags). These
# are the paths of AccountDataServlet and RoomAccountDataServlet
# (synapse/rest/client/account_data.py), TagListServlet (GET .../tags) and
# TagServlet (PUT and DELETE .../tags/{tag}, synapse/rest/client/tags.py).
ACCOUNT_DATA_PATTERNS = (
    f"{_C3}/user/[^/]+/account_data/[^/]+$",
    f"{_C3}/user/[^/]+/rooms/[^/]+/account_data/[^/]+$",
    f"{_C3}/user/[^/]+/rooms/[^/]+/tags(/[^/]+)?$",
)
# PushRuleRestServlet (synapse/rest/client/push_rule.py) serves everything
# under pushrules/; workers other than the writer refuse PUT and DELETE.
PUSH_RULES_PATTERNS = (f"{_C}/pushrules/",)
# PresenceStatusRestServlet (synapse/rest/client/presence.py): GET and PUT
# .../presence/{userId}/status, the only endpoint under presence/.
PRESENCE_PATTERNS = (f"{_C}/presence/",)


@dataclass(frozen=True)
class EndpointGroup:
    """Request paths served together and balanced the same way.

    ``methods`` limits the group to those HTTP methods (empty: every method),
    for paths where Synapse registers the other methods on the main process
    only. ``without_arg`` limits it to requests without that query argument
    (or with it empty, as nginx's ``$arg_<name>`` reads it): an initial
    ``/sync`` has no ``since``. A request the limit leaves out goes where it
    would go without the group: to the next running type that lists the same
    pattern, else to main.
    """

    title: str
    patterns: tuple[str, ...]
    balance: str = "least_conn"
    methods: tuple[str, ...] = ()
    without_arg: str = ""

    def __post_init__(self):
        if self.methods and self.without_arg:
            raise ValueError(f"{self.title}: limit a group by methods or by a query argument, not both")


@dataclass(frozen=True)
class WorkerType:
    """One worker type and everything Synapse needs to know about it."""

    name: str
    summary: str
    # HTTP listener resources for traffic from the reverse proxy.
    resources: tuple[str, ...] = ()
    endpoints: tuple[EndpointGroup, ...] = ()
    # Replication streams this type writes (keys of `stream_writers`).
    streams: tuple[str, ...] = ()
    # Homeserver list settings every instance of the type is appended to.
    instance_lists: tuple[str, ...] = ()
    # Homeserver settings naming the ONE instance that performs a duty.
    duties: tuple[str, ...] = ()
    # Homeserver settings set to a fixed value when the type is present.
    shared_settings: dict = field(default_factory=dict)
    # Settings written into each instance's own worker config.
    worker_settings: dict = field(default_factory=dict)
    # False where Synapse allows one instance only.
    shardable: bool = True
    # True where every instance must share one host (the media store).
    same_host: bool = False
    worker_app: str = GENERIC_WORKER_APP

    @property
    def needs_replication_listener(self) -> bool:
        """Stream writers must be reachable over HTTP replication (instance_map)."""
        return bool(self.streams)


def _writer(name, stream, summary, patterns=(), title=None, balance="least_conn"):
    """A worker type whose only job is writing one stream."""
    endpoints = ()
    if patterns:
        endpoints = (EndpointGroup(title or f"{stream} requests", tuple(patterns), balance),)
    return WorkerType(
        name=name,
        summary=summary,
        resources=("client",) if patterns else (),
        endpoints=endpoints,
        streams=(stream,),
        shardable=stream not in SINGLE_WRITER_STREAMS,
    )


_TYPES = (
    # --- stream writers ---------------------------------------------------
    _writer(
        "typing",
        "typing",
        "Writes the typing stream and serves typing notifications.",
        # docs/workers.md: rooms/.*/typing, which an event type, transaction
        # ID or state key named "typing" matches too. RoomTypingRestServlet
        # (synapse/rest/client/room.py): PUT /rooms/{roomId}/typing/{userId}.
        [f"{_C}/rooms/[^/]+/typing/[^/]+$"],
    ),
    _writer(
        "to_device",
        "to_device",
        "Writes the to-device stream and serves sendToDevice.",
        [f"{_C3}/sendToDevice/"],
    ),
    _writer(
        "account_data",
        "account_data",
        "Writes the account data stream and serves tags and account data.",
        [
            *ACCOUNT_DATA_PATTERNS,
            # MSC3391 deletion, UnstableAccountDataServlet and
            # UnstableRoomAccountDataServlet (synapse/rest/client/account_data.py,
            # registered when experimental msc3391_enabled is set), which the
            # docs' .*/account_data covers.
            "^/_matrix/client/unstable/org.matrix.msc3391/user/[^/]+"
            "(/rooms/[^/]+)?/account_data/[^/]+$",
        ],
    ),
    _writer(
        "receipts",
        "receipts",
        "Writes the receipts stream and serves receipts and read markers.",
        # docs/workers.md: rooms/.*/receipt and rooms/.*/read_markers, which a
        # transaction ID or state key named "receipt" matches too.
        # ReceiptRestServlet: POST /rooms/{roomId}/receipt/{receiptType}/{eventId}
        # (synapse/rest/client/receipts.py); ReadMarkerRestServlet: POST
        # /rooms/{roomId}/read_markers (synapse/rest/client/read_marker.py).
        [f"{_C3}/rooms/[^/]+/receipt/[^/]+/[^/]+$", f"{_C3}/rooms/[^/]+/read_markers$"],
    ),
    _writer(
        "presence",
        "presence",
        "Writes the presence stream and serves presence.",
        PRESENCE_PATTERNS,
    ),
    _writer(
        "push_rules",
        "push_rules",
        "Writes the push rules stream and serves push rules.",
        PUSH_RULES_PATTERNS,
    ),
    _writer(
        "device_lists",
        "device_lists",
        "Writes the device lists stream and serves device and key uploads.",
        [
            "^/_matrix/client/(r0|v3)/delete_devices$",
            f"{_C}/devices(/|$)",
            f"{_C3}/keys/upload",
            f"{_C}/keys/device_signing/upload$",
            f"{_C}/keys/signatures/upload$",
        ],
    ),
    _writer(
        "thread_subscriptions",
        "thread_subscriptions",
        "Writes the thread subscriptions stream and serves its (unstable) API.",
        [
            "^/_matrix/client/unstable/io.element.msc4306/",
            "^/_matrix/client/unstable/io.element.msc4308/thread_subscriptions$",
        ],
    ),
    WorkerType(
        name="event_persister",
        summary="Persists events (the events stream), sharded by room.",
        streams=("events",),
    ),
    # --- media ------------------------------------------------------------
    WorkerType(
        name="media_repository",
        summary=(
            "Serves and stores media; the first instance runs the media "
            "background jobs. Writes quarantined media changes."
        ),
        resources=("media",),
        endpoints=(
            EndpointGroup(
                "Media repository",
                (
                    "^/_matrix/media/",
                    "^/_matrix/client/v1/media/",
                    "^/_matrix/federation/v1/media/",
                    "^/_synapse/admin/v1/purge_media_cache$",
                    "^/_synapse/admin/v1/room/.*/media.*$",
                    "^/_synapse/admin/v1/user/.*/media.*$",
                    "^/_synapse/admin/v1/media/.*$",
                    "^/_synapse/admin/v1/quarantine_media/.*$",
                    "^/_synapse/admin/v1/users/.*/media$",
                ),
            ),
        ),
        # The quarantine admin APIs are registered on media-capable workers
        # only and must reach a writer of this stream (docs/workers.md).
        streams=("quarantined_media_changes",),
        duties=("media_instance_running_background_jobs",),
        shared_settings={"enable_media_repo": False},
        worker_settings={"enable_media_repo": True},
        same_host=True,
    ),
    # --- request handlers ---------------------------------------------------
    # Room workers (seed002's layout): every request whose path names a room
    # by its ID, hashed by room, so each worker caches its share of the rooms.
    # The layout's nginx config sends main its own paths first (account/3pid/,
    # directory/list/room/, pushrules/, rooms/.../forget and upgrade,
    # login/sso/redirect, register), then to the room workers every
    # /_matrix/client/ or /_matrix/federation/ path with a "!" (or "%21")
    # followed by ":server" anywhere in it, and federation state_ids and
    # get_missing_events by name; its note puts the stream endpoints first.
    # They come after the stream writers, whose endpoints (typing, receipts,
    # read markers, room account data and tags, thread subscriptions) stay
    # with their writer, and before every type below, whose room-ID paths
    # they take: the paths of synchrotron, federation_reader, event_creator
    # and client_reader that carry a room ID, each with the room segment
    # written as a room ID ("!", the sigil nginx sees after decoding %21).
    # The room's alias (join/#alias:x) is no room ID: such a request stays
    # with its own type. Paths Synapse serves on main alone (rooms/.../forget,
    # upgrade, report, directory/list/room/...) and the admin API are not
    # here. Each is the shape of the servlet's pattern, as in
    # synapse/rest/client/room.py, relations.py, room_keys.py and
    # synapse/federation/transport/server/federation.py.
    WorkerType(
        name="room_worker",
        summary=(
            "Serves the requests for a room named by its ID that the request types below serve, "
            "sticky by room (seed002's room workers)."
        ),
        resources=("client", "federation"),
        endpoints=(
            EndpointGroup(
                "Requests for a room by its ID",
                (
                    f"{_C}/rooms/![^/]+/(joined_members|members|state|messages)$",
                    f"{_C}/rooms/![^/]+/(context|event)/[^/]+$",
                    f"{_C}/rooms/![^/]+/redact/[^/]+(/[^/]+)?$",
                    f"{_C}/rooms/![^/]+/send/[^/]+(/[^/]+)?$",
                    f"{_C}/rooms/![^/]+/state/[^/]+(/[^/]*)?$",
                    f"{_C}/rooms/![^/]+/(join|invite|leave|ban|unban|kick)$",
                    f"{_C}/join/![^/]+(/[^/]+)?$",
                    f"{_C}/knock/![^/]+$",
                    "^/_matrix/client/(api/v1|r0|v3)/rooms/![^/]+/initialSync$",
                    "^/_matrix/client/v1/rooms/![^/]+/(hierarchy|threads|timestamp_to_event)$",
                    "^/_matrix/client/(v1|unstable)/rooms/![^/]+/relations/[^/]+(/[^/]+(/[^/]+)?)?$",
                    "^/_matrix/client/(r0|v3|unstable/org.matrix.msc2432)/rooms/![^/]+/aliases$",
                    "^/_matrix/client/unstable/im.nheko.summary/summary/![^/]+$",
                    "^/_matrix/client/v1/room_summary/![^/]+$",
                    f"{_C3}/room_keys/keys/![^/]+(/[^/]+)?$",
                    "^/_matrix/federation/v1/(state|state_ids|backfill|timestamp_to_event)/![^/]+/?$",
                    "^/_matrix/federation/v1/(get_missing_events|exchange_third_party_invite|hierarchy)/![^/]+$",
                    "^/_matrix/federation/v1/(make_join|make_leave|make_knock|send_knock|event_auth)/![^/]+/[^/]+$",
                    "^/_matrix/federation/(v1|v2)/(send_join|send_leave|invite)/![^/]+/[^/]+$",
                ),
                balance="room",
            ),
        ),
    ),
    # Initial syncs on a pool of their own (docs/workers.md, "Load balancing":
    # a /sync without `since`, and /initialSync, "can be very resource
    # intensive"; ESS names the type initial-synchrotron, seed001 runs two).
    # nginx tells them apart by `since` ($arg_since): a /sync that carries it
    # goes to the synchrotrons, else to main. Both pools are sticky by user.
    # /events stays with the synchrotrons, as the docs route it (ESS also
    # sends one without `from`, and a /sync with full_state=true, here; the
    # docs and seed001 do not). Simplified sliding sync (MSC4186) is not an
    # initial sync: a POST whose `pos` argument is missing only on a
    # connection's first request, whose room lists are windows of the
    # client's ranges; it stays with the synchrotrons.
    WorkerType(
        name="initial_synchrotron",
        summary="Serves initial syncs (/sync without since, /initialSync), sticky by user.",
        resources=("client",),
        endpoints=(
            EndpointGroup("Initial syncs (/sync without since)", (SYNC_PATTERN,), balance="user", without_arg="since"),
            EndpointGroup("Legacy initial syncs", INITIAL_SYNC_PATTERNS, balance="user"),
        ),
    ),
    WorkerType(
        name="synchrotron",
        summary="Serves /sync, sliding sync and the legacy event stream, sticky by user.",
        resources=("client",),
        endpoints=(
            EndpointGroup(
                "Sync requests",
                (
                    SYNC_PATTERN,
                    # Simplified sliding sync (MSC4186): SlidingSyncRestServlet
                    # of synapse/rest/client/sync.py, registered on every
                    # process with the client resource.
                    "^/_matrix/client/unstable/org.matrix.simplified_msc3575/sync$",
                    "^/_matrix/client/(api/v1|r0|v3)/events$",
                    *INITIAL_SYNC_PATTERNS,
                ),
                balance="user",
            ),
        ),
    ),
    WorkerType(
        name="federation_inbound",
        summary="Receives federation transactions, sticky by sending server.",
        resources=("federation",),
        endpoints=(
            EndpointGroup(
                "Inbound federation transactions",
                ("^/_matrix/federation/v1/send/",),
                balance="origin",
            ),
        ),
    ),
    WorkerType(
        name="federation_reader",
        summary="Serves federation requests other than transactions and media.",
        resources=("federation",),
        endpoints=(
            EndpointGroup(
                "Federation requests",
                (
                    "^/_matrix/federation/v1/version$",
                    "^/_matrix/federation/v1/event/",
                    "^/_matrix/federation/v1/state/",
                    "^/_matrix/federation/v1/state_ids/",
                    "^/_matrix/federation/v1/backfill/",
                    "^/_matrix/federation/v1/get_missing_events/",
                    "^/_matrix/federation/v1/publicRooms",
                    "^/_matrix/federation/v1/query/",
                    "^/_matrix/federation/v1/make_join/",
                    "^/_matrix/federation/v1/make_leave/",
                    "^/_matrix/federation/(v1|v2)/send_join/",
                    "^/_matrix/federation/(v1|v2)/send_leave/",
                    "^/_matrix/federation/v1/make_knock/",
                    "^/_matrix/federation/v1/send_knock/",
                    "^/_matrix/federation/(v1|v2)/invite/",
                    "^/_matrix/federation/v1/event_auth/",
                    "^/_matrix/federation/v1/timestamp_to_event/",
                    "^/_matrix/federation/v1/exchange_third_party_invite/",
                    "^/_matrix/federation/v1/user/devices/",
                    "^/_matrix/key/v2/query",
                    "^/_matrix/federation/v1/hierarchy/",
                ),
            ),
        ),
    ),
    WorkerType(
        name="user_dir",
        summary="Updates the user directory and serves its search.",
        resources=("client",),
        endpoints=(
            EndpointGroup(
                "User directory search",
                (f"{_C3}/user_directory/search$",),
            ),
        ),
        duties=("update_user_directory_from_worker",),
        shardable=False,
    ),
    WorkerType(
        name="event_creator",
        summary="Creates events (send, state, membership, profile), sticky by room.",
        resources=("client",),
        endpoints=(
            EndpointGroup(
                "Event sending requests",
                # docs/workers.md: rooms/.*/redact, rooms/.*/send,
                # rooms/.*/state/ and rooms/.*/(join|...)$, which a relation
                # type or event type in another room endpoint's path matches
                # too (GET /_matrix/client/unstable/rooms/{roomId}/relations/
                # {eventId}/send). These are the paths of
                # RoomRedactEventRestServlet (POST .../redact/{eventId}, PUT
                # with a transaction ID), RoomSendEventRestServlet (POST
                # .../send/{eventType}, PUT with a transaction ID),
                # RoomStateEventRestServlet (.../state/{eventType}, optionally
                # with a state key, which may be empty) and
                # RoomMembershipRestServlet (POST .../{membership}), all in
                # synapse/rest/client/room.py.
                (
                    f"{_C}/rooms/[^/]+/redact/[^/]+(/[^/]+)?$",
                    f"{_C}/rooms/[^/]+/send/[^/]+(/[^/]+)?$",
                    f"{_C}/rooms/[^/]+/state/[^/]+(/[^/]*)?$",
                    f"{_C}/rooms/[^/]+/(join|invite|leave|ban|unban|kick)$",
                    f"{_C}/join/",
                    f"{_C}/knock/",
                    f"{_C}/profile/",
                ),
                balance="room",
            ),
        ),
    ),
    WorkerType(
        name="client_reader",
        summary="Serves the remaining client API a worker can handle.",
        resources=("client",),
        endpoints=(
            EndpointGroup(
                "Client API requests",
                # docs/workers.md writes the room ID of the rooms/... paths as
                # .*, so a state key or event type of an event-sending request
                # named like their last segment (PUT .../state/{type}/members)
                # matches them. These are the paths of the servlets, with the
                # room ID and every other parameter one segment:
                # synapse/rest/client/room.py (members, state, context, event,
                # hierarchy, timestamp_to_event, aliases), relations.py,
                # filter.py and, for messages below, RoomMessageListRestServlet.
                (
                    f"{_C}/createRoom$",
                    f"{_C}/publicRooms$",
                    f"{_C}/rooms/[^/]+/joined_members$",
                    f"{_C}/rooms/[^/]+/context/[^/]+$",
                    f"{_C}/rooms/[^/]+/members$",
                    f"{_C}/rooms/[^/]+/state$",
                    "^/_matrix/client/v1/rooms/[^/]+/hierarchy$",
                    "^/_matrix/client/(v1|unstable)/rooms/[^/]+/relations/[^/]+(/[^/]+(/[^/]+)?)?$",
                    "^/_matrix/client/v1/rooms/[^/]+/threads$",
                    "^/_matrix/client/unstable/im.nheko.summary/summary/.*$",
                    "^/_matrix/client/v1/room_summary/.*$",
                    f"{_C3}/account/3pid$",
                    f"{_C3}/account/whoami$",
                    f"{_C3}/account/deactivate$",
                    "^/_matrix/client/(r0|v3)/delete_devices$",
                    f"{_C}/devices(/|$)",
                    "^/_matrix/client/versions$",
                    f"{_C}/voip/turnServer$",
                    f"{_C}/rooms/[^/]+/event/[^/]+$",
                    f"{_C}/joined_rooms$",
                    "^/_matrix/client/v1/rooms/[^/]+/timestamp_to_event$",
                    # RoomAliasListServlet: (r0|v3) and MSC2432's unstable
                    # prefix; docs/workers.md adds api/v1 and any unstable/.*.
                    "^/_matrix/client/(r0|v3|unstable/org.matrix.msc2432)/rooms/[^/]+/aliases$",
                    f"{_C}/search$",
                    # CreateFilterRestServlet (POST .../filter) and
                    # GetFilterRestServlet (GET .../filter/{filterId}); the
                    # docs' user/.*/filter(/|$) also matches account data of
                    # type "filter".
                    f"{_C3}/user/[^/]+/filter(/[^/]+)?$",
                    f"{_C}/directory/room/.*$",
                    f"{_C3}/capabilities$",
                    f"{_C3}/notifications$",
                    "^/_synapse/admin/v1/rooms/[^/]+$",
                    f"{_C3}/keys/query$",
                    f"{_C3}/keys/changes$",
                    f"{_C3}/keys/claim$",
                    f"{_C3}/room_keys/",
                    f"{_C3}/keys/upload",
                    f"{_C}/keys/device_signing/upload$",
                    f"{_C}/keys/signatures/upload$",
                    f"{_C}/login$",
                    f"{_C3}/register$",
                    f"{_C3}/register/available$",
                    "^/_matrix/client/v1/register/m.login.registration_token/validity$",
                    f"{_C3}/password_policy$",
                    f"{_C3}/user_directory/search$",
                    # docs/workers.md lists delayed_events(/[^/]+(/restart)?)?$
                    # for every method; synapse/rest/client/delayed_events.py
                    # registers POST .../delayed_events/{id} (update) on main
                    # only, so that path has a group of its own below.
                    "^/_matrix/client/unstable/org.matrix.msc4140/delayed_events(/[^/]+/restart)?$",
                    # Matrix Authentication Service's API, which docs/workers.md
                    # does not list: build_synapse_client_resource_tree
                    # (synapse/rest/synapse/client/__init__.py) mounts
                    # MasResource (synapse/rest/synapse/mas/) at /_synapse/mas
                    # when MAS is enabled, on main and on every generic worker
                    # with the client resource (synapse/app/generic_worker.py).
                    "^/_synapse/mas/",
                ),
            ),
            EndpointGroup(
                "Delayed event lookups (GET; updates go to main)",
                # synapse/rest/client/delayed_events.py: workers register
                # DelayedEventServlet (GET) on this path, main alone
                # UpdateDelayedEventServlet (POST).
                ("^/_matrix/client/unstable/org.matrix.msc4140/delayed_events/[^/]+$",),
                methods=READ_METHODS,
            ),
            EndpointGroup(
                "Room pagination (all requests for a room on one instance)",
                (f"{_C}/rooms/[^/]+/messages$",),
                balance="room",
            ),
        ),
    ),
    # --- background duties ----------------------------------------------------
    WorkerType(
        name="federation_sender",
        summary="Sends outbound federation traffic.",
        instance_lists=("federation_sender_instances",),
    ),
    WorkerType(
        name="pusher",
        summary="Sends push notifications.",
        instance_lists=("pusher_instances",),
    ),
    WorkerType(
        name="appservice",
        summary="Sends traffic to application services.",
        duties=("notify_appservices_from_worker",),
        shardable=False,
    ),
    WorkerType(
        name="background_worker",
        summary="Runs the periodic and replicated background tasks.",
        duties=("run_background_tasks_on",),
        shardable=False,
    ),
)

# Route order: the first type in this tuple whose pattern matches wins. Stream
# writers come first so their endpoints reach the writer even when a general
# type (client_reader) also lists them; the pools that take a share of other
# types' requests (room workers, initial synchrotrons) come before those
# types; the catch-alls come last.
ROUTE_PRIORITY = tuple(t.name for t in _TYPES)

WORKER_TYPES: dict[str, WorkerType] = {t.name: t for t in _TYPES}

# Homeserver settings that name ONE instance; a second candidate is an error
# unless the type is shardable (then the first instance takes the duty).
DUTY_SETTINGS = frozenset(d for t in _TYPES for d in t.duties)
