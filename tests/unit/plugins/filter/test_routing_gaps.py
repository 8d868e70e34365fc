"""Requests, with their methods, sent through the routes the filter derives.

Three ways of asking where a request lands, each judged against Synapse 1.163:

* the nginx part of the topology, read the way nginx reads it (first matching
  regex location; a method-limited route asks its ``$request_method`` map);
* Synapse's own servlet registrations, recorded from the installed Synapse for
  the main process and for a generic worker: no request may reach a worker
  that does not register its method for its path while main does;
* nginx itself, running the rendered site: the access log names the upstream
  that every request went to.

Each check is also shown to catch a route broken on purpose.
"""

from __future__ import annotations

import dataclasses
import http.client
import importlib.util
import itertools
import re
import socket
import ssl
import subprocess
import time
import warnings
from unittest.mock import MagicMock
from urllib.parse import unquote

import pytest

from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_catalogue import (
    MAIN_WRITER,
    STREAMS_MAIN_ALSO_WRITES,
    WORKER_TYPES,
)
from conftest import ROOT

try:
    import re._constants as sre_constants
    import re._parser as sre_parse
except ImportError:  # Python < 3.11
    import sre_constants
    import sre_parse

# Importing Synapse's servlets warns about Twisted and jsonschema deprecations.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ONE_HOST = {"main_host": "app1", "hosts": {"app1": "127.0.0.1"}}
# One worker of every type, all on one host (UNIX sockets): the pools (initial
# synchrotron, room workers) take their share of the others' requests.
EVERY_TYPE = [{"name": name, "types": [name]} for name in WORKER_TYPES]

DELAYED = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events"
SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"

# (method, path, the worker type that must answer; "main" for the main process)
CASES = [
    # Simplified sliding sync (MSC4186) goes where an incremental /sync goes,
    # also without a position: its first request is no initial sync.
    ("POST", SLIDING_SYNC, "synchrotron"),
    ("POST", f"{SLIDING_SYNC}?pos=4", "synchrotron"),
    ("GET", "/_matrix/client/v3/sync?since=s1_2", "synchrotron"),
    ("GET", "/_matrix/client/v3/sync?timeout=0", "initial_synchrotron"),
    ("GET", "/_matrix/client/v3/sync", "initial_synchrotron"),
    # Delayed events: workers register GET on /{id}, main alone POST (update),
    # /cancel and /send.
    ("GET", DELAYED, "client_reader"),
    ("GET", f"{DELAYED}/syd_abc", "client_reader"),
    ("HEAD", f"{DELAYED}/syd_abc", "client_reader"),
    ("POST", f"{DELAYED}/syd_abc", "main"),
    ("PUT", f"{DELAYED}/syd_abc", "main"),
    ("DELETE", f"{DELAYED}/syd_abc", "main"),
    ("POST", f"{DELAYED}/syd_abc/restart", "client_reader"),
    ("POST", f"{DELAYED}/syd_abc/cancel", "main"),
    ("POST", f"{DELAYED}/syd_abc/send", "main"),
    # Matrix Authentication Service's API.
    ("GET", "/_synapse/mas/query_user", "client_reader"),
    ("POST", "/_synapse/mas/provision_user", "client_reader"),
    ("POST", "/_synapse/mas/upsert_device", "client_reader"),
    # Neighbours that must not move (a room's requests by its ID go to the
    # room workers, by its alias to their own type).
    ("GET", "/_matrix/client/v3/rooms/!r:example.org/messages", "room_worker"),
    ("PUT", "/_matrix/client/v3/rooms/%21r%3Aexample.org/send/m.room.message/t1", "room_worker"),
    ("GET", "/_matrix/federation/v1/state_ids/!r:example.org", "room_worker"),
    ("POST", "/_matrix/client/v3/join/%23lobby:example.org", "event_creator"),
    ("GET", "/_matrix/client/v3/directory/room/%23lobby:example.org", "client_reader"),
    ("POST", "/_matrix/client/v3/logout", "main"),
    ("GET", "/_synapse/replication/foo", "denied"),
    ("GET", "/_synapse/metrics", "denied"),
]


def topology(workers=EVERY_TYPE, **options):
    return build_topology(workers, **{**ONE_HOST, **options})


# --- the topology read the way nginx reads it ---------------------------------


def upstream_for(nginx, method, target):
    """The upstream nginx picks for a request, or "denied".

    Locations are matched against the decoded path; a limited route's map
    reads the method or a query argument (empty when missing).
    """
    path, _, query = target.partition("?")
    path = unquote(path)
    if any(re.search(pattern, path) for pattern in nginx["denied_patterns"]):
        return "denied"
    for route in nginx["routes"]:
        if not re.search(route["pattern"], path):
            continue
        if not route["upstream_variable"]:
            return route["upstream"]
        (chooser,) = [m for m in nginx["maps"] if m["variable"] == route["upstream_variable"]]
        if chooser["source"] == "$request_method":
            value = method
        else:
            assert chooser["source"].startswith("$arg_")
            arguments = [a.partition("=") for a in query.split("&")]
            value = next((v for k, _, v in arguments if k == chooser["source"][len("$arg_"):]), "")
        cases = {case["pattern"]: case["value"] for case in chooser["cases"]}
        return cases.get(value, chooser["default"])
    return nginx["default_upstream"]


def served_by(nginx, upstream):
    """The worker type behind an upstream ("main", "denied" for the others)."""
    if upstream == nginx["default_upstream"]:
        return "main"
    if upstream == "denied":
        return "denied"
    (worker_type,) = {r["worker_type"] for r in nginx["routes"] if r["upstream"] == upstream}
    return worker_type


def misrouted(nginx, cases=CASES):
    """(method, path, expected type, type reached) of every case that goes astray."""
    return [
        (method, path, expected, served_by(nginx, upstream_for(nginx, method, path)))
        for method, path, expected in cases
        if served_by(nginx, upstream_for(nginx, method, path)) != expected
    ]


def test_requests_reach_the_process_that_serves_them():
    assert misrouted(topology()["nginx"]) == []


def test_sliding_sync_is_sticky_like_sync():
    nginx = topology([{"name": "sync", "types": ["synchrotron"], "count": 2}])["nginx"]
    sliding = upstream_for(nginx, "POST", SLIDING_SYNC)
    assert sliding == upstream_for(nginx, "GET", "/_matrix/client/v3/sync") == "synapse_synchrotron"
    assert nginx["upstreams"][sliding]["balance"] == "user"
    assert nginx["upstreams"][sliding]["hash_key"] == "$synapse_balance_user"


def test_method_limited_route_and_its_map():
    nginx = topology()["nginx"]
    limited = [r for r in nginx["routes"] if r["methods"]]
    # With every stream writer running, the writers' routes take their
    # endpoints for every method; limited stay the paths whose other methods
    # main alone serves.
    assert [r["pattern"] for r in limited] == [f"^{DELAYED}/[^/]+$"]
    for route in limited:
        assert route["methods"] == ["GET", "HEAD"] and route["upstream"] == "synapse_client_reader"
        assert route["upstream_variable"] == "$synapse_client_reader_for_get_head"
    (chooser,) = [m for m in nginx["maps"] if m["variable"] == "$synapse_client_reader_for_get_head"]
    assert chooser == {
        "source": "$request_method",
        "variable": "$synapse_client_reader_for_get_head",
        "default": "synapse_main",
        "cases": [
            {"pattern": "GET", "value": "synapse_client_reader"},
            {"pattern": "HEAD", "value": "synapse_client_reader"},
        ],
    }
    # The other limited route: initial syncs, by their missing `since`.
    (since,) = [r for r in nginx["routes"] if r["upstream_variable"] and r not in limited]
    assert since["without_arg"] == "since" and since["upstream"] == "synapse_initial_synchrotron"
    assert all(r["methods"] == [] and r["upstream_variable"] is None for r in nginx["routes"] if r not in [*limited, since])
    # Without a client_reader the path is main's, and so is its map.
    alone = topology([{"name": "sync", "types": ["synchrotron"]}])["nginx"]
    assert all(m["source"] != "$request_method" for m in alone["maps"])
    assert upstream_for(alone, "GET", f"{DELAYED}/syd_abc") == "synapse_main"


def test_a_route_broken_on_purpose_is_caught():
    nginx = topology()["nginx"]
    # The delayed-event route forgets its methods: POST reaches a worker.
    for route in nginx["routes"]:
        if route["methods"]:
            route["methods"], route["upstream_variable"] = [], None
    assert misrouted(nginx) == [("POST", f"{DELAYED}/syd_abc", "main", "client_reader"),
                                ("PUT", f"{DELAYED}/syd_abc", "main", "client_reader"),
                                ("DELETE", f"{DELAYED}/syd_abc", "main", "client_reader")]
    # Sliding sync loses its route: it falls to main.
    nginx = topology()["nginx"]
    nginx["routes"] = [r for r in nginx["routes"] if "simplified_msc3575" not in r["pattern"]]
    assert misrouted(nginx) == [("POST", SLIDING_SYNC, "synchrotron", "main"),
                                ("POST", f"{SLIDING_SYNC}?pos=4", "synchrotron", "main")]
    # The initial-sync map sends every /sync to the initial synchrotron.
    nginx = topology()["nginx"]
    for chooser in nginx["maps"]:
        if chooser["source"] == "$arg_since":
            chooser["default"] = chooser["cases"][0]["value"]
    assert misrouted(nginx) == [("GET", "/_matrix/client/v3/sync?since=s1_2", "synchrotron", "initial_synchrotron")]


# --- quarantined media changes: main stays a writer ---------------------------


def test_main_writes_quarantined_media_changes_beside_the_media_workers():
    assert STREAMS_MAIN_ALSO_WRITES == {"quarantined_media_changes"}
    shared = topology([{"name": "media", "types": ["media_repository"], "count": 2}])["shared_config"]
    assert shared["stream_writers"]["quarantined_media_changes"] == ["media1", "media2", MAIN_WRITER]
    assert MAIN_WRITER == "master" and MAIN_WRITER not in shared["instance_map"]
    # Without media workers Synapse's default (main alone) stays in force.
    shared = topology([{"name": "typing", "types": ["typing"]}])["shared_config"]
    assert "quarantined_media_changes" not in shared["stream_writers"]


# --- Synapse's own registrations ------------------------------------------------


class _Recorder:
    """Stands in for Synapse's HTTP server and keeps what servlets register."""

    def __init__(self):
        self.rows = []

    def register_paths(self, method, patterns, callback, servlet_classname):
        self.rows.extend((method, p.pattern, servlet_classname) for p in patterns)


def _homeserver(worker_app):
    hs = MagicMock()
    hs.hostname = "example.org"
    hs.config.worker.worker_app = worker_app
    hs.config.mas.enabled = False
    hs.config.media.can_load_media_repo = True
    hs.config.registration.refreshable_access_token_lifetime = 300
    for sso in ("cas", "saml2", "oidc"):
        setattr(getattr(hs.config, sso), f"{sso}_enabled", False)
    return hs


def _registrations(worker_app):
    """{listener resource: [(method, regex, servlet)]} as Synapse builds them."""
    from synapse.federation.transport.server import register_servlets as federation
    from synapse.rest import SERVLET_GROUPS, ClientRestResource, admin
    from synapse.rest.client import media

    SERVLET_GROUPS["media"] = (media.register_servlets,)
    hs = _homeserver(worker_app)

    def record(register, *args):
        recorder = _Recorder()
        register(recorder, *args)
        return recorder.rows

    def client(groups):
        return record(lambda r: ClientRestResource.register_servlets(r, hs, groups))

    def fed(groups):
        return record(lambda r: federation(hs, r, MagicMock(), MagicMock(), groups))

    admin_rows = record(lambda r: admin.register_servlets(hs, r))
    # synapse/app/generic_worker.py: what each listener resource mounts.
    return {
        "client": client(["client"]) + admin_rows,
        "federation": fed(None),
        "media": client(["media"]) + fed(["media"]) + record(lambda r: admin.register_servlets_for_media_repo(hs, r)),
    }


@pytest.fixture(scope="module")
def synapse_servlets():
    main = _registrations(None)
    return {
        "main": main["client"] + main["federation"] + main["media"],
        "worker": _registrations("synapse.app.generic_worker"),
    }


# Servlet path parameters that name a room: sampled as an alias-like segment
# and as a room ID, which only the room workers' routes ask for.
ROOM_PARAMETERS = ("room_id", "room_identifier")


def sample_paths(pattern, cap=64):
    """Paths a servlet regex matches: every alternative, each repeat once, a room ID for a room."""
    parsed = sre_parse.parse(pattern)
    names = {number: name for name, number in parsed.state.groupdict.items()}

    def sequence(items):
        paths = [""]
        for op, av in items:
            paths = [a + b for a in paths for b in item(op, av)][:cap]
        return paths

    def item(op, av):
        if op is sre_constants.LITERAL:
            return [chr(av)]
        if op is sre_constants.IN and av[0][0] is sre_constants.LITERAL:
            return [chr(av[0][1])]
        if op is sre_constants.IN and av[0][0] is sre_constants.RANGE:
            return [chr(av[0][1][0])]
        if op in (sre_constants.NOT_LITERAL, sre_constants.ANY, sre_constants.IN, sre_constants.CATEGORY):
            return ["a"]
        if op is sre_constants.AT:
            return [""]
        if op is sre_constants.SUBPATTERN:
            if names.get(av[0]) in ROOM_PARAMETERS:
                return [*sequence(av[-1]), "!r:example.org"]
            return sequence(av[-1])
        if op is sre_constants.BRANCH:
            return [p for branch in av[1] for p in sequence(branch)][:cap]
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
            low, high, inner = av
            once = ["".join(c) for c in itertools.islice(itertools.product(sequence(inner), repeat=max(low, 1)), cap)]
            return ([""] if low == 0 and high == 1 else []) + once
        raise NotImplementedError(op)

    return [p for p in sequence(parsed) if re.search(pattern, p)]


def workers_lacking_methods(nginx, servlets):
    """(method, servlet, worker type, path) where main serves a request routed to a worker that does not."""
    found = {}
    for method, pattern, servlet in servlets["main"]:
        for path in sample_paths(pattern):
            worker_type = served_by(nginx, upstream_for(nginx, method, path))
            if worker_type in ("main", "denied"):
                continue
            served = any(
                m == method and re.search(p, path)
                for resource in WORKER_TYPES[worker_type].resources
                for m, p, _ in servlets["worker"][resource]
            )
            if not served:
                found.setdefault((method, servlet, worker_type), path)
    return sorted((*key, path) for key, path in found.items())


def test_no_request_reaches_a_worker_without_its_method(synapse_servlets):
    worker_client = {(m, s) for m, _, s in synapse_servlets["worker"]["client"]}
    main_servlets = {(m, s) for m, _, s in synapse_servlets["main"]}
    # The recording sees what synapse/rest/client/delayed_events.py says.
    assert ("POST", "UpdateDelayedEventServlet") in main_servlets - worker_client
    assert {("GET", "DelayedEventServlet"), ("POST", "RestartDelayedEventServlet"),
            ("POST", "SlidingSyncRestServlet")} <= worker_client
    assert workers_lacking_methods(topology()["nginx"], synapse_servlets) == []
    # With no writer worker, nothing a client_reader is sent lacks its method.
    reader_only = [{"name": "reader", "types": ["client_reader"]}]
    assert workers_lacking_methods(topology(reader_only)["nginx"], synapse_servlets) == []
    # Nor anything the pools alone are sent (no stream writer, no other type).
    for pool in ("room_worker", "initial_synchrotron"):
        alone = topology([{"name": "pool", "types": [pool], "count": 2}])["nginx"]
        assert workers_lacking_methods(alone, synapse_servlets) == []
    for preset in ("seed001", "seed002"):
        nginx = build_topology(None, preset=preset, **ONE_HOST)["nginx"]
        assert workers_lacking_methods(nginx, synapse_servlets) == []


def test_room_ids_are_sampled_for_the_room_workers(synapse_servlets):
    # The servlets' room parameters are sampled as room IDs too, so the room
    # workers' routes are put to Synapse's registrations.
    nginx = topology([{"name": "rooms", "types": ["room_worker"]}])["nginx"]
    reached = {
        (method, servlet)
        for method, pattern, servlet in synapse_servlets["main"]
        for path in sample_paths(pattern)
        if upstream_for(nginx, method, path) == "synapse_room_worker"
    }
    assert {
        ("GET", "RoomMessageListRestServlet"),
        ("PUT", "RoomSendEventRestServlet"),
        ("POST", "JoinRoomAliasServlet"),
        ("GET", "RoomKeysServlet"),
        ("GET", "FederationStateIdsServlet"),
        ("PUT", "FederationV2SendJoinServlet"),
    } <= reached
    # Never what main alone serves for a room.
    assert not {s for _, s in reached} & {"RoomForgetRestServlet", "RoomUpgradeRestServlet", "ReportEventRestServlet"}


def test_a_room_worker_route_over_a_path_main_alone_serves_is_caught(synapse_servlets, monkeypatch):
    rooms = WORKER_TYPES["room_worker"]
    (group,) = rooms.endpoints
    greedy = dataclasses.replace(group, patterns=(*group.patterns, "^/_matrix/client/v3/rooms/![^/]+/"))
    monkeypatch.setitem(WORKER_TYPES, "room_worker", dataclasses.replace(rooms, endpoints=(greedy,)))
    nginx = topology([{"name": "rooms", "types": ["room_worker"]}])["nginx"]
    lacking = {(method, servlet) for method, servlet, _, _ in workers_lacking_methods(nginx, synapse_servlets)}
    assert {("POST", "RoomForgetRestServlet"), ("POST", "RoomUpgradeRestServlet")} <= lacking


def test_a_worker_without_the_method_is_caught(synapse_servlets, monkeypatch):
    reader = WORKER_TYPES["client_reader"]
    unlimited = tuple(dataclasses.replace(g, methods=()) for g in reader.endpoints)
    monkeypatch.setitem(WORKER_TYPES, "client_reader", dataclasses.replace(reader, endpoints=unlimited))
    assert workers_lacking_methods(topology()["nginx"], synapse_servlets) == [
        ("POST", "UpdateDelayedEventServlet", "client_reader", f"{DELAYED}/a"),
    ]


# --- nginx itself -----------------------------------------------------------------


def _nginx_template_tests():
    """The template tests' renderer and scratch nginx layout."""
    spec = importlib.util.spec_from_file_location(
        "polylith_nginx_template_tests", ROOT / "tests" / "unit" / "roles" / "test_nginx_template.py"
    )
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        # Its module runs init_plugin_loader() again.
        warnings.simplefilter("ignore", UserWarning)
        spec.loader.exec_module(module)
    return module


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _serve(tmp_path, topo, requests, **overrides):
    """Serve the rendered site with nginx on loopback: (status, logged upstream) of each request."""
    site_tests = _nginx_template_tests()
    assert site_tests.NGINX is not None, "nginx is not installed: tests/run installs nginx-light"
    port = _free_port()
    site = tmp_path / "matrix-synapse.conf"
    site.write_text(site_tests.render_for_nginx(
        tmp_path, topo, nginx_https_port=port, nginx_federation_port=0,
        nginx_http_port=0, nginx_listen_ipv6=False, **overrides,
    ))
    conf = tmp_path / "nginx.conf"
    conf.write_text("daemon off;\nmaster_process off;\n" + site_tests.scratch_main_conf(tmp_path, str(site)))
    process = subprocess.Popen(
        [site_tests.NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.1)
        statuses = []
        for method, path in requests:
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
            connection.request(method, path, body=b"{}" if method in ("POST", "PUT") else None,
                               headers={"Host": "matrix.example.org"})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
            connection.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
    logged = re.findall(r'"(\S+) (\S+) HTTP/[\d.]+" .*? upstream=(\S+) ', (tmp_path / "matrix-synapse.access.log").read_text())
    # nginx logs $uri: decoded, without the query string.
    assert [(m, p) for m, p, _ in logged] == [(m, unquote(p.partition("?")[0])) for m, p in requests]
    return [(status, upstream) for status, (_, _, upstream) in zip(statuses, logged)]


def _run_nginx_and_send(tmp_path, topo, requests):
    """Serve the rendered site with nginx and return the upstream it logged for each request."""
    return [upstream for _, upstream in _serve(tmp_path, topo, requests)]


def test_nginx_sends_each_request_where_the_topology_says(tmp_path):
    topo = topology()
    nginx = topo["nginx"]
    logged = _run_nginx_and_send(tmp_path, topo, [(m, p) for m, p, _ in CASES])
    assert logged == [upstream_for(nginx, m, p) for m, p, _ in CASES]
    assert [served_by(nginx, u) for u in logged] == [expected for _, _, expected in CASES]


def test_nginx_catches_a_broken_method_map(tmp_path):
    topo = topology()
    # The map sends every method to the worker: nginx's log shows it.
    for chooser in topo["nginx"]["maps"]:
        if chooser["source"] == "$request_method":
            chooser["default"] = "synapse_client_reader"
    logged = _run_nginx_and_send(tmp_path, topo, [("POST", f"{DELAYED}/syd_abc"), ("GET", f"{DELAYED}/syd_abc")])
    assert logged == ["synapse_client_reader", "synapse_client_reader"]
    assert served_by(topology()["nginx"], logged[0]) != "main"


# --- the admin API through nginx -------------------------------------------------

# server_version asks for no access token; the media and room admin routes
# are workers' regex locations, which a `^~` prefix location would hide; the
# user lookup and update stay with main, which writes users.
ADMIN_REQUESTS = [
    ("GET", "/_synapse/admin/v1/server_version"),
    ("GET", "/_synapse/admin/v1/media/example.org/abcdefgh"),
    ("POST", "/_synapse/admin/v1/rooms/!r:example.org"),
    ("GET", "/_synapse/admin/v2/users/@alice:example.org"),
    ("PUT", "/_synapse/admin/v2/users/@alice:example.org"),
]
CLIENT_REQUEST = ("GET", "/_matrix/client/versions")
METRICS_REQUEST = ("GET", "/_synapse/metrics")


def _proxied(nginx, requests):
    """(status, upstream) of requests nginx forwards: 502, since no Synapse listens in the test."""
    return [(502, upstream_for(nginx, m, p)) for m, p in requests]


def _admin_answers(tmp_path, **overrides):
    """What nginx answers 127.0.0.1 for the admin requests; the client API and metrics must not change."""
    topo = topology()
    answers = _serve(tmp_path, topo, [*ADMIN_REQUESTS, CLIENT_REQUEST, METRICS_REQUEST], **overrides)
    assert answers[len(ADMIN_REQUESTS):] == [*_proxied(topo["nginx"], [CLIENT_REQUEST]), (404, "denied")]
    return answers[: len(ADMIN_REQUESTS)], topo["nginx"]


def test_routes_of_the_admin_api_reach_main_and_the_workers():
    nginx = topology()["nginx"]
    upstreams = [upstream_for(nginx, m, p) for m, p in ADMIN_REQUESTS]
    assert upstreams == [
        "synapse_main",
        "synapse_media_repository",
        "synapse_client_reader",
        "synapse_main",
        "synapse_main",
    ]


def test_nginx_closes_the_admin_api_by_default(tmp_path):
    answers, _ = _admin_answers(tmp_path)
    assert answers == [(404, "denied")] * len(ADMIN_REQUESTS)


def test_nginx_refuses_the_admin_api_to_a_client_not_allowed(tmp_path):
    answers, _ = _admin_answers(tmp_path, nginx_admin_api_allowed_clients=["192.0.2.0/24", "2001:db8::/64"])
    assert answers == [(403, "denied")] * len(ADMIN_REQUESTS)


def test_nginx_forwards_the_admin_api_from_an_allowed_client(tmp_path):
    answers, nginx = _admin_answers(tmp_path, nginx_admin_api_allowed_clients=["192.0.2.0/24", "127.0.0.1"])
    assert answers == _proxied(nginx, ADMIN_REQUESTS)
