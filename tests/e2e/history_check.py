#!/usr/bin/env python3
"""Does a homeserver keep what a client sent? Checked before and after a
day-two operation (an upgrade, a reboot), with the real client library
matrix-nio.

    history_check.py write --url URL --server-name NAME --ca-cert PEM --record FILE [--messages N]
    history_check.py read  --url URL --server-name NAME --ca-cert PEM --record FILE

write registers a fresh user, creates a room, sends N messages, checks them
as read does, then writes FILE: the user ID, its password, the room ID and
each message's event ID and body. FILE holds a password: it is written with
mode 0600, and belongs under .lab/ (ignored by git, removed with the lab).

read logs in as that user and checks that every message is still there with
its body, in the order sent: through GET /rooms/{id}/messages, paginated
backwards a few events a page (bounded), through an initial /sync of the room
(no `since`), and through GET /rooms/{id}/context/{event} for each.

Exit status: 0 only if every step passed; 1 if any failed, the overall
timeout hit, or some response was M_UNRECOGNIZED; 2 for bad arguments or an
unreadable record. Passwords and access tokens are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import ssl
import sys
import time
from typing import Any, Awaitable, Callable
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from matrix_client_check import (  # noqa: E402 - the sibling module, found through sys.path
    SECRETS,
    V3,
    CheckFailed,
    Clock,
    Recorder,
    RedactingFilter,
    StepResult,
    build_target,
    check,
    describe,
    make_client,
    q,
    run_steps,
)

import nio  # noqa: E402

RECORD_VERSION = 1
# Synapse lets a user send 10 events at once before rc_message slows it down.
DEFAULT_MESSAGES = 8
# Small pages, so that reading the history back takes several.
PAGE_SIZE = 4
# A 429 asking for at most this long is waited out (a few times).
MAX_RATE_LIMIT_WAIT = 30.0
RATE_LIMIT_RETRIES = 4


class RecordError(ValueError):
    """The record file cannot be used; the message says why and what to do."""


# --------------------------------------------------------------------------
# The record the write leaves for the read
# --------------------------------------------------------------------------


def make_record(server_name: str, user_id: str, password: str, room_id: str, events: list[dict]) -> dict:
    return {
        "version": RECORD_VERSION,
        "server_name": server_name,
        "user_id": user_id,
        "password": password,
        "room_id": room_id,
        "events": [{"event_id": e["event_id"], "body": e["body"]} for e in events],
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save_record(path: str, record: dict) -> None:
    """Write the record readable by its owner only (0600), replacing any old one whole."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_record(path: str, server_name: str) -> dict:
    """The record, checked: a record of another server or in another shape is refused."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        raise RecordError(f"{path}: no such record; run `history_check.py write` first") from None
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: not a readable record ({exc}); run `history_check.py write` again") from None
    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION:
        raise RecordError(f"{path}: not a record of this check (version {RECORD_VERSION}); run `write` again")
    for key in ("server_name", "user_id", "password", "room_id"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise RecordError(f"{path}: {key} is missing or empty; run `write` again")
    events = record.get("events")
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, dict) and isinstance(e.get("event_id"), str) and isinstance(e.get("body"), str) for e in events)
    ):
        raise RecordError(f"{path}: events must be a non-empty list of {{event_id, body}}; run `write` again")
    if len({e["event_id"] for e in events}) != len(events):
        raise RecordError(f"{path}: an event ID is listed twice; run `write` again")
    if record["server_name"] != server_name:
        raise RecordError(
            f"{path} was written for the server {record['server_name']}, not {server_name}: "
            "pass that --server-name, or write a record for this server"
        )
    if not record["user_id"].endswith(":" + server_name):
        raise RecordError(f"{path}: the user {record['user_id']} is not one of {server_name}; run `write` again")
    return record


# --------------------------------------------------------------------------
# Judging what the server answered
# --------------------------------------------------------------------------


def message_events(events: Any) -> list[tuple[str, str]]:
    """(event ID, body) of each m.room.message among events, in their order."""
    found = []
    for event in events if isinstance(events, list) else []:
        if not isinstance(event, dict) or event.get("type") != "m.room.message":
            continue
        body = (event.get("content") or {}).get("body")
        if isinstance(event.get("event_id"), str) and isinstance(body, str):
            found.append((event["event_id"], body))
    return found


def compare(expected: list[dict], seen: list[tuple[str, str]], where: str) -> list[str]:
    """What is wrong with seen (event ID, body) pairs, in the order the server
    gave them, against the events sent: each must be there once, with its body,
    in the order sent. Other messages of the room do not matter."""
    problems = []
    wanted = {e["event_id"]: e["body"] for e in expected}
    bodies: dict[str, list[str]] = {}
    for event_id, body in seen:
        if event_id in wanted:
            bodies.setdefault(event_id, []).append(body)
    missing = [e["body"] for e in expected if e["event_id"] not in bodies]
    if missing:
        problems.append(f"{where}: {len(missing)} of {len(expected)} messages missing: {missing}")
    for event_id, found in bodies.items():
        if len(found) > 1:
            problems.append(f"{where}: {event_id} appears {len(found)} times")
        if any(b != wanted[event_id] for b in found):
            problems.append(f"{where}: {event_id} has the body {found[0]!r}, sent as {wanted[event_id]!r}")
    order = [event_id for event_id, _ in seen if event_id in wanted]
    sent = [e["event_id"] for e in expected if e["event_id"] in bodies]
    if not problems and order != sent:
        problems.append(f"{where}: the messages are not in the order sent")
    return problems


def sync_timeline(sync: Any, room_id: str) -> tuple[list[dict], bool] | None:
    """The room's timeline events in an answer of /sync and whether it is
    limited; None when the room is not among the joined rooms."""
    room = ((sync or {}).get("rooms") or {}).get("join", {}).get(room_id) if isinstance(sync, dict) else None
    if not isinstance(room, dict):
        return None
    timeline = room.get("timeline") or {}
    return timeline.get("events") or [], bool(timeline.get("limited"))


async def paginate(
    fetch: Callable[[str | None], Awaitable[dict]], want: set[str], max_pages: int
) -> tuple[list[tuple[str, str]], int]:
    """Page backwards from the room's newest event with fetch(from_token) (a
    /messages answer: chunk, end) until every wanted event was seen, the room's
    start is reached or max_pages were read. Returns the messages seen, oldest
    first, and the number of pages read."""
    newest_first: list[tuple[str, str]] = []
    token = None
    pages = 0
    while pages < max_pages:
        page = await fetch(token)
        pages += 1
        chunk = page.get("chunk") if isinstance(page, dict) else None
        newest_first += message_events(chunk)
        if want <= {event_id for event_id, _ in newest_first}:
            break
        end = page.get("end") if isinstance(page, dict) else None
        if not chunk or not isinstance(end, str) or end == token:
            break  # the room's first event
        token = end
    return list(reversed(newest_first)), pages


def max_pages(messages: int) -> int:
    """Enough pages for the messages and a room's first state events, and a bound."""
    return (messages + 20) // PAGE_SIZE + 3


# --------------------------------------------------------------------------
# Talking to the server
# --------------------------------------------------------------------------


class Session:
    """One user's client and the run's bounds."""

    def __init__(self, args: argparse.Namespace, recorder: Recorder, clock: Clock):
        self.args = args
        self.recorder = recorder
        self.clock = clock
        self.target = build_target(args.url, args.tls_server_name, args.ca_cert)
        self.client: nio.AsyncClient | None = None
        self.user_id = ""
        self.password = ""
        self.room_id = ""
        self.events: list[dict] = []

    def new_client(self, user: str) -> nio.AsyncClient:
        self.client = make_client(self.target, user, self.recorder, self.clock, self.args.request_timeout)
        return self.client

    async def pause(self, retry_after_ms: Any, what: str) -> None:
        try:
            wait = max(0.0, float(retry_after_ms) / 1000) if retry_after_ms else 1.0
        except (TypeError, ValueError):
            wait = 1.0
        if wait > MAX_RATE_LIMIT_WAIT or wait > self.clock.remaining() - 2:
            raise CheckFailed(f"{what}: rate-limited (HTTP 429), the server asks to wait {wait:.0f}s")
        await asyncio.sleep(wait)

    async def api(self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """A nio call, waiting out short rate limits."""
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            resp = await method(*args, **kwargs)
            limited = isinstance(resp, nio.ErrorResponse) and resp.status_code == "M_LIMIT_EXCEEDED"
            if not limited or attempt == RATE_LIMIT_RETRIES:
                return resp
            await self.pause(getattr(resp, "retry_after_ms", None), method.__name__)
        return resp

    async def get(self, path: str) -> dict:
        """An authenticated GET; anything but 200 with a JSON object fails the step."""
        assert self.client is not None and self.client.access_token
        headers = {"Authorization": f"Bearer {self.client.access_token}"}
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            resp = await self.client.send("GET", path, None, headers)
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            if resp.status != 429 or attempt == RATE_LIMIT_RETRIES:
                break
            await self.pause((body or {}).get("retry_after_ms") if isinstance(body, dict) else None, "GET")
        short = path.split("?", 1)[0]
        if resp.status != 200 or not isinstance(body, dict):
            detail = body.get("errcode", "") + " " + str(body.get("error", "")) if isinstance(body, dict) else ""
            raise CheckFailed(f"GET {short}: HTTP {resp.status} {detail}".strip())
        return body


# --------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------


async def step_register(s: Session) -> str:
    localpart = f"{s.args.user_prefix}-history"
    s.user_id = f"@{localpart}:{s.args.server_name}"
    s.password = secrets.token_urlsafe(24)
    SECRETS.add(s.password)
    client = s.new_client(localpart)
    resp = await s.api(client.register, localpart, s.password, device_name="history-check-write")
    check(isinstance(resp, nio.RegisterResponse), f"register {localpart}: {describe(resp)}")
    SECRETS.add(resp.access_token)
    check(resp.user_id == s.user_id, f"registered as {resp.user_id}, expected {s.user_id} (wrong --server-name?)")
    return f"{s.user_id} registered"


async def step_send(s: Session) -> str:
    assert s.client is not None
    nonce = secrets.token_hex(4)
    resp = await s.api(s.client.room_create, name=f"history check {nonce}", preset=nio.RoomPreset.private_chat)
    check(isinstance(resp, nio.RoomCreateResponse), f"createRoom: {describe(resp)}")
    s.room_id = resp.room_id
    for i in range(1, s.args.messages + 1):
        body = f"history {nonce} #{i}"
        sent = await s.api(s.client.room_send, s.room_id, "m.room.message", {"msgtype": "m.text", "body": body})
        check(isinstance(sent, nio.RoomSendResponse), f"send #{i}: {describe(sent)}")
        s.events.append({"event_id": sent.event_id, "body": body})
    return f"{len(s.events)} messages sent to {s.room_id}"


async def step_login(s: Session) -> str:
    client = s.new_client(s.user_id)
    resp = await s.api(client.login, s.password, device_name="history-check-read")
    check(isinstance(resp, nio.LoginResponse), f"login {s.user_id}: {describe(resp)}")
    SECRETS.add(resp.access_token)
    check(resp.user_id == s.user_id, f"logged in as {resp.user_id}, expected {s.user_id}")
    return f"{s.user_id} logged in with the recorded password"


async def step_messages(s: Session) -> str:
    check(s.room_id and s.events, "no messages to look for")
    base = f"{V3}/rooms/{q(s.room_id)}/messages?dir=b&limit={PAGE_SIZE}"

    async def fetch(token: str | None) -> dict:
        return await s.get(base + (f"&from={quote(token, safe='')}" if token else ""))

    want = {e["event_id"] for e in s.events}
    seen, pages = await paginate(fetch, want, max_pages(len(s.events)))
    problems = compare(s.events, seen, "/messages")
    check(not problems, "; ".join(problems))
    return f"all {len(s.events)} messages with their bodies, in the order sent, over {pages} pages of {PAGE_SIZE}"


async def step_initial_sync(s: Session) -> str:
    check(s.room_id and s.events, "no messages to look for")
    room_filter = {
        "room": {"rooms": [s.room_id], "timeline": {"limit": len(s.events) + 20}},
        "presence": {"types": []},
        "account_data": {"types": []},
    }
    query = quote(json.dumps(room_filter, separators=(",", ":")), safe="")
    sync = await s.get(f"{V3}/sync?timeout=0&filter={query}")
    found = sync_timeline(sync, s.room_id)
    check(found is not None, f"the initial /sync does not list {s.room_id} among the joined rooms")
    events, limited = found
    problems = compare(s.events, message_events(events), "initial /sync")
    check(not problems, "; ".join(problems))
    return f"all {len(s.events)} messages in the room's timeline ({len(events)} events, limited: {limited})"


async def step_context(s: Session) -> str:
    check(s.room_id and s.events, "no messages to look for")
    problems = []
    for event in s.events:
        try:
            body = await s.get(f"{V3}/rooms/{q(s.room_id)}/context/{q(event['event_id'])}?limit=0")
        except CheckFailed as exc:
            problems.append(f"{event['body']!r}: {exc}")
            continue
        found = message_events([body.get("event")])
        if found != [(event["event_id"], event["body"])]:
            problems.append(f"{event['event_id']}: got {found}, sent {event['body']!r}")
    check(not problems, f"/context: {len(problems)} of {len(s.events)} wrong: " + "; ".join(problems))
    return f"each of the {len(s.events)} events found by its ID, with its body"


async def step_save(s: Session) -> str:
    record = make_record(s.args.server_name, s.user_id, s.password, s.room_id, s.events)
    save_record(s.args.record, record)
    return f"{s.args.record} (mode 0600): {s.user_id}, {s.room_id}, {len(s.events)} events"


# Each step: id, title, function, and the steps it needs to have passed.
Step = tuple[str, str, Callable[[Session], Awaitable[str]], tuple[str, ...]]


def checks(after: str) -> list[Step]:
    return [
        ("messages", "every message via /messages", step_messages, (after,)),
        ("sync", "every message in an initial /sync", step_initial_sync, (after,)),
        ("context", "every message by its ID (/context)", step_context, (after,)),
    ]


STEPS: dict[str, list[Step]] = {
    "write": [
        ("register", "register a user", step_register, ()),
        ("send", "a room and its messages", step_send, ("register",)),
        *checks("send"),
        # Only a history the server showed right away is worth checking later.
        ("record", "write the record", step_save, ("messages", "sync", "context")),
    ],
    "read": [("login", "log in as the recorded user", step_login, ()), *checks("login")],
}


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Does a homeserver keep what a client sent? (matrix-nio)")
    p.add_argument("mode", choices=["write", "read"], help="write: send and record; read: check the record")
    p.add_argument("--url", required=True, help="client base URL, https://HOST[:PORT]")
    p.add_argument("--server-name", required=True, help="the homeserver's server_name")
    p.add_argument("--ca-cert", help="CA certificate (PEM) to trust instead of the system store")
    p.add_argument("--tls-server-name", help="name for SNI, certificate check and Host header (see matrix_client_check)")
    p.add_argument("--record", required=True, help="the record file (holds a password: keep it under .lab/)")
    p.add_argument("--messages", type=int, default=DEFAULT_MESSAGES, help=f"write: messages to send (default {DEFAULT_MESSAGES})")
    p.add_argument("--user-prefix", default=None, help="write: localpart prefix of the user (default random)")
    p.add_argument("--timeout", type=float, default=120.0, help="overall bound in seconds (default 120)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="bound of each request (default 30)")
    args = p.parse_args(argv)
    if args.user_prefix is None:
        args.user_prefix = "hist" + secrets.token_hex(4)
    if not re.fullmatch(r"[a-z0-9._=-]{1,100}", args.user_prefix):
        p.error("--user-prefix may only hold a-z 0-9 . _ = -")
    if not 1 <= args.messages <= 100:
        p.error("--messages must be between 1 and 100")
    if args.timeout <= 0 or args.request_timeout <= 0:
        p.error("timeouts must be positive")
    if args.ca_cert and not os.path.isfile(args.ca_cert):
        p.error(f"--ca-cert {args.ca_cert}: no such file")
    if args.mode == "write" and not os.path.isdir(os.path.dirname(os.path.abspath(args.record))):
        p.error(f"--record {args.record}: its directory does not exist")
    try:
        build_target(args.url, args.tls_server_name, args.ca_cert)
    except (ValueError, ssl.SSLError, OSError) as exc:
        p.error(str(exc))
    return args


async def amain(args: argparse.Namespace, record: dict | None) -> int:
    recorder = Recorder()
    clock = Clock(args.timeout, args.request_timeout)
    s = Session(args, recorder, clock)
    if record is not None:
        s.user_id, s.password, s.room_id = record["user_id"], record["password"], record["room_id"]
        s.events = record["events"]
        SECRETS.add(s.password)
    steps = STEPS[args.mode]
    results = [StepResult(sid, title) for sid, title, _f, _n in steps]
    try:
        await asyncio.wait_for(run_steps(s, results, steps), timeout=args.timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        if s.client is not None:
            try:
                if s.client.access_token and clock.remaining() > 2:
                    await asyncio.wait_for(s.client.logout(), timeout=5)
            except Exception:  # noqa: BLE001 - ending the session is best effort
                pass
            try:
                await asyncio.wait_for(s.client.close(), timeout=2)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
    for r in results:
        if r.status in ("NOT RUN", "RUNNING"):
            r.status, r.detail = "FAIL", "overall timeout reached"
    width = max(len(r.title) for r in results)
    print(f"History check ({args.mode}) of {args.url} (server name {args.server_name})")
    for i, r in enumerate(results, 1):
        print(f"{i:>2}  {r.title:<{width}}  {r.status:<7} {r.seconds:>5.1f}s  {r.detail}")
    passed = sum(r.status == "PASS" for r in results)
    print(f"{len(recorder.requests)} HTTP requests; {passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) and not recorder.unrecognized else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    record = None
    if args.mode == "read":
        try:
            record = load_record(args.record, args.server_name)
        except RecordError as exc:
            print(f"history_check: {exc}", file=sys.stderr)
            return 2
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    return asyncio.run(amain(args, record))


if __name__ == "__main__":
    sys.exit(main())
