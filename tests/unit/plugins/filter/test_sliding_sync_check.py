"""The sliding sync client (tests/e2e/sliding_sync_check.py) against Synapse's model and a fake server.

The lab's verify runs it against the deployment; here its request body is
held to Synapse 1.163's own SlidingSyncBody, and its steps run against a
small in-memory homeserver: they pass when messages arrive after ``pos``,
fail when they do not, and every sliding sync is recorded for the judge of
nginx's log with the synchrotron as the type that serves it.
"""

from __future__ import annotations

import json
import sys
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from conftest import ROOT
from lib.routing_check import MAIN_FALLBACK

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import sliding_sync_check  # noqa: E402
from plain_http import Response  # noqa: E402

# The servlet's path (the fake serves it there whatever the client is told).
SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"

# Synapse's modules warn about deprecations on import.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_synapse_accepts_the_request_body():
    from synapse.rest.client.sync import SlidingSyncRestServlet
    from synapse.types.rest.client import SlidingSyncBody

    body = SlidingSyncBody.model_validate(sliding_sync_check.BODY)
    (listed,) = body.lists.values()
    assert listed.ranges == [(0, 19)] and listed.timeline_limit == 10
    # The path the client posts to is the servlet's.
    assert sliding_sync_check.SLIDING_SYNC == SLIDING_SYNC
    assert any(p.match(SLIDING_SYNC) for p in SlidingSyncRestServlet.PATTERNS)


class FakeHomeserver:
    """Just enough of Synapse for the client: users, one room, messages, sliding sync by position."""

    def __init__(self, deliver=True):
        self.deliver = deliver
        self.events = []  # (room, event_id)
        self.rooms = {}
        self.members = {}
        self.agents = []

    def call(self, method, target, body=None, token=None, agent=""):
        self.agents.append(agent)
        path, query = urlsplit(target).path, parse_qs(urlsplit(target).query)
        user = token and token.removeprefix("token-")
        if path.endswith("/register"):
            return self.ok({"user_id": f"@{body['username']}:test"})
        if path.endswith("/login"):
            return self.ok({"access_token": f"token-{body['identifier']['user']}", "device_id": "DEV"})
        if path.endswith("/logout"):
            return self.ok({})
        if path.endswith("/createRoom"):
            room = f"!room{len(self.rooms)}:test"
            self.rooms[room] = body["name"]
            self.members[room] = {user, *body["invite"]}
            return self.ok({"room_id": room})
        if "/join/" in path or "/send/" in path:
            room = unquote(path.split("/join/")[-1] if "/join/" in path else path.split("/rooms/")[1].split("/")[0])
            if "/join/" in path:
                return self.ok({"room_id": room})
            event_id = f"$event{len(self.events)}"
            self.events.append((room, event_id))
            return self.ok({"event_id": event_id})
        if path == SLIDING_SYNC:
            assert method == "POST" and body == sliding_sync_check.BODY and agent.startswith("polylith-sliding-sync/")
            since = int(query["pos"][0]) if "pos" in query else None
            mine = [r for r in self.rooms if user in self.members[r]]
            rooms = {}
            for room in mine:
                timeline = [e for r, e in self.events if r == room]
                if since is None:
                    rooms[room] = {"name": self.rooms[room], "timeline": [{"event_id": e} for e in timeline[-10:]]}
                elif self.deliver:
                    new = [{"event_id": e} for r, e in self.events[since:] if r == room]
                    if new:
                        rooms[room] = {"timeline": new}
            lists = {sliding_sync_check.LIST: {"count": len(mine), "ops": []}}
            return self.ok({"pos": str(len(self.events)), "lists": lists, "rooms": rooms, "extensions": {}})
        return Response(404, b'{"errcode": "M_UNRECOGNIZED"}')

    def request(self, *args, **kwargs):
        return self.call(*args, **kwargs)

    @staticmethod
    def ok(body):
        return Response(200, json.dumps(body).encode())


def run(server, monkeypatch):
    monkeypatch.setattr(sliding_sync_check, "WAIT", 0.5)
    client = sliding_sync_check.Client(server, "test", "abcd1234")
    return client, sliding_sync_check.run_steps(client)


def test_messages_that_arrive_after_pos_pass(monkeypatch):
    client, results = run(FakeHomeserver(), monkeypatch)
    assert [status for _, status, _ in results] == ["PASS"] * 4, results
    assert "the room named 'sliding sync abcd1234' in the first sliding sync" in results[2][2]
    # One initial sliding sync, then one per message; each recorded with its marker.
    assert [s.marker for s in client.sent] == [f"polylith-sliding-sync/abcd1234/{n}" for n in (1, 2, 3)]
    assert "pos=" not in client.sent[0].sample.path and "pos=" in client.sent[1].sample.path
    for sent in client.sent:
        assert sent.sample.types == {"synchrotron"} and sent.sample.main == MAIN_FALLBACK
        assert sent.sample.method == "POST" and sent.outcome == "HTTP 200"


def test_messages_that_never_arrive_fail(monkeypatch):
    client, results = run(FakeHomeserver(deliver=False), monkeypatch)
    assert [status for _, status, _ in results] == ["PASS", "PASS", "PASS", "FAIL"]
    assert results[3][2].startswith("bob did not see alice's message #1 within")
    assert len(client.sent) > 2


def test_an_unrouted_sliding_sync_fails(monkeypatch):
    server = FakeHomeserver()
    monkeypatch.setattr(sliding_sync_check, "SLIDING_SYNC", "/_matrix/client/unstable/nowhere/sync")
    client, results = run(server, monkeypatch)
    assert [status for _, status, _ in results] == ["PASS", "PASS", "FAIL", "FAIL"]
    assert results[2][2] == "sliding sync: HTTP 404 M_UNRECOGNIZED"
    assert [s.outcome for s in client.sent] == ["HTTP 404"]
