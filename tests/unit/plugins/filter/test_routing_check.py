"""Concrete requests sent through each preset's nginx routes, judged by docs/workers.md.

tests/lib/routing_samples.py lists requests and the worker types Synapse's
docs let serve them, written from the docs rather than from the catalogue;
tests/lib/routing_check.py finds the location nginx picks for each and the
processes behind it. Every preset, with UNIX sockets and with nginx on a host
of its own (TCP), must send no request to a process that cannot serve it; no
request may fall to main while a running worker is listed for it; and a
client-chosen transaction ID or state key must not steer a request to another
endpoint's upstream. nginx itself, serving the rendered site, must pick the
location the checker picks for every request, and the checker is shown to
catch routes broken on purpose.
"""

from __future__ import annotations

import copy
import http.client
import re
import socket
import ssl
import subprocess
import time

import pytest

from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_catalogue import (
    WORKER_TYPES,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_presets import (
    PRESETS,
)
from lib.routing_check import (
    BROKEN,
    FORWARDED,
    MAIN_ONLY,
    MAIN_POLICIES,
    MISROUTED,
    MISSED_WORKER,
    NEVER_FORWARDED,
    NOT_STICKY,
    PASSED_OVER,
    REFUSED,
    Sample,
    check,
    hash_key,
    map_value,
    nginx_unquote,
    normalise_uri,
    processes,
    query_argument,
    resolve,
)
from lib.routing_samples import (
    CHOSEN_SEGMENT_SAMPLES,
    DELAYED,
    EVENT,
    ROOM,
    ROOM_ENCODED,
    ROOM_V12,
    SAMPLES,
    C,
    F,
)

LAYOUTS = {
    "unix": {"main_host": "app1", "hosts": {"app1": "127.0.0.1"}},
    # nginx on a host of its own: every upstream server is address:port.
    "tcp": {
        "main_host": "app1",
        "hosts": {"app1": "10.0.0.1", "edge": "10.0.0.9"},
        "proxy_hosts": ["edge"],
    },
}
HARD = (MISROUTED, REFUSED, FORWARDED, BROKEN)
ADMIN_PREFIX = "/_synapse/admin"  # __nginx_admin_api_prefix of the nginx role

SYNC = next(s for s in SAMPLES if s.path.startswith("/_matrix/client/v3/sync?"))
DOWNLOAD = next(s for s in SAMPLES if s.path.startswith("/_matrix/media/v3/download/"))


def preset(name, layout="unix"):
    return build_topology(None, preset=name, **LAYOUTS[layout])


def report(findings):
    return "\n".join(str(f) for f in findings)


def of_kind(findings, *kinds):
    return [f for f in findings if f.kind in kinds]


# --- the table ------------------------------------------------------------------


def test_the_table_is_well_formed():
    requests = [(s.method, s.path) for s in SAMPLES + CHOSEN_SEGMENT_SAMPLES]
    assert len(requests) == len(set(requests)), "a request is listed twice"
    assert 100 <= len(SAMPLES) <= 200
    for sample in SAMPLES + CHOSEN_SEGMENT_SAMPLES:
        assert sample.types <= set(WORKER_TYPES), sample
        assert sample.main in MAIN_POLICIES and sample.doc, sample
        assert sample.method in ("GET", "HEAD", "POST", "PUT", "DELETE"), sample


def test_the_table_samples_every_worker_type_that_serves_requests():
    sampled = {t for s in SAMPLES for t in s.types}
    serving = {name for name, t in WORKER_TYPES.items() if t.endpoints}
    # The docs list no endpoints of thread subscriptions (the catalogue takes
    # them from Synapse's code).
    assert sampled == serving - {"thread_subscriptions"}
    assert {s.main for s in SAMPLES} == set(MAIN_POLICIES)


def test_a_sample_contradicting_its_policy_is_refused():
    with pytest.raises(ValueError, match="contradict"):
        Sample("GET", "/x", frozenset({"synchrotron"}), MAIN_ONLY, "doc")
    with pytest.raises(ValueError, match="unknown main policy"):
        Sample("GET", "/x", frozenset({"synchrotron"}), "sometimes", "doc")


# --- every preset -----------------------------------------------------------------


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_no_request_reaches_a_process_that_cannot_serve_it(name, layout):
    findings = of_kind(check(preset(name, layout), SAMPLES), *HARD)
    assert findings == [], report(findings)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_no_request_falls_to_main_while_a_worker_may_serve_it(name):
    findings = of_kind(check(preset(name), SAMPLES), MISSED_WORKER)
    assert findings == [], report(findings)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_client_chosen_segments_do_not_steer_a_request(name):
    # A transaction ID or state key spelled like another endpoint's last segment.
    findings = check(preset(name), CHOSEN_SEGMENT_SAMPLES)
    assert findings == [], report(findings)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_closed_admin_api_is_answered_by_nginx(name):
    topo = preset(name)
    admin = [s for s in SAMPLES if s.path.startswith(ADMIN_PREFIX)]
    assert len(admin) >= 10
    for sample in admin:
        assert resolve(
            topo["nginx"], sample.method, sample.path, closed_prefixes=(ADMIN_PREFIX,)
        ).location == (f"^~ {ADMIN_PREFIX}")
    closed = check(topo, SAMPLES, closed_prefixes=(ADMIN_PREFIX,))
    assert [f for f in closed if f.sample.path.startswith(ADMIN_PREFIX)] == []
    assert closed == [f for f in check(topo, SAMPLES) if not f.sample.path.startswith(ADMIN_PREFIX)]


def test_every_upstream_server_is_a_process_of_the_topology():
    for name in PRESETS:
        for layout in LAYOUTS:
            topo = preset(name, layout)
            known = processes(topo)
            assert len(known) == 1 + len(topo["workers"])
            for upstream in topo["nginx"]["upstreams"].values():
                assert set(upstream["servers"]) <= set(known), (name, layout)


# --- nginx as the checker reads it ------------------------------------------------------


@pytest.mark.parametrize(
    "target, uri",
    [
        ("/_matrix/client/v3/sync?since=s1&timeout=30000", "/_matrix/client/v3/sync"),
        (
            "/_matrix/client/v3/directory/room/%23lobby:example.org",
            "/_matrix/client/v3/directory/room/#lobby:example.org",
        ),
        ("//_matrix///client/v3/sync", "/_matrix/client/v3/sync"),
        ("/_matrix/client/v3/./sync", "/_matrix/client/v3/sync"),
        ("/_matrix/media/v3/../../client/v3/sync", "/_matrix/client/v3/sync"),
        (
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master",
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master",
        ),
        ("/_synapse/%72eplication%2Fx", "/_synapse/replication/x"),
        ("/_matrix/client/v3/rooms/", "/_matrix/client/v3/rooms/"),
    ],
)
def test_the_uri_is_normalised_the_way_nginx_does(target, uri):
    assert normalise_uri(target) == uri


def test_a_uri_above_the_root_is_refused():
    with pytest.raises(ValueError, match="leaves the root"):
        normalise_uri("/../etc/passwd")


def test_quoted_arguments_are_unescaped_the_way_nginx_does():
    assert nginx_unquote(r"^/a\.b$") == r"^/a\.b$"
    assert nginx_unquote(r"^/a\\.b$") == r"^/a\.b$"
    assert nginx_unquote(r"\"x\"") == '"x"'
    with pytest.raises(ValueError, match="double quote"):
        nginx_unquote('a"b')


def test_maps_match_strings_ignoring_case_before_regexes():
    chooser = {
        "source": "$request_method",
        "variable": "$x",
        "default": "main",
        "cases": [
            {"pattern": "~^P", "value": "regex"},
            {"pattern": "PUT", "value": "exact"},
            {"pattern": "~*^de", "value": "nocase"},
        ],
    }
    assert map_value(chooser, "PUT") == "exact"
    assert map_value(chooser, "put") == "exact"
    assert map_value(chooser, "POST") == "regex"
    assert map_value(chooser, "DELETE") == "nocase"
    assert map_value(chooser, "GET") == "main"


def _site(*routes, denied=("^/_synapse/replication/",)):
    return {
        "upstreams": {"a": {"servers": []}, "b": {"servers": []}, "synapse_main": {"servers": []}},
        "routes": [{"pattern": p, "upstream": u, "upstream_variable": None} for p, u in routes],
        "default_upstream": "synapse_main",
        "denied_patterns": list(denied),
        "maps": [],
    }


def test_locations_are_chosen_in_nginx_order():
    site = _site(
        ("^/_matrix/client/", "a"), ("^/_matrix/client/v3/sync$", "b"), ("^/_synapse/replication/x", "b")
    )
    # The first regex in the file wins, not the longest.
    assert resolve(site, "GET", "/_matrix/client/v3/sync").upstream == "a"
    # The denied patterns come before the routes.
    assert resolve(site, "GET", "/_synapse/replication/x").answers == "denied pattern"
    # An exact location beats every regex; a ^~ prefix stops the regexes.
    assert resolve(
        site, "GET", "/_matrix/client/v3/sync", exact_locations=("/_matrix/client/v3/sync",)
    ).answers
    assert (
        resolve(site, "GET", "/_matrix/client/x", closed_prefixes=("/_matrix/",)).location == "^~ /_matrix/"
    )
    # ^~ is a plain prefix: it covers /_synapse/administrator too.
    assert resolve(site, "GET", "/_synapse/administrator", closed_prefixes=("/_synapse/admin",)).answers
    # Nothing else matches: location /.
    assert resolve(site, "GET", "/_matrix/key/v2/server") == resolve(site, "GET", "/anything")
    assert resolve(site, "GET", "/anything").upstream == "synapse_main"
    # ~ is case-sensitive.
    assert resolve(site, "GET", "/_MATRIX/client/v3/sync").upstream == "synapse_main"


def test_a_method_limited_route_asks_its_map():
    nginx = preset("one-of-each")["nginx"]
    limited = {r["pattern"]: r for r in nginx["routes"] if r["upstream_variable"]}
    for pattern, path, other in [
        (f"^{DELAYED}/[^/]+$", f"{DELAYED}/syd_abc", "POST"),
    ]:
        route = limited.pop(pattern)
        assert resolve(nginx, "GET", path).upstream == route["upstream"]
        assert resolve(nginx, "HEAD", path).upstream == route["upstream"]
        assert resolve(nginx, other, path).upstream == nginx["default_upstream"]
    assert limited == {}


# --- routes broken on purpose -------------------------------------------------------------


def _broken(name="one-of-each"):
    return copy.deepcopy(preset(name))


def test_sync_pointed_at_the_media_worker_is_caught():
    topo = _broken()
    for route in topo["nginx"]["routes"]:
        if route["worker_type"] == "synchrotron":
            route["upstream"] = "synapse_media_repository"
    findings = check(topo, SAMPLES)
    assert {f.kind for f in findings if f.sample.types == {"synchrotron"}} == {MISROUTED}
    (sync,) = [f for f in findings if f.sample == SYNC]
    assert sync.upstream == "synapse_media_repository"
    assert [p.name for p in sync.reached] == ["media_repository"]
    message = str(sync)
    assert message.startswith(
        f"misrouted: GET {SYNC.path} -> synapse_media_repository [media_repository (media_repository)]"
    )
    assert "may serve it: synchrotron" in message and "^/_matrix/client/(r0|v3)/sync$" in message


def test_an_upstream_server_of_the_wrong_process_is_caught():
    topo = _broken()
    media = next(w for w in topo["workers"] if "media_repository" in w["types"])
    topo["nginx"]["upstreams"]["synapse_synchrotron"]["servers"].append(
        media["listeners"][0]["upstream_server"]
    )
    findings = [f for f in check(topo, SAMPLES) if f.sample == SYNC]
    assert [(f.kind, [p.name for p in f.reached]) for f in findings] == [
        (MISROUTED, ["generic", "media_repository"])
    ]
    assert "media_repository has none of the types" in str(findings[0])


def test_a_missing_media_route_is_caught():
    topo = _broken()
    topo["nginx"]["routes"] = [r for r in topo["nginx"]["routes"] if r["pattern"] != "^/_matrix/media/"]
    findings = [f for f in check(topo, SAMPLES) if f.sample == DOWNLOAD]
    assert [(f.kind, f.location, f.upstream) for f in findings] == [(MISROUTED, "/", "synapse_main")]
    assert "main no longer serves it once media_repository runs" in str(findings[0])


def test_a_missing_sync_route_is_caught():
    topo = _broken()
    topo["nginx"]["routes"] = [r for r in topo["nginx"]["routes"] if r["worker_type"] != "synchrotron"]
    findings = check(topo, SAMPLES)
    # Every sync sample, initial syncs included (no initial synchrotron runs).
    assert {(f.kind, f.upstream) for f in findings if "synchrotron" in f.sample.types} == {
        (MISSED_WORKER, "synapse_main")
    }
    assert len([f for f in findings if "synchrotron" in f.sample.types]) == 10
    assert "main serves it although synchrotron runs" in str(next(f for f in findings if f.sample == SYNC))


def test_a_missing_denied_pattern_is_caught():
    topo = _broken()
    topo["nginx"]["denied_patterns"] = [p for p in topo["nginx"]["denied_patterns"] if "replication" not in p]
    findings = [f for f in check(topo, SAMPLES) if f.sample.main == NEVER_FORWARDED]
    assert [(f.kind, f.upstream) for f in findings] == [(FORWARDED, "synapse_main")] * 3


def test_a_denied_pattern_over_a_served_path_is_caught():
    topo = _broken()
    topo["nginx"]["denied_patterns"].append("^/_matrix/client/v3/sync$")
    findings = [f for f in check(topo, SAMPLES) if f.kind == REFUSED]
    assert {f.sample.path.split("?")[0] for f in findings} == {
        "/_matrix/client/v3/sync",
        "/_matrix/client/v3//sync",
    }


def test_a_broken_method_map_is_caught():
    update = Sample(
        "POST", f"{DELAYED}/syd_abc", frozenset(), MAIN_ONLY, "synapse/rest/client/delayed_events.py"
    )
    topo = _broken()
    assert check(topo, [update]) == []
    for chooser in topo["nginx"]["maps"]:
        if chooser["source"] == "$request_method":
            chooser["default"] = "synapse_client_reader"
    (finding,) = check(topo, [update])
    assert (finding.kind, finding.upstream) == (MISROUTED, "synapse_client_reader")


def test_an_unknown_upstream_is_caught():
    topo = _broken()
    for route in topo["nginx"]["routes"]:
        if route["worker_type"] == "synchrotron":
            route["upstream"] = "synapse_nowhere"
    (finding,) = [f for f in check(topo, SAMPLES) if f.sample == SYNC]
    assert (finding.kind, finding.upstream, finding.detail) == (BROKEN, "synapse_nowhere", "no such upstream")


def test_a_greedy_route_in_front_is_caught():
    topo = _broken()
    topo["nginx"]["routes"].insert(
        0,
        {
            "pattern": "^/_matrix/client/",
            "upstream": "synapse_typing",
            "worker_type": "typing",
            "methods": [],
            "upstream_variable": None,
        },
    )
    findings = check(topo, SAMPLES)
    (sync,) = [f for f in findings if f.sample == SYNC]
    assert sync.location == '~ "^/_matrix/client/"' and sync.kind == MISROUTED
    typing = [s for s in SAMPLES if s.types == {"typing"}]
    assert typing and not [f for f in findings if f.sample in typing]


# --- the pools: initial syncs and room workers ---------------------------------------------

# One worker of every type, the pools included.
EVERY_TYPE = [{"name": name, "types": [name]} for name in WORKER_TYPES]
SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
ALICE = {"Authorization": "Bearer syt_YWxpY2U_abcdefghij_0123"}


def names_behind(topo, upstream):
    """The processes an upstream's servers are, by name."""
    known = processes(topo)
    return [known[server].name for server in topo["nginx"]["upstreams"][upstream]["servers"]]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_requests_reach_their_pool_hashed_by_their_room(name):
    findings = of_kind(check(preset(name), SAMPLES + CHOSEN_SEGMENT_SAMPLES), PASSED_OVER, NOT_STICKY)
    assert findings == [], report(findings)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_type_at_once_sends_every_request_where_it_belongs(layout):
    topo = build_topology(EVERY_TYPE, **LAYOUTS[layout])
    assert {"initial_synchrotron", "room_worker"} <= {t for w in topo["workers"] for t in w["types"]}
    findings = check(topo, SAMPLES + CHOSEN_SEGMENT_SAMPLES)
    assert findings == [], report(findings)


@pytest.mark.parametrize(
    "target, since",
    [
        ("/_matrix/client/v3/sync", ""),
        ("/_matrix/client/v3/sync?since=s1", "s1"),
        ("/_matrix/client/v3/sync?timeout=0&since=s1_2&since=s3", "s1_2"),
        ("/_matrix/client/v3/sync?SINCE=s1", "s1"),
        ("/_matrix/client/v3/sync?since=", ""),
        ("/_matrix/client/v3/sync?since", ""),
        ("/_matrix/client/v3/sync?presince=s1", ""),
        ("/_matrix/client/v3/sync?since=s%5F1", "s%5F1"),
    ],
)
def test_query_arguments_are_read_the_way_nginx_reads_them(target, since):
    assert query_argument(target, "since") == since


def test_seed001_sends_initial_syncs_to_a_pool_of_their_own():
    topo = preset("seed001")
    nginx = topo["nginx"]
    initial = [
        ("GET", "/_matrix/client/v3/sync"),
        ("GET", "/_matrix/client/r0/sync?filter=0&timeout=0"),
        ("GET", "/_matrix/client/v3/sync?timeout=0&since="),
        ("GET", "/_matrix/client/v3/initialSync?limit=10"),
        ("GET", f"{C}/rooms/{ROOM}/initialSync"),
    ]
    other = [
        ("GET", "/_matrix/client/v3/sync?since=s72594_4483_1934"),
        ("GET", "/_matrix/client/v3/sync?timeout=30000&since=s72594_4483_1934&full_state=true"),
        ("GET", "/_matrix/client/v3/events?from=s72594_4483_1934"),
        ("POST", SLIDING_SYNC),
        ("POST", f"{SLIDING_SYNC}?pos=7"),
    ]
    for requests, upstream, names in (
        (initial, "synapse_initial_synchrotron", ["initial_sync1", "initial_sync2"]),
        (other, "synapse_synchrotron", ["normal_sync1", "normal_sync2", "normal_sync3"]),
    ):
        for method, target in requests:
            assert resolve(nginx, method, target).upstream == upstream, target
            # Both pools sticky by the user of the access token.
            assert hash_key(nginx, upstream, method, target, ALICE) == "YWxpY2U"
        assert names_behind(topo, upstream) == names


def test_seed002_hashes_every_request_for_a_room_over_the_room_workers():
    topo = preset("seed002")
    nginx = topo["nginx"]
    rooms = [s for s in SAMPLES + CHOSEN_SEGMENT_SAMPLES if "room_worker" in s.types]
    assert len(rooms) >= 40
    assert {s.path.split("/")[2] for s in rooms} == {"client", "federation"}
    for sample in rooms:
        upstream = resolve(nginx, sample.method, sample.path).upstream
        assert upstream == "synapse_room_worker", sample
        assert hash_key(nginx, upstream, sample.method, sample.path) == sample.room, sample
    assert names_behind(topo, "synapse_room_worker") == ["rooms1", "rooms2", "rooms3", "rooms4"]
    # One room, however its ID is spelled.
    spellings = [ROOM, ROOM_ENCODED, "%21abc123:example.org", "!abc123%3Aexample.org"]
    keys = {
        hash_key(nginx, "synapse_room_worker", "GET", f"{prefix}/{spelled}{suffix}")
        for spelled in spellings
        for prefix, suffix in ((f"{C}/rooms", "/messages"), (f"{F}/state_ids", ""), (f"{C}/room_keys/keys", "/s1"))
    }
    assert keys == {ROOM}
    assert hash_key(nginx, "synapse_room_worker", "GET", f"{F}/backfill/{ROOM_V12}") == ROOM_V12
    # Requests without a room ID: client ones to main, federation ones to the federation reader.
    for method, target, upstream in [
        ("POST", f"{C}/createRoom", "synapse_main"),
        ("POST", f"{C}/join/%23lobby:example.org", "synapse_main"),
        ("GET", f"{C}/profile/@alice:example.org", "synapse_main"),
        ("GET", f"{F}/event/{EVENT}", "synapse_federation_reader"),
        ("GET", "/_matrix/key/v2/query", "synapse_federation_reader"),
        ("PUT", f"{F}/send/1700000000000", "synapse_federation_inbound"),
        ("GET", "/_matrix/client/v3/sync", "synapse_synchrotron"),
        # A room's stream endpoints stay with their writer, client_sync.
        ("PUT", f"{C}/rooms/{ROOM}/typing/@alice:example.org", "synapse_typing"),
        ("PUT", f"{C}/user/@alice:example.org/rooms/{ROOM}/tags/m.favourite", "synapse_account_data"),
        ("POST", f"{C}/rooms/{ROOM}/read_markers", "synapse_receipts"),
    ]:
        assert resolve(nginx, method, target).upstream == upstream, target
    assert names_behind(topo, "synapse_typing") == ["client_sync"]


def test_a_since_map_sending_every_sync_to_the_initial_pool_is_caught():
    topo = _broken("seed001")
    for chooser in topo["nginx"]["maps"]:
        if chooser["source"] == "$arg_since":
            chooser["default"] = "synapse_initial_synchrotron"
    findings = check(topo, SAMPLES)
    incremental = [s for s in SAMPLES if s.path.startswith(f"{C}/sync?") and query_argument(s.path, "since")]
    assert len(incremental) == 2
    assert sorted((str(f.sample), f.kind) for f in findings) == sorted((str(s), MISROUTED) for s in incremental)
    assert "initial_sync1, initial_sync2 has none of the types" in str(findings[0])


def test_a_since_map_that_lost_its_case_is_caught():
    topo = _broken("seed001")
    for chooser in topo["nginx"]["maps"]:
        if chooser["source"] == "$arg_since":
            chooser["cases"] = []
    findings = check(topo, SAMPLES)
    assert {f.kind for f in findings} == {PASSED_OVER}
    assert sorted(str(f.sample) for f in findings) == [
        "GET /_matrix/client/r0/sync?filter=0",
        "GET /_matrix/client/v3//sync",
        "GET /_matrix/client/v3/sync?timeout=0&set_presence=offline&since=",
    ]
    assert "normal_sync1, normal_sync2, normal_sync3 serves it although initial_synchrotron runs" in str(findings[0])


def test_a_room_key_that_misses_the_room_is_caught():
    topo = _broken("seed002")
    # Only the segment after rooms/, join/ or knock/ keys: federation paths,
    # room_keys and room summaries are hashed by their whole path.
    for chooser in topo["nginx"]["maps"]:
        if chooser["variable"] == "$synapse_balance_room":
            chooser["cases"] = chooser["cases"][:1]
    findings = check(topo, SAMPLES)
    assert {f.kind for f in findings} == {NOT_STICKY}
    keyed_still = re.compile(r"^/_matrix/client/[^/]+/(rooms|join|knock)/")
    missed = [s for s in SAMPLES if "room_worker" in s.types and not keyed_still.match(normalise_uri(s.path))]
    assert sorted(str(f.sample) for f in findings) == sorted(str(s) for s in missed)
    paths = {f.sample.path.split("?")[0] for f in findings}
    assert f"{F}/state_ids/{ROOM}" in paths and f"{F}/backfill/{ROOM_V12}" in paths
    assert f"{C}/room_keys/keys/{ROOM}" in paths and f"/_matrix/client/v1/room_summary/{ROOM}" in paths
    assert "hashed by '/_matrix/federation/v1/state_ids/!abc123:example.org'" in str(
        next(f for f in findings if f.sample.path.startswith(f"{F}/state_ids/{ROOM}"))
    )


def test_room_workers_that_lost_their_routes_are_caught():
    topo = _broken("seed002")
    topo["nginx"]["routes"] = [r for r in topo["nginx"]["routes"] if r["worker_type"] != "room_worker"]
    findings = check(topo, SAMPLES)
    rooms = [s for s in SAMPLES if "room_worker" in s.types]
    assert sorted(str(f.sample) for f in findings) == sorted(str(s) for s in rooms)
    # Client requests fall to main, federation ones to the federation
    # reader, a room's initialSync to the synchrotron.
    assert {(f.kind, f.upstream) for f in findings} == {
        (MISSED_WORKER, "synapse_main"),
        (PASSED_OVER, "synapse_federation_reader"),
        (PASSED_OVER, "synapse_synchrotron"),
    }
    # With every type running, they reach the types the room workers take them from.
    topo = build_topology(EVERY_TYPE, **LAYOUTS["unix"])
    topo["nginx"]["routes"] = [r for r in topo["nginx"]["routes"] if r["worker_type"] != "room_worker"]
    findings = check(topo, SAMPLES)
    assert {f.kind for f in findings} == {PASSED_OVER}
    assert len(findings) == len(rooms)


# --- nginx itself agrees --------------------------------------------------------------------

WELL_KNOWN = ("/.well-known/matrix/server", "/.well-known/matrix/client")


def _through_nginx(tmp_path, topo, requests, **overrides):
    """Serve the rendered site with nginx on loopback: the ($uri, upstream) it logs for each request."""
    return [(uri, upstream) for uri, upstream, _ in _nginx_log(tmp_path, topo, requests, **overrides)]


def _nginx_log(tmp_path, topo, requests, **overrides):
    """Serve the rendered site with nginx on loopback: ($uri, upstream, first server tried) of each request.

    A request is (method, target) or (method, target, headers). No Synapse
    listens, so nginx tries the upstream's servers in turn: the first one
    it logged is the one the balancing picked.
    """
    from test_routing_gaps import _free_port, _nginx_template_tests

    site_tests = _nginx_template_tests()
    assert site_tests.NGINX is not None, "nginx is not installed: tests/run installs nginx-light"
    port = _free_port()
    site = tmp_path / "matrix-synapse.conf"
    site.write_text(
        site_tests.render_for_nginx(
            tmp_path,
            topo,
            nginx_https_port=port,
            nginx_federation_port=0,
            nginx_http_port=0,
            nginx_listen_ipv6=False,
            **overrides,
        )
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text("daemon off;\nmaster_process off;\n" + site_tests.scratch_main_conf(tmp_path, str(site)))
    process = subprocess.Popen(
        [site_tests.NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.1)
        connection = None
        for method, path, *extra in requests:
            headers = {"Host": "matrix.example.org", **(extra[0] if extra else {})}
            for attempt in range(2):
                if connection is None:
                    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
                try:
                    connection.request(
                        method,
                        path,
                        body=b"{}" if method in ("POST", "PUT") else None,
                        headers=headers,
                    )
                    response = connection.getresponse()
                    response.read()
                    break
                except (http.client.HTTPException, OSError):
                    connection.close()
                    connection = None
                    if attempt:
                        raise
            if response.will_close:
                connection.close()
                connection = None
        if connection is not None:
            connection.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
    logged = re.findall(
        r'"(\S+) (\S+) HTTP/[\d.]+" .*? upstream=(\S+) upstream_addr=([^ ,]+)',
        (tmp_path / "matrix-synapse.access.log").read_text(),
    )
    assert [m for m, _, _, _ in logged] == [m for m, *_ in requests]
    return [(uri, upstream, address) for _, uri, upstream, address in logged]


def _expected_log(nginx, requests, **options):
    """What the checker says nginx logs: the normalised URI and the upstream, "denied" or "-"."""
    expected = []
    for method, path in requests:
        resolution = resolve(nginx, method, path, **options)
        upstream = resolution.upstream
        if resolution.answers in ("denied pattern", "closed prefix"):
            upstream = "denied"
        elif resolution.answers == "exact location":
            upstream = "-"
        expected.append((normalise_uri(path), upstream))
    return expected


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_nginx_picks_the_location_the_checker_picks(tmp_path, name):
    topo = preset(name)
    requests = [(s.method, s.path) for s in SAMPLES + CHOSEN_SEGMENT_SAMPLES] + [
        ("GET", p) for p in WELL_KNOWN
    ]
    # The admin API open to the test's own address: its routes are in play.
    logged = _through_nginx(tmp_path, topo, requests, nginx_admin_api_allowed_clients=["127.0.0.1"])
    assert logged == _expected_log(topo["nginx"], requests, exact_locations=WELL_KNOWN)


def test_nginx_closes_the_admin_api_where_the_checker_does(tmp_path):
    topo = preset("one-of-each")
    requests = [(s.method, s.path) for s in SAMPLES]
    logged = _through_nginx(tmp_path, topo, requests)
    assert logged == _expected_log(topo["nginx"], requests, closed_prefixes=(ADMIN_PREFIX,))
    assert sum(upstream == "denied" for _, upstream in logged) > 10


def test_nginx_sends_initial_syncs_to_their_pool_sticky_by_user(tmp_path):
    topo = preset("seed001")
    users = [{"Authorization": f"Bearer syt_dXNlcn{i}_abcdefghij_0123"} for i in range(8)]
    initial = ["/_matrix/client/v3/sync", "/_matrix/client/v3/sync?timeout=0&since=", "/_matrix/client/v3/initialSync"]
    other = ["/_matrix/client/v3/sync?since=s1&timeout=0", "/_matrix/client/v3/sync?timeout=30000&since=s2"]
    requests = [("GET", target, ALICE) for target in initial + other] + [("POST", SLIDING_SYNC, ALICE)]
    requests += [("GET", target, user) for user in users for target in (initial[0], other[0])]
    logged = _nginx_log(tmp_path, topo, requests, nginx_upstream_max_fails=0)
    assert [upstream for _, upstream, _ in logged] == [resolve(topo["nginx"], m, t).upstream for m, t, _ in requests]
    by_pool = {"synapse_initial_synchrotron": [], "synapse_synchrotron": []}
    for (_, upstream, address), (_, _, headers) in zip(logged, requests):
        by_pool[upstream].append((headers["Authorization"], address))
    for upstream, picks in by_pool.items():
        sockets = {f"unix:/run/matrix-synapse/{name}.sock" for name in names_behind(topo, upstream)}
        assert {address for _, address in picks} <= sockets
        # One user, one server of each pool; the users spread over them.
        per_user = {}
        for user, address in picks:
            per_user.setdefault(user, set()).add(address)
        assert all(len(addresses) == 1 for addresses in per_user.values()), upstream
        assert len({address for _, address in picks}) > 1, upstream
    alice = [address for (_, upstream, address), (_, _, h) in zip(logged, requests)
             if h is ALICE and upstream == "synapse_initial_synchrotron"]
    assert len(alice) == len(initial) and len(set(alice)) == 1


def _one_room(spellings=(ROOM, ROOM_ENCODED)):
    return [
        request
        for spelled in spellings
        for request in (
            ("GET", f"{C}/rooms/{spelled}/messages?dir=b"),
            ("PUT", f"{C}/rooms/{spelled}/send/m.room.message/t1"),
            ("GET", f"{C}/rooms/{spelled}/members"),
            ("POST", f"{C}/join/{spelled}"),
            ("GET", f"{C}/room_keys/keys/{spelled}?version=1"),
            ("GET", f"{F}/state_ids/{spelled}?event_id=%24e"),
            ("GET", f"{F}/backfill/{spelled}?v=%24e&limit=10"),
            ("PUT", f"/_matrix/federation/v2/send_join/{spelled}/%24e"),
        )
    ]


def test_nginx_hashes_every_request_for_a_room_to_one_room_worker(tmp_path):
    topo = preset("seed002")
    one_room = _one_room()
    others = [("GET", f"{C}/rooms/!room{i}:example.org/messages") for i in range(12)]
    logged = _nginx_log(tmp_path, topo, one_room + others, nginx_upstream_max_fails=0)
    assert {upstream for _, upstream, _ in logged} == {"synapse_room_worker"}
    sockets = {f"unix:/run/matrix-synapse/rooms{i}.sock" for i in range(1, 5)}
    assert {address for _, _, address in logged} <= sockets
    assert len({address for _, _, address in logged[: len(one_room)]}) == 1
    assert len({address for _, _, address in logged[len(one_room):]}) > 1


def test_nginx_shows_a_room_key_that_misses_the_room(tmp_path):
    topo = _broken("seed002")
    for chooser in topo["nginx"]["maps"]:
        if chooser["variable"] == "$synapse_balance_room":
            chooser["cases"] = chooser["cases"][:1]
    logged = _nginx_log(tmp_path, topo, _one_room(), nginx_upstream_max_fails=0)
    assert {upstream for _, upstream, _ in logged} == {"synapse_room_worker"}
    assert len({address for _, _, address in logged}) > 1
    assert {f.kind for f in check(topo, [s for s in SAMPLES if "room_worker" in s.types])} == {NOT_STICKY}
