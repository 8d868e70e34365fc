#!/usr/bin/env python3
"""A client on simplified sliding sync (MSC4186), with raw requests, through the URL given.

No client library on PyPI speaks MSC4186 yet, so the requests are written
here from Synapse 1.163's SlidingSyncRestServlet (synapse/rest/client/sync.py)
and SlidingSyncBody (synapse/types/rest/client/__init__.py): ``POST
/_matrix/client/unstable/org.matrix.simplified_msc3575/sync`` with a list of
rooms, ``?pos=`` for the next round. Synapse serves it by default
(``experimental_features.msc3575_enabled`` defaults to true).

Two fresh users: alice creates a room and invites bob, bob joins; bob logs in
with his password, his first sliding sync sees the room, then each message
alice sends arrives in one of bob's following sliding syncs (``pos``). Each
sliding sync carries its own marker as User-Agent, and ``--record`` writes
them for ``routing_probe.py judge``, which reads from nginx's log whether a
synchrotron served them.

Exit status: 0 when every step passed, 1 otherwise, 2 for bad arguments.
Passwords are random and access tokens travel in the Authorization header
only; neither is printed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
for _path in (HERE, HERE.parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from lib.routing_check import MAIN_FALLBACK, Sample  # noqa: E402
from lib.routing_log import Sent  # noqa: E402
from plain_http import ClientError, Homeserver, Timeout, log_in, log_out, register, tls_context  # noqa: E402

AGENT = "polylith-sliding-sync"
SLIDING_SYNC = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
V3 = "/_matrix/client/v3"
# Who may serve a sliding sync: the catalogue sends it where /sync goes.
SERVED_BY = frozenset({"synchrotron"})
WHERE = (
    "not listed; SlidingSyncRestServlet of synapse/rest/client/sync.py is registered on every "
    'process with the client resource, and the catalogue routes it with "Sync requests"'
)
LIST = "rooms"
BODY = {
    "lists": {
        LIST: {
            "ranges": [[0, 19]],
            "required_state": [["m.room.name", ""], ["m.room.create", ""]],
            "timeline_limit": 10,
        }
    }
}
MESSAGES = 2
# How long bob waits for something to appear, in all and per long poll.
WAIT = 30.0
LONG_POLL_MS = 5000


class CheckFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


class Client:
    """The users, their sessions, and every sliding sync sent with its marker."""

    def __init__(self, server, server_name, run):
        self.server = server
        self.server_name = server_name
        self.run = run
        self.setup_agent = f"{AGENT}/{run}/setup"
        self.passwords = {name: secrets.token_urlsafe(24) for name in ("alice", "bob")}
        self.users = {}
        self.tokens = {}
        self.sent = []
        self.room_id = None
        self.room_name = f"sliding sync {run}"
        self.pos = None
        self.room = None  # the room as bob's sliding syncs last showed it
        self.listed = None  # how many rooms bob's list counted last
        self.timeline = []  # event IDs bob saw in the room, in order

    def call(self, who, method, target, body=None):
        response = self.server.call(method, target, body, self.tokens[who], self.setup_agent)
        parsed = response.json()
        check(response.status == 200 and isinstance(parsed, dict),
              f"{who}: {method} {target.split('?')[0]}: HTTP {response.status} {response.errcode or ''}".strip())
        return parsed

    def sliding_sync(self, timeout_ms):
        """One sliding sync as bob from ``self.pos``; what it says of the room."""
        query = f"timeout={timeout_ms}" + (f"&pos={quote(self.pos, safe='')}" if self.pos else "")
        target = f"{SLIDING_SYNC}?{query}"
        marker = f"{AGENT}/{self.run}/{len(self.sent) + 1}"
        sample = Sample("POST", target, SERVED_BY, MAIN_FALLBACK, WHERE)
        try:
            response = self.server.call("POST", target, BODY, self.tokens["bob"], marker)
        except (OSError, http.client.HTTPException) as exc:
            self.sent.append(Sent(marker, sample, f"no answer: {type(exc).__name__}"))
            raise CheckFailed(f"sliding sync: no answer ({type(exc).__name__})") from None
        self.sent.append(Sent(marker, sample, f"HTTP {response.status}"))
        parsed = response.json()
        check(response.status == 200 and isinstance(parsed, dict) and parsed.get("pos"),
              f"sliding sync: HTTP {response.status} {response.errcode or ''}".strip())
        self.pos = parsed["pos"]
        if LIST in parsed.get("lists", {}):
            self.listed = parsed["lists"][LIST].get("count")
        room = parsed.get("rooms", {}).get(self.room_id)
        if room is not None:
            self.room = room
            self.timeline.extend(e.get("event_id") for e in room.get("timeline", []) if isinstance(e, dict))
        return room

    def until(self, seen, what):
        """Sliding syncs from ``pos`` until ``seen()``; bounded."""
        end = time.monotonic() + WAIT
        rounds = 0
        while not seen():
            check(time.monotonic() < end, f"bob did not see {what} within {WAIT:.0f}s ({rounds} sliding syncs)")
            self.sliding_sync(LONG_POLL_MS)
            rounds += 1
        return rounds


def step_users(client):
    for name in ("alice", "bob"):
        localpart = f"ss{client.run}-{name}"
        user_id = register(client.server, localpart, client.passwords[name], client.setup_agent)
        client.users[name] = user_id
        client.tokens[name], _ = log_in(client.server, user_id, client.passwords[name], client.setup_agent,
                                        f"sliding sync check {name}")
    return f"registered and logged in {client.users['alice']} and {client.users['bob']}"


def step_room(client):
    created = client.call("alice", "POST", f"{V3}/createRoom",
                          {"preset": "private_chat", "name": client.room_name, "invite": [client.users["bob"]]})
    client.room_id = created.get("room_id")
    check(client.room_id, "createRoom returned no room_id")
    client.call("bob", "POST", f"{V3}/join/{quote(client.room_id, safe='')}", {})
    return f"alice created {client.room_id} and invited bob, who joined"


def step_initial(client):
    first = client.sliding_sync(0)
    # The join may reach the sync worker a moment after the join's answer.
    rounds = client.until(lambda: client.room is not None, "the room")
    check(isinstance(client.listed, int) and client.listed >= 1, f"list {LIST!r} counts {client.listed!r} rooms")
    name = client.room.get("name")
    check(name == client.room_name, f"the room is named {name!r}, not {client.room_name!r}")
    return f"list {LIST!r} holds {client.listed} room(s), the room named {name!r} " + (
        "in the first sliding sync" if first is not None else f"after {rounds} more"
    )


def step_messages(client):
    for number in range(1, MESSAGES + 1):
        txn = f"ss{client.run}m{number}"
        body = {"msgtype": "m.text", "body": f"sliding sync {client.run} #{number}"}
        target = f"{V3}/rooms/{quote(client.room_id, safe='')}/send/m.room.message/{txn}"
        event_id = client.call("alice", "PUT", target, body).get("event_id")
        check(event_id, "send returned no event_id")
        client.until(lambda e=event_id: e in client.timeline, f"alice's message #{number}")
    return f"{MESSAGES} messages from alice arrived in bob's sliding syncs from pos"


STEPS = [
    ("users", "register, log in", step_users),
    ("room", "room with both users", step_room),
    ("initial", "first sliding sync sees the room", step_initial),
    ("messages", "new messages arrive with pos", step_messages),
]


def run_steps(client):
    results = []
    failed = False
    for _, title, step in STEPS:
        if failed:
            results.append((title, "FAIL", "skipped: an earlier step failed"))
            continue
        try:
            results.append((title, "PASS", step(client)))
        except (CheckFailed, ClientError) as exc:
            results.append((title, "FAIL", str(exc)))
        except Timeout:
            results.append((title, "FAIL", "the run's time is spent (--timeout)"))
        except (OSError, http.client.HTTPException) as exc:
            results.append((title, "FAIL", f"transport error: {type(exc).__name__}: {exc}"))
        failed = results[-1][1] == "FAIL"
    return results


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="https://HOST[:PORT] of nginx")
    parser.add_argument("--server-name", required=True, help="the homeserver's server_name")
    parser.add_argument("--ca-cert", help="CA certificate (PEM) to trust instead of the system store")
    parser.add_argument("--tls-server-name", help="name for SNI, certificate check and Host when the URL holds an address")
    parser.add_argument("--record", help="write the sliding syncs sent, with their markers, here (JSON)")
    parser.add_argument("--timeout", type=float, default=180.0, help="bound of the whole run in seconds (default 180)")
    parser.add_argument("--request-timeout", type=float, default=30.0,
                        help="bound of each request in seconds (default 30)")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.request_timeout * 1000 <= LONG_POLL_MS:
        parser.error(f"--timeout must be positive and --request-timeout above {LONG_POLL_MS / 1000:.0f}s")
    if args.ca_cert and not Path(args.ca_cert).is_file():
        parser.error(f"--ca-cert {args.ca_cert}: no such file")
    try:
        Homeserver(args.url, tls_server_name=args.tls_server_name)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv=None):
    args = parse_args(argv)
    server = Homeserver(args.url, tls_context(args.ca_cert), args.tls_server_name,
                        request_timeout=args.request_timeout, deadline=time.monotonic() + args.timeout)
    client = Client(server, args.server_name, secrets.token_hex(4))
    try:
        results = run_steps(client)
    finally:
        for token in client.tokens.values():
            log_out(server, token, client.setup_agent)
    print(f"Sliding sync (MSC4186) check of {args.url}, users ss{client.run}-*")
    for number, (title, status, detail) in enumerate(results, 1):
        print(f"{number}  {title:<34} {status}  {detail}")
    print(f"{len(client.sent)} sliding syncs sent")
    if args.record:
        record = {"tool": "tests/e2e/sliding_sync_check.py", "run": client.run,
                  "sent": [s.to_json() for s in client.sent]}
        Path(args.record).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        print(f"record written to {args.record}")
    return 0 if all(status == "PASS" for _, status, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
