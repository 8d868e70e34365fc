"""Concrete requests and the worker types Synapse's docs/workers.md lets serve them.

Written by hand from docs/workers.md of element-hq/synapse (develop at
a58ad44eb0, whose last change to the file is 5df6d1be65 "Remove legacy MSC3861
auth delegation support"), not from the catalogue's regexes: the routing check
holds the catalogue against the docs. Each row is (method, path, types, main,
where the docs say so):

* the worker types follow the docs' groups as docker/configure_workers_and_start.py
  names them: "Sync requests" -> synchrotron, "Federation requests" ->
  federation_reader, the inbound transaction -> federation_inbound, "Client API",
  "Encryption", "Registration/login" and pagination -> client_reader, "Event
  sending" -> event_creator, each stream's endpoints -> its writer, the media
  repository's -> media_repository; where the docs let any generic worker
  serve a writer's endpoint too (the GET-only list, device lists) or name a
  second place (user directory search), client_reader is listed as well;
* ``main`` is one of the routing check's policies: MAIN_FALLBACK where main
  serves the request but a worker listed for it should have it,
  MAIN_UNTIL_DEPLOYED where a stream writer or the media repository takes the
  request over from main, MAIN_ALSO for the SSO endpoints (one process, main
  as good as a worker) and the admin API's user read (main writes it), MAIN_ONLY for requests the docs list for no worker,
  NEVER_FORWARDED for what must not leave nginx.

Two pools take requests over from those types while they run (``prefer``):

* initial syncs, a ``/sync`` without ``since`` and ``/initialSync``, which the
  docs' "Load balancing" section suggests separating out (ESS's
  initial-synchrotron, seed001's initial_sync workers);
* room workers (seed002): after main's own paths and the stream writers'
  endpoints, every client or federation request whose path names a room by its
  ID, of the synchrotron, federation_reader, event_creator and client_reader
  groups, goes to them. Which samples those are follows from the path alone
  (``_room_workers``), not from the catalogue's regexes.

Each sample names the room it is about (``room``: the room ID, or the alias of
a join), read from the constants its path is built from; an upstream sticky by
room must hash the request by it.

The paths are real requests (room, event and user IDs, query strings,
percent-encoded aliases and room IDs, a room version 12 ID), not the regexes. The docs leave out some endpoints
Synapse serves on workers (simplified sliding sync, GET delayed_events/{id},
the MAS API, thread subscriptions); the catalogue routes those from Synapse's
code and tests/unit/plugins/filter/test_routing_gaps.py covers them, so they
are not sampled here.
"""

from __future__ import annotations

from urllib.parse import unquote

from lib.routing_check import (
    MAIN_ALSO,
    MAIN_FALLBACK,
    MAIN_ONLY,
    MAIN_UNTIL_DEPLOYED,
    NEVER_FORWARDED,
    Sample,
    normalise_uri,
)

ROOM = "!abc123:example.org"
ROOM_ENCODED = "%21abc123%3Aexample.org"  # ROOM, percent-encoded as some clients send it
# A room version 12 ID: no server name (MSC4291).
ROOM_V12 = "!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM"
ALIAS = "%23lobby:example.org"  # #lobby:example.org, percent-encoded as clients send it
EVENT = "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"
USER = "@alice:example.org"
REMOTE_USER = "@bob:remote.example"
MEDIA = "example.org/GCmhgzMPRjqgpODLsNQzVuHZ"
DELAYED = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"

C = "/_matrix/client/v3"
F = "/_matrix/federation/v1"
A = "/_synapse/admin/v1"

# Where docs/workers.md says who serves a request.
_G = "synapse.app.generic_worker"
SYNC = f'{_G}, "Sync requests"'
FEDERATION = f'{_G}, "Federation requests"'
INBOUND = f'{_G}, "Inbound federation transaction request": ^/_matrix/federation/v1/send/'
CLIENT = f'{_G}, "Client API requests"'
ADMIN = f'{_G}, "Admin API requests": ^/_synapse/admin/v1/rooms/[^/]+$'
E2E = f'{_G}, "Encryption requests"'
LOGIN = f'{_G}, "Registration/login requests"'
SENDING = f'{_G}, "Event sending requests"'
USER_DIR = (
    f'{_G}, "User directory search requests" and "Updating the User Directory": '
    "^/_matrix/client/(r0|v3|unstable)/user_directory/search$"
)
MSC4140 = (
    f'{_G}, "Unstable MSC4140 support": '
    "^/_matrix/client/unstable/org.matrix.msc4140/delayed_events(/.*/restart)?$"
)
GET_ONLY = f'{_G}, "can be handled for GET requests"'
PAGINATION = f'{_G}, "Pagination requests": ^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/messages$'
SSO = f'{_G}, SSO endpoints ("Ensure that all SSO logins go to a single process")'
DEVICE_LISTS = '"The `device_lists` stream" ("can be handled by any worker") and ' + f"{_G}"
RECEIPTS = '"The `receipts` stream" ("can be handled by any worker")'
TYPING = '"The `typing` stream": ^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/typing'
TO_DEVICE = '"The `to_device` stream": ^/_matrix/client/(r0|v3|unstable)/sendToDevice/'
ACCOUNT_DATA = '"The `account_data` stream"'
PRESENCE = '"The `presence` stream": ^/_matrix/client/(api/v1|r0|v3|unstable)/presence/'
PUSH_RULES = '"The `push_rules` stream": ^/_matrix/client/(api/v1|r0|v3|unstable)/pushrules/'
MEDIA_REPO = '"synapse.app.media_repository" (enable_media_repo: False stops main serving it)'
QUARANTINE = MEDIA_REPO + ' and "The `quarantined_media_changes` stream"'
UNLISTED = "listed for no worker"
REPLICATION = '"Shared configuration": the replication listener must never be exposed'


# The docs' groups whose room-ID requests seed002's room workers take.
ROOM_WORKER_GROUPS = frozenset({"synchrotron", "federation_reader", "event_creator", "client_reader"})
INITIAL_SYNC = (
    '"Load balancing": requests without a `since` (and /initialSync) are "initial sync", '
    '"very resource intensive"'
)


def _room(path):
    """The room a request path names: one of the constants it is built from."""
    uri = normalise_uri(path)
    for room in (ROOM, ROOM_V12, unquote(ALIAS)):
        if f"/{room}/" in f"{uri}/":
            return room
    return None


def _room_workers(types, path, prefer):
    """Types and pools of a sample once room workers may take it (seed002's rule)."""
    room = _room(path)
    uri = normalise_uri(path)
    if (
        room is not None
        and room.startswith("!")
        and uri.startswith(("/_matrix/client/", "/_matrix/federation/"))
        and types & ROOM_WORKER_GROUPS
    ):
        return types | {"room_worker"}, ("room_worker", *prefer)
    return types, prefer


def _rows(main, types, doc, *requests, prefer=()):
    """Samples of one docs group: ``types`` space-separated, requests (method, path)."""
    samples = []
    for method, path in requests:
        row_types, row_prefer = _room_workers(frozenset(types.split()), path, tuple(prefer))
        samples.append(Sample(method, path, row_types, main, doc, row_prefer, _room(path)))
    return samples


def _doc(group, regex):
    return f"{group}: {regex}"


SAMPLES = [
    # --- synchrotron ------------------------------------------------------------
    *_rows(
        MAIN_FALLBACK,
        "synchrotron",
        _doc(SYNC, "^/_matrix/client/(r0|v3)/sync$"),
        ("GET", f"{C}/sync?since=s72594_4483_1934&timeout=30000"),
        ("GET", f"{C}/sync?timeout=30000&since=s72594_4483_1934&full_state=true"),
    ),
    # Initial syncs: no `since`, or `since` empty (nginx's $arg_since is then
    # empty too).
    *_rows(
        MAIN_FALLBACK,
        "synchrotron initial_synchrotron",
        _doc(SYNC, "^/_matrix/client/(r0|v3)/sync$") + "; " + INITIAL_SYNC,
        ("GET", "/_matrix/client/r0/sync?filter=0"),
        # nginx merges the slashes before it matches a location.
        ("GET", "/_matrix/client/v3//sync"),
        ("GET", f"{C}/sync?timeout=0&set_presence=offline&since="),
        prefer=("initial_synchrotron",),
    ),
    *_rows(
        MAIN_FALLBACK,
        "synchrotron",
        _doc(SYNC, "^/_matrix/client/(api/v1|r0|v3)/events$"),
        ("GET", f"{C}/events?from=s72594_4483_1934&timeout=30000"),
        ("GET", f"{C}/events?timeout=0"),
    ),
    *_rows(
        MAIN_FALLBACK,
        "synchrotron initial_synchrotron",
        _doc(SYNC, "^/_matrix/client/(api/v1|r0|v3)/initialSync$") + "; " + INITIAL_SYNC,
        ("GET", f"{C}/initialSync?limit=10"),
        prefer=("initial_synchrotron",),
    ),
    *_rows(
        MAIN_FALLBACK,
        "synchrotron initial_synchrotron",
        _doc(SYNC, "^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$") + "; " + INITIAL_SYNC,
        ("GET", f"{C}/rooms/{ROOM}/initialSync"),
        ("GET", f"/_matrix/client/r0/rooms/{ALIAS}/initialSync"),
        prefer=("initial_synchrotron",),
    ),
    # --- federation_reader --------------------------------------------------------
    *_rows(
        MAIN_FALLBACK,
        "federation_reader",
        FEDERATION,
        ("GET", f"{F}/version"),
        ("GET", f"{F}/event/{EVENT}"),
        ("GET", f"{F}/state/{ROOM}?event_id={EVENT}"),
        ("GET", f"{F}/state_ids/{ROOM}?event_id={EVENT}"),
        ("GET", f"{F}/state_ids/{ROOM_ENCODED}?event_id=%24other"),
        ("GET", f"{F}/backfill/{ROOM}?v={EVENT}&limit=10"),
        ("GET", f"{F}/backfill/{ROOM_V12}?v={EVENT}&limit=10"),
        ("POST", f"{F}/get_missing_events/{ROOM}"),
        ("GET", f"{F}/publicRooms?limit=10"),
        ("POST", f"{F}/publicRooms"),
        ("GET", f"{F}/query/profile?user_id={USER}&field=displayname"),
        ("GET", f"{F}/make_join/{ROOM}/{REMOTE_USER}?ver=10&ver=11"),
        ("PUT", f"/_matrix/federation/v2/send_join/{ROOM}/{EVENT}"),
        ("GET", f"{F}/make_leave/{ROOM}/{REMOTE_USER}"),
        ("PUT", f"/_matrix/federation/v2/send_leave/{ROOM}/{EVENT}"),
        ("GET", f"{F}/make_knock/{ROOM}/{REMOTE_USER}?ver=10"),
        ("PUT", f"{F}/send_knock/{ROOM}/{EVENT}"),
        ("PUT", f"/_matrix/federation/v2/invite/{ROOM}/{EVENT}"),
        ("GET", f"{F}/event_auth/{ROOM}/{EVENT}"),
        ("GET", f"{F}/timestamp_to_event/{ROOM}?dir=b&ts=1700000000000"),
        ("PUT", f"{F}/exchange_third_party_invite/{ROOM}"),
        ("GET", f"{F}/user/devices/{USER}"),
        ("POST", "/_matrix/key/v2/query"),
        ("GET", f"{F}/hierarchy/{ROOM}?suggested_only=false"),
    ),
    # --- federation_inbound ---------------------------------------------------------
    *_rows(MAIN_FALLBACK, "federation_inbound", INBOUND, ("PUT", f"{F}/send/1700000000000")),
    # --- client_reader ----------------------------------------------------------------
    *_rows(
        MAIN_FALLBACK,
        "client_reader",
        CLIENT,
        ("POST", f"{C}/createRoom"),
        ("GET", f"{C}/publicRooms?limit=20"),
        ("GET", f"{C}/rooms/{ROOM}/joined_members"),
        ("GET", f"{C}/rooms/{ROOM}/context/{EVENT}?limit=10"),
        ("GET", f"{C}/rooms/{ROOM}/members?membership=join"),
        ("GET", f"{C}/rooms/{ROOM_V12}/members"),
        ("GET", f"{C}/rooms/{ROOM}/state"),
        ("GET", f"/_matrix/client/v1/rooms/{ROOM}/hierarchy"),
        ("GET", f"/_matrix/client/v1/rooms/{ROOM}/relations/{EVENT}/m.thread"),
        ("GET", f"/_matrix/client/v1/rooms/{ROOM}/threads?include=all"),
        ("GET", f"/_matrix/client/unstable/im.nheko.summary/summary/{ALIAS}"),
        ("GET", f"/_matrix/client/v1/room_summary/{ROOM}"),
        ("GET", f"{C}/account/3pid"),
        ("GET", f"{C}/account/whoami"),
        ("POST", f"{C}/account/deactivate"),
        ("GET", "/_matrix/client/versions"),
        ("GET", f"{C}/voip/turnServer"),
        ("GET", f"{C}/rooms/{ROOM}/event/{EVENT}"),
        ("GET", f"{C}/joined_rooms"),
        ("GET", f"/_matrix/client/v1/rooms/{ROOM}/timestamp_to_event?ts=1700000000000&dir=f"),
        ("GET", f"{C}/rooms/{ROOM}/aliases"),
        ("POST", f"{C}/search"),
        ("POST", f"{C}/user/{USER}/filter"),
        ("GET", f"{C}/user/{USER}/filter/1"),
        ("GET", f"{C}/directory/room/{ALIAS}"),
        ("GET", f"{C}/capabilities"),
        ("GET", f"{C}/notifications?limit=10"),
    ),
    *_rows(MAIN_FALLBACK, "client_reader", ADMIN, ("GET", f"{A}/rooms/{ROOM}")),
    *_rows(
        MAIN_FALLBACK,
        "client_reader",
        E2E,
        ("POST", f"{C}/keys/query"),
        ("GET", f"{C}/keys/changes?from=s1&to=s2"),
        ("POST", f"{C}/keys/claim"),
        ("GET", f"{C}/room_keys/version"),
        ("GET", f"{C}/room_keys/keys/{ROOM}?version=1"),
        ("PUT", f"{C}/room_keys/keys?version=1"),
    ),
    *_rows(
        MAIN_FALLBACK,
        "client_reader",
        LOGIN,
        ("GET", f"{C}/login"),
        ("POST", f"{C}/login"),
        ("POST", f"{C}/register"),
        ("GET", f"{C}/register/available?username=alice"),
        ("GET", "/_matrix/client/v1/register/m.login.registration_token/validity?token=abcd"),
        ("GET", f"{C}/password_policy"),
    ),
    *_rows(
        MAIN_FALLBACK,
        "client_reader",
        PAGINATION,
        ("GET", f"{C}/rooms/{ROOM}/messages?dir=b&limit=20"),
        ("GET", f"{C}/rooms/{ROOM_ENCODED}/messages?dir=f"),
    ),
    *_rows(
        MAIN_FALLBACK,
        "client_reader",
        MSC4140,
        ("GET", DELAYED),
        ("POST", f"{DELAYED}/syd_wlGAStYmBRRdjyCndOnD/restart"),
    ),
    # --- device lists: any worker, best its writer ------------------------------------
    *_rows(
        MAIN_FALLBACK,
        "device_lists client_reader",
        DEVICE_LISTS,
        ("POST", f"{C}/delete_devices"),
        ("GET", f"{C}/devices"),
        ("PUT", f"{C}/devices/QBUAZIFURK"),
        ("DELETE", f"{C}/devices/QBUAZIFURK"),
        ("POST", f"{C}/keys/upload"),
        ("POST", f"{C}/keys/device_signing/upload"),
        ("POST", f"{C}/keys/signatures/upload"),
    ),
    # --- event_creator ------------------------------------------------------------------
    *_rows(
        MAIN_FALLBACK,
        "event_creator",
        SENDING,
        ("PUT", f"{C}/rooms/{ROOM}/send/m.room.message/m1700000000000.0"),
        ("PUT", f"{C}/rooms/{ROOM_ENCODED}/send/m.room.message/m1700000000000.3"),
        ("PUT", f"{C}/rooms/{ROOM_V12}/send/m.room.message/m1700000000000.4"),
        ("PUT", f"{C}/rooms/{ROOM}/redact/{EVENT}/m1700000000000.1"),
        ("PUT", f"{C}/rooms/{ROOM}/state/m.room.name"),
        ("PUT", f"{C}/rooms/{ROOM}/state/m.room.member/{USER}"),
        ("GET", f"{C}/rooms/{ROOM}/state/m.room.power_levels/"),
        ("POST", f"{C}/rooms/{ROOM}/join"),
        ("POST", f"{C}/rooms/{ROOM}/invite"),
        ("POST", f"{C}/rooms/{ROOM}/leave"),
        ("POST", f"{C}/rooms/{ROOM}/kick"),
        ("POST", f"{C}/join/{ALIAS}?server_name=example.org"),
        ("POST", f"{C}/join/{ROOM_ENCODED}?server_name=example.org"),
        ("POST", f"{C}/knock/{ROOM}"),
        ("GET", f"{C}/profile/{USER}"),
        ("PUT", f"{C}/profile/{USER}/displayname"),
    ),
    # --- user directory -------------------------------------------------------------------
    *_rows(MAIN_FALLBACK, "user_dir client_reader", USER_DIR, ("POST", f"{C}/user_directory/search")),
    # --- stream writers ----------------------------------------------------------------------
    *_rows(MAIN_UNTIL_DEPLOYED, "typing", TYPING, ("PUT", f"{C}/rooms/{ROOM}/typing/{USER}")),
    *_rows(
        MAIN_UNTIL_DEPLOYED,
        "to_device",
        TO_DEVICE,
        ("PUT", f"{C}/sendToDevice/m.room.encrypted/m1700000000000.2"),
    ),
    *_rows(
        MAIN_FALLBACK,
        "receipts",
        RECEIPTS,
        ("POST", f"{C}/rooms/{ROOM}/receipt/m.read/{EVENT}"),
        ("POST", f"{C}/rooms/{ROOM}/read_markers"),
    ),
    # docs/workers.md lets any generic worker serve these reads too ("can be
    # handled for GET requests"), but a worker may not have replicated a write
    # yet: a push rule PUT on main and read back at once from a generic worker
    # answered 404, presence 500 (Synapse 1.163, the lab scenarios). Reads stay
    # with the writer, main included.
    *_rows(
        MAIN_UNTIL_DEPLOYED,
        "account_data",
        ACCOUNT_DATA,
        ("GET", f"{C}/user/{USER}/account_data/m.direct"),
        ("GET", f"{C}/user/{USER}/rooms/{ROOM}/account_data/m.fully_read"),
        ("GET", f"{C}/user/{USER}/rooms/{ROOM}/tags"),
        ("PUT", f"{C}/user/{USER}/account_data/m.direct"),
        ("PUT", f"{C}/user/{USER}/rooms/{ROOM}/account_data/org.example.custom"),
        ("PUT", f"{C}/user/{USER}/rooms/{ROOM}/tags/m.favourite"),
    ),
    *_rows(
        MAIN_UNTIL_DEPLOYED,
        "presence",
        PRESENCE,
        ("GET", f"{C}/presence/{USER}/status"),
        ("PUT", f"{C}/presence/{USER}/status"),
    ),
    *_rows(
        MAIN_UNTIL_DEPLOYED,
        "push_rules",
        PUSH_RULES,
        ("GET", f"{C}/pushrules/"),
        ("GET", f"{C}/pushrules/global/override/.m.rule.master/enabled"),
        ("PUT", f"{C}/pushrules/global/override/org.example.rule"),
        ("PUT", f"{C}/pushrules/global/override/.m.rule.master/enabled"),
    ),
    # The admin user is written by main alone (UserRestServletV2); its reads
    # stay there for the same reason.
    *_rows(
        MAIN_ALSO,
        "client_reader",
        _doc(GET_ONLY, "^/_synapse/admin/v2/users/[^/]+$"),
        ("GET", f"/_synapse/admin/v2/users/{USER}"),
    ),
    # --- media_repository ---------------------------------------------------------------------
    *_rows(
        MAIN_UNTIL_DEPLOYED,
        "media_repository",
        _doc(MEDIA_REPO, "/_matrix/media/"),
        ("GET", f"/_matrix/media/v3/download/{MEDIA}"),
        ("GET", f"/_matrix/media/v3/thumbnail/{MEDIA}?width=32&height=32&method=crop"),
        ("POST", "/_matrix/media/v3/upload?filename=cat.png"),
        ("POST", "/_matrix/media/v1/create"),
        ("GET", "/_matrix/media/v3/config"),
        ("GET", "/_matrix/media/v3/preview_url?url=https%3A%2F%2Fexample.com%2F"),
    ),
    *_rows(
        MAIN_UNTIL_DEPLOYED,
        "media_repository",
        _doc(MEDIA_REPO, "/_matrix/client/v1/media/"),
        ("GET", f"/_matrix/client/v1/media/download/{MEDIA}"),
        ("GET", f"/_matrix/client/v1/media/thumbnail/{MEDIA}?width=32&height=32"),
        ("GET", "/_matrix/client/v1/media/config"),
    ),
    *_rows(
        MAIN_UNTIL_DEPLOYED,
        "media_repository",
        _doc(MEDIA_REPO, "/_matrix/federation/v1/media/"),
        ("GET", f"{F}/media/download/GCmhgzMPRjqgpODLsNQzVuHZ"),
        ("GET", f"{F}/media/thumbnail/GCmhgzMPRjqgpODLsNQzVuHZ?width=32&height=32"),
    ),
    *_rows(
        MAIN_UNTIL_DEPLOYED,
        "media_repository",
        _doc(MEDIA_REPO, "media administration APIs"),
        ("POST", f"{A}/purge_media_cache?before_ts=1700000000000"),
        ("GET", f"{A}/room/{ROOM}/media"),
        ("POST", f"{A}/user/{USER}/media/quarantine"),
        ("GET", f"{A}/users/{USER}/media"),
        ("GET", f"{A}/media/{MEDIA}"),
        ("POST", f"{A}/media/delete?before_ts=1700000000000"),
        ("POST", f"{A}/media/quarantine/{MEDIA}"),
    ),
    *_rows(
        MAIN_UNTIL_DEPLOYED,
        "media_repository",
        _doc(QUARANTINE, "^/_synapse/admin/v1/quarantine_media/.*$"),
        ("POST", f"{A}/quarantine_media/{ROOM}"),
    ),
    # --- SSO: one process, main or a worker -------------------------------------------------
    *_rows(
        MAIN_ALSO,
        "client_reader",
        SSO,
        ("GET", f"{C}/login/sso/redirect?redirectUrl=https%3A%2F%2Fapp.example%2F"),
        ("GET", "/_synapse/client/pick_idp?redirectUrl=https%3A%2F%2Fapp.example%2F"),
        ("GET", "/_synapse/client/pick_username/account_details"),
        ("POST", "/_synapse/client/new_user_consent"),
        ("GET", "/_synapse/client/sso_register"),
        ("GET", "/_synapse/client/oidc/callback?code=c&state=s"),
        ("POST", "/_synapse/client/saml2/authn_response"),
        ("GET", f"{C}/login/cas/ticket?redirectUrl=https%3A%2F%2Fapp.example%2F&ticket=t"),
    ),
    # --- main only: listed for no worker -------------------------------------------------------
    *_rows(
        MAIN_ONLY,
        "",
        UNLISTED,
        ("POST", f"{C}/logout"),
        ("POST", f"{C}/refresh"),
        ("POST", f"{C}/account/password"),
        ("POST", f"{C}/account/3pid/add"),
        ("GET", f"{C}/pushers"),
        ("POST", f"{C}/user/{USER}/openid/request_token"),
        ("POST", f"{C}/rooms/{ROOM}/forget"),
        ("POST", f"{C}/rooms/{ROOM}/report/{EVENT}"),
        ("GET", f"{C}/directory/list/room/{ROOM}"),
        ("GET", f"{C}/admin/whois/{USER}"),
        ("GET", f"{C}/auth/m.login.recaptcha/fallback/web?session=abc"),
        ("POST", f"{DELAYED}/syd_wlGAStYmBRRdjyCndOnD/cancel"),
        ("POST", f"{F}/user/keys/query"),
        ("GET", f"{F}/openid/userinfo?access_token=abc"),
        ("GET", "/_matrix/key/v2/server"),
        ("GET", f"{A}/server_version"),
        ("GET", "/_synapse/admin/v2/users?from=0&limit=10"),
        ("PUT", f"/_synapse/admin/v2/users/{USER}"),
    ),
    # --- never forwarded ----------------------------------------------------------------------
    *_rows(
        NEVER_FORWARDED,
        "",
        REPLICATION,
        ("POST", f"/_synapse/replication/send_event/{EVENT}/txn1"),
        # nginx decodes and merges the path before it matches: no way round.
        ("GET", "/_synapse/%72eplication/get_repl_stream_updates/events"),
        ("GET", "//_synapse//replication/presence_set_state/@alice:example.org"),
    ),
]

# Requests the docs' regexes cannot tell apart: a transaction ID or state key
# is the client's to choose, and one spelled like the last segment of another
# endpoint (typing, tags, receipt, messages) matches that endpoint's regex,
# which the docs leave open at the end. A worker reached that way still has
# the client resource and serves the request (generic workers register the
# event-sending servlets, synapse/rest/client/room.py); it only misses the
# event_creator upstream and its room-sticky balancing. Kept apart from SAMPLES.
CHOSEN_SEGMENT_SAMPLES = [
    *_rows(
        MAIN_FALLBACK,
        "event_creator",
        _doc(SENDING, "^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/send"),
        ("PUT", f"{C}/rooms/{ROOM}/send/m.room.message/typing"),
        ("PUT", f"{C}/rooms/{ROOM}/send/m.room.message/tags"),
        ("PUT", f"{C}/rooms/{ROOM}/send/m.room.message/receipt"),
    ),
    *_rows(
        MAIN_FALLBACK,
        "event_creator",
        _doc(SENDING, "^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state/"),
        ("PUT", f"{C}/rooms/{ROOM}/state/org.example.status/typing"),
        ("PUT", f"{C}/rooms/{ROOM}/state/org.example.status/messages"),
    ),
]
