#!/usr/bin/env python3
"""End-to-end client check of a deployed Matrix homeserver.

Drives two fresh users (alice and bob) through the client-server API with the
real Matrix client library matrix-nio (``nio.AsyncClient``), plus raw
authenticated requests through the same client where nio has no API. Every
HTTP exchange is recorded (method, path without query string, status, step);
any response carrying ``errcode: M_UNRECOGNIZED`` (an endpoint the deployment
did not route or serve) fails the run.

Exit status: 0 only if every step passed; 1 if any step failed, the overall
timeout hit, or some response was M_UNRECOGNIZED; 2 for bad arguments.

Access tokens and passwords are never printed nor written to the report: nio
sends the token in an ``Authorization`` header (never in the URL), the report
records paths without query strings, and passwords are random and kept in
memory only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import ssl
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import quote, urlsplit, urlunsplit

try:
    import aiohttp
    from aiohttp.abc import AbstractResolver
    import nio
    from nio.api import PushRuleKind, ReceiptType, ResizingMethod
    from nio.event_builders import ToDeviceMessage
    from nio.events.account_data import (
        PushEventMatch,
        PushNotify,
        PushSetTweak,
    )
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"matrix_client_check: cannot import matrix-nio/aiohttp ({exc}); "
        "install matrix-nio into the interpreter running this script\n"
    )
    sys.exit(2)


# How long one polling wait (for typing, receipts, sync delivery, the user
# directory...) may take at most, within the overall --timeout.
POLL_WAIT = 30.0
# Long-poll timeout passed to /sync while polling, in milliseconds.
SYNC_LONGPOLL_MS = 2000
MESSAGES_PER_USER = 4
SYNC_FILTER = {"room": {"timeline": {"limit": 100}}}
# A 429 (M_LIMIT_EXCEEDED) is waited out when it asks for at most this many
# seconds (and the overall timeout allows), a few times per call; longer
# waits (e.g. Synapse's per-address login limit) fail the step at once.
MAX_RATE_LIMIT_WAIT = 30.0
RATE_LIMIT_RETRIES = 4


SECRETS: set[str] = set()


def redact(text: str) -> str:
    """Belt and braces: no password or access token of this run ever reaches
    the terminal or the report, whatever text an error carries."""
    for secret in SECRETS:
        if secret and secret in text:
            text = text.replace(secret, "<redacted>")
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class OverallTimeout(Exception):
    """The run's overall --timeout is spent."""


class CheckFailed(Exception):
    """A check inside a step did not hold."""


def check(cond: Any, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


# --------------------------------------------------------------------------
# Recording every HTTP exchange
# --------------------------------------------------------------------------


@dataclass
class Recorder:
    step: str = "setup"
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unrecognized(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r.get("errcode") == "M_UNRECOGNIZED"]

    def step_unrecognized(self, step: str) -> list[dict[str, Any]]:
        return [r for r in self.unrecognized if r["step"] == step]


def _safe_path(path: str) -> str:
    """The URL path without its query string (which may hold filters, tokens
    of older clients, etc.): only the path is ever recorded."""
    return urlsplit(path).path


class Clock:
    def __init__(self, overall: float, per_request: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + overall
        self.per_request = per_request

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def request_timeout(self) -> float:
        remaining = self.remaining()
        if remaining <= 0.05:
            raise OverallTimeout("overall timeout reached")
        return min(self.per_request, remaining)


def instrument(client: nio.AsyncClient, recorder: Recorder, clock: Clock) -> None:
    """Wrap ``client.send`` (the single transport call all of nio's API methods
    go through, and that raw requests use too) to bound each request's time,
    record it, and spot M_UNRECOGNIZED answers."""
    original = client.send

    async def send(
        method: str,
        path: str,
        data: Any = None,
        headers: dict[str, str] | None = None,
        trace_context: Any = None,
        timeout: Any = None,  # noqa: ARG001 - replaced by our own bound
    ) -> aiohttp.ClientResponse:
        entry: dict[str, Any] = {
            "step": recorder.step,
            "method": method.upper(),
            "path": _safe_path(path),
        }
        bound = aiohttp.ClientTimeout(total=clock.request_timeout())
        started = time.monotonic()
        try:
            resp = await original(method, path, data, headers, trace_context, bound)
            body = await resp.read()  # cached: nio reads it again from memory
        except BaseException as exc:
            entry["status"] = None
            entry["error"] = type(exc).__name__
            entry["duration_ms"] = round((time.monotonic() - started) * 1000)
            recorder.requests.append(entry)
            raise
        entry["status"] = resp.status
        entry["duration_ms"] = round((time.monotonic() - started) * 1000)
        if resp.status >= 400:
            errcode = None
            try:
                parsed = json.loads(body)
                if isinstance(parsed, dict):
                    errcode = parsed.get("errcode")
            except ValueError:
                entry["content_type"] = resp.content_type
            if errcode:
                entry["errcode"] = errcode
        recorder.requests.append(entry)
        return resp

    client.send = send  # type: ignore[method-assign]


# --------------------------------------------------------------------------
# Transport: TLS trust, SNI/hostname override
# --------------------------------------------------------------------------


class PinnedResolver(AbstractResolver):
    """Resolve chosen host names to fixed addresses (like curl --resolve):
    the TLS name is then used for SNI, certificate verification and the Host
    header, while the connection goes to the address from --url."""

    def __init__(self, pins: dict[str, str]) -> None:
        self._pins = {k.lower().rstrip("."): v for k, v in pins.items()}
        self._fallback = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: int = socket.AF_INET
    ) -> list[dict[str, Any]]:
        target = self._pins.get(host.lower().rstrip("."))
        if target is None:
            return await self._fallback.resolve(host, port, family)
        try:
            addr = ipaddress.ip_address(target)
        except ValueError:
            results = await self._fallback.resolve(target, port, family)
            for res in results:
                res["hostname"] = host
            return results
        fam = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
        return [
            {
                "hostname": host,
                "host": str(addr),
                "port": port,
                "family": fam,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        await self._fallback.close()


@dataclass
class Target:
    homeserver: str  # base URL nio talks to (host = TLS name if overridden)
    pins: dict[str, str]
    ssl_context: ssl.SSLContext


def build_target(url: str, tls_server_name: str | None, ca_cert: str | None) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"--url must be http(s)://HOST[:PORT], got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError("--url must not carry a query string or fragment")
    if ca_cert:
        # Trust exactly this CA (not the system store) for the deployment.
        ctx = ssl.create_default_context(cafile=ca_cert)
    else:
        ctx = ssl.create_default_context()
    pins: dict[str, str] = {}
    homeserver = url.rstrip("/")
    if tls_server_name:
        name = tls_server_name.strip().rstrip(".")
        if not re.fullmatch(r"[A-Za-z0-9.-]+", name):
            raise ValueError(f"--tls-server-name must be a DNS name, got {name!r}")
        pins[name] = parts.hostname
        netloc = name if parts.port is None else f"{name}:{parts.port}"
        homeserver = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return Target(homeserver=homeserver, pins=pins, ssl_context=ctx)


def make_client(
    target: Target,
    user: str,
    recorder: Recorder,
    clock: Clock,
    request_timeout: float,
) -> nio.AsyncClient:
    config = nio.AsyncClientConfig(
        encryption_enabled=False,
        store_sync_tokens=False,
        request_timeout=request_timeout,
        # nio would sleep as long as a 429 asks (minutes for a login rate
        # limit): it returns the error instead, and Ctx.api/raw decide.
        max_limit_exceeded=0,
        # A timed-out or refused request fails its step, not retried.
        max_timeouts=0,
    )
    client = nio.AsyncClient(
        target.homeserver, user=user, config=config, ssl=target.ssl_context
    )
    # nio builds its aiohttp session lazily; providing one up front lets us
    # choose the connector (pinned resolver for the TLS name).
    connector = aiohttp.TCPConnector(
        resolver=PinnedResolver(target.pins), ssl=target.ssl_context, limit=8
    )
    client.client_session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=request_timeout),
    )
    instrument(client, recorder, clock)
    return client


# --------------------------------------------------------------------------
# Users and their view of /sync
# --------------------------------------------------------------------------


@dataclass
class Actor:
    name: str
    localpart: str
    user_id: str
    password: str
    client: nio.AsyncClient | None = None
    device_id: str | None = None
    synced_once: bool = False
    syncs: int = 0
    # Everything seen through /sync since the first sync:
    messages: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # room -> event_id -> body
    typing: dict[str, list[list[str]]] = field(
        default_factory=dict
    )  # room -> user lists seen
    receipts: set[tuple[str, str, str, str]] = field(
        default_factory=set
    )  # room, event, type, user
    to_device: list[dict[str, Any]] = field(default_factory=list)
    global_account_data: dict[str, dict[str, Any]] = field(default_factory=dict)
    room_account_data: dict[tuple[str, str], dict[str, Any]] = field(
        default_factory=dict
    )
    invites: set[str] = field(default_factory=set)
    joined: set[str] = field(default_factory=set)

    def absorb(self, resp: nio.SyncResponse) -> None:
        for room_id in resp.rooms.invite:
            self.invites.add(room_id)
        for room_id, info in resp.rooms.join.items():
            self.joined.add(room_id)
            for ev in info.timeline.events:
                src = getattr(ev, "source", None) or {}
                if src.get("type") == "m.room.message":
                    body = (src.get("content") or {}).get("body")
                    if isinstance(body, str) and src.get("event_id"):
                        self.messages.setdefault(room_id, {})[src["event_id"]] = body
            for ev in info.ephemeral:
                if isinstance(ev, nio.TypingNoticeEvent):
                    self.typing.setdefault(room_id, []).append(list(ev.users))
                elif isinstance(ev, nio.ReceiptEvent):
                    for r in ev.receipts:
                        rtype = getattr(r.receipt_type, "value", r.receipt_type)
                        self.receipts.add((room_id, r.event_id, str(rtype), r.user_id))
            for ev in info.account_data:
                if isinstance(ev, nio.UnknownAccountDataEvent):
                    self.room_account_data[(room_id, ev.type)] = ev.content
        for ev in resp.to_device_events:
            src = getattr(ev, "source", None) or {}
            self.to_device.append(
                {
                    "type": src.get("type", getattr(ev, "type", None)),
                    "sender": src.get("sender", getattr(ev, "sender", None)),
                    "content": src.get("content", {}),
                }
            )
        for ev in resp.account_data_events:
            if isinstance(ev, nio.UnknownAccountDataEvent):
                self.global_account_data[ev.type] = ev.content


class Ctx:
    def __init__(self, args: argparse.Namespace, recorder: Recorder, clock: Clock):
        self.args = args
        self.recorder = recorder
        self.clock = clock
        self.server_name: str = args.server_name
        self.target = build_target(args.url, args.tls_server_name, args.ca_cert)
        prefix = args.user_prefix
        self.alice = Actor(
            "alice",
            f"{prefix}-alice",
            f"@{prefix}-alice:{self.server_name}",
            secrets.token_urlsafe(24),
        )
        self.bob = Actor(
            "bob",
            f"{prefix}-bob",
            f"@{prefix}-bob:{self.server_name}",
            secrets.token_urlsafe(24),
        )
        SECRETS.update((self.alice.password, self.bob.password))
        self.nonce = secrets.token_hex(6)
        self.room_id: str | None = None
        self.sent: dict[str, str] = {}  # event_id -> body
        self.last_event: dict[str, str] = {}  # actor name -> last event_id sent
        self.clients: list[nio.AsyncClient] = []

    def new_client(self, user: str) -> nio.AsyncClient:
        c = make_client(
            self.target, user, self.recorder, self.clock, self.args.request_timeout
        )
        self.clients.append(c)
        return c

    async def sync(self, actor: Actor) -> None:
        assert actor.client is not None
        wait_ms = SYNC_LONGPOLL_MS if actor.synced_once else 0
        wait_ms = int(max(0, min(wait_ms, (self.clock.remaining() - 3) * 1000)))
        resp = await self.api(
            actor.client.sync, timeout=wait_ms, sync_filter=SYNC_FILTER
        )
        check(
            isinstance(resp, nio.SyncResponse),
            f"{actor.name}: /sync failed: {describe(resp)}",
        )
        actor.synced_once = True
        actor.syncs += 1
        actor.absorb(resp)

    async def poll(
        self,
        actor: Actor,
        predicate: Callable[[], bool],
        what: str,
        wait: float = POLL_WAIT,
    ) -> None:
        """Incremental /sync as ``actor`` until ``predicate`` holds; bounded
        by ``wait`` seconds and by the overall timeout."""
        end = time.monotonic() + min(wait, max(0.0, self.clock.remaining()))
        rounds = 0
        while True:
            if predicate():
                return
            if time.monotonic() >= end or rounds >= 200:
                raise CheckFailed(
                    f"{actor.name} did not see {what} via /sync within {wait:.0f}s"
                )
            await self.sync(actor)
            rounds += 1

    async def raw(
        self,
        actor: Actor,
        method: str,
        path: str,
        body: Any = None,
    ) -> tuple[int, Any]:
        """An authenticated request through the actor's nio client (for the
        endpoints nio has no method for). Retries a few 429s."""
        assert actor.client is not None and actor.client.access_token
        headers = {
            "Authorization": f"Bearer {actor.client.access_token}",
            "Content-Type": "application/json",
        }
        data = json.dumps(body) if body is not None else None
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            resp = await actor.client.send(method, path, data, headers)
            raw_body = await resp.read()
            try:
                parsed = json.loads(raw_body) if raw_body else None
            except ValueError:
                parsed = None
            if resp.status != 429 or attempt == RATE_LIMIT_RETRIES:
                break
            retry_ms = (
                parsed.get("retry_after_ms") if isinstance(parsed, dict) else None
            )
            await self.rate_limit_pause(retry_ms, f"{method} {_safe_path(path)}")
        return resp.status, parsed

    async def rate_limit_pause(self, retry_after_ms: Any, what: str) -> None:
        """Wait as a 429 asks if that is short and fits in the time left;
        otherwise fail the step at once, saying so."""
        try:
            wait = max(0.0, float(retry_after_ms) / 1000) if retry_after_ms else 1.0
        except (TypeError, ValueError):
            wait = 1.0
        if wait > MAX_RATE_LIMIT_WAIT or wait > self.clock.remaining() - 2:
            raise CheckFailed(
                f"{what}: rate-limited (HTTP 429), the server asks to wait {wait:.0f}s; "
                "raise the rate limits for the checking client or retry later"
            )
        await asyncio.sleep(wait)

    async def api(
        self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any
    ) -> Any:
        """Call a nio AsyncClient method, pausing on short rate limits."""
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            result = await method(*args, **kwargs)
            resp = result[0] if isinstance(result, tuple) else result
            transport = getattr(resp, "transport_response", None)
            limited = isinstance(resp, nio.ErrorResponse) and (
                resp.status_code == "M_LIMIT_EXCEEDED"
                or getattr(transport, "status", None) == 429
            )
            if not limited or attempt == RATE_LIMIT_RETRIES:
                return result
            await self.rate_limit_pause(
                getattr(resp, "retry_after_ms", None), f"{method.__name__}"
            )
        return result


def describe(resp: Any) -> str:
    """A short, secret-free description of a nio response."""
    if isinstance(resp, nio.ErrorResponse):
        code = resp.status_code or ""
        msg = (resp.message or "").replace("\n", " ")[:160]
        return f"{type(resp).__name__} {code} {msg}".strip()
    return type(resp).__name__


def q(segment: str) -> str:
    return quote(segment, safe="")


V3 = "/_matrix/client/v3"


# --------------------------------------------------------------------------
# A small PNG made here, and image sniffing
# --------------------------------------------------------------------------


def make_png(width: int = 64, height: int = 64, seed: int = 0) -> bytes:
    rows = []
    for y in range(height):
        row = bytearray([0])  # filter type 0 (None)
        for x in range(width):
            row += bytes(
                ((x * 4 + seed) % 256, (y * 4) % 256, ((x + y) * 2 + seed) % 256)
            )
        rows.append(bytes(row))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) for PNG, JPEG, GIF or WebP (VP8X) bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return "png", w, h
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return "gif", w, h
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", 0, 0
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3):
                h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                return "jpeg", w, h
            seg_len = struct.unpack(">H", data[i + 2 : i + 4])[0]
            i += 2 + seg_len
        return "jpeg", 0, 0
    return None


def b64(n: int) -> str:
    return base64.b64encode(os.urandom(n)).decode().rstrip("=")


# --------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------


async def step_register(ctx: Ctx) -> str:
    done = []
    for actor in (ctx.alice, ctx.bob):
        client = ctx.new_client(actor.localpart)
        resp = await ctx.api(
            client.register,
            actor.localpart,
            actor.password,
            device_name="e2e-registration",
        )
        check(
            isinstance(resp, nio.RegisterResponse),
            f"register {actor.localpart}: {describe(resp)}",
        )
        SECRETS.add(resp.access_token)
        # Drop the registration session: the next step logs in separately.
        out = await ctx.api(client.logout)
        await client.close()
        check(
            resp.user_id == actor.user_id,
            f"registered as {resp.user_id}, expected {actor.user_id} (wrong --server-name?)",
        )
        check(
            isinstance(out, nio.LogoutResponse),
            f"logout after register: {describe(out)}",
        )
        done.append(resp.user_id)
    return "registered " + ", ".join(done)


async def step_login(ctx: Ctx) -> str:
    out = []
    for actor in (ctx.alice, ctx.bob):
        client = ctx.new_client(actor.user_id)
        resp = await ctx.api(
            client.login, actor.password, device_name=f"e2e-check-{actor.name}"
        )
        check(
            isinstance(resp, nio.LoginResponse), f"login {actor.name}: {describe(resp)}"
        )
        SECRETS.add(resp.access_token)
        check(resp.user_id == actor.user_id, f"login returned {resp.user_id}")
        actor.client = client
        actor.device_id = resp.device_id
        who = await ctx.api(client.whoami)
        check(
            isinstance(who, nio.WhoamiResponse), f"whoami {actor.name}: {describe(who)}"
        )
        check(who.user_id == actor.user_id, f"whoami says {who.user_id}")
        check(
            who.device_id in (None, actor.device_id),
            f"whoami device {who.device_id} != login device {actor.device_id}",
        )
        out.append(f"{actor.name} device {actor.device_id}")
    return "; ".join(out)


async def step_room(ctx: Ctx) -> str:
    alice, bob = ctx.alice, ctx.bob
    # First syncs, so later incremental syncs show what changes from here on.
    await ctx.sync(alice)
    await ctx.sync(bob)
    resp = await ctx.api(
        alice.client.room_create,
        name=f"e2e check {ctx.nonce}",
        topic="matrix_client_check",
        preset=nio.RoomPreset.private_chat,
    )
    check(isinstance(resp, nio.RoomCreateResponse), f"createRoom: {describe(resp)}")
    room_id = resp.room_id
    ctx.room_id = room_id
    inv = await ctx.api(alice.client.room_invite, room_id, bob.user_id)
    check(isinstance(inv, nio.RoomInviteResponse), f"invite: {describe(inv)}")
    await ctx.poll(bob, lambda: room_id in bob.invites, "the invite")
    joined = await ctx.api(bob.client.join, room_id)
    check(isinstance(joined, nio.JoinResponse), f"bob join: {describe(joined)}")
    members = await ctx.api(alice.client.joined_members, room_id)
    check(
        isinstance(members, nio.JoinedMembersResponse),
        f"joined_members: {describe(members)}",
    )
    ids = {m.user_id for m in members.members}
    check({alice.user_id, bob.user_id} <= ids, f"joined members are {sorted(ids)}")
    await ctx.poll(bob, lambda: room_id in bob.joined, "the joined room")
    return f"room {room_id}: created, invite seen in bob's sync, both joined"


async def step_messages(ctx: Ctx) -> str:
    room_id = ctx.room_id
    check(room_id, "no room (room step failed)")
    for i in range(MESSAGES_PER_USER):
        for actor in (ctx.alice, ctx.bob):
            body = f"e2e {ctx.nonce} {actor.name} #{i + 1}"
            resp = await ctx.api(
                actor.client.room_send,
                room_id,
                "m.room.message",
                {"msgtype": "m.text", "body": body},
            )
            check(
                isinstance(resp, nio.RoomSendResponse),
                f"{actor.name} send #{i + 1}: {describe(resp)}",
            )
            ctx.sent[resp.event_id] = body
            ctx.last_event[actor.name] = resp.event_id
    return f"{len(ctx.sent)} messages sent ({MESSAGES_PER_USER} each)"


async def step_typing(ctx: Ctx) -> str:
    alice, bob, room_id = ctx.alice, ctx.bob, ctx.room_id
    check(room_id, "no room")
    resp = await ctx.api(
        alice.client.room_typing, room_id, typing_state=True, timeout=30000
    )
    check(isinstance(resp, nio.RoomTypingResponse), f"typing on: {describe(resp)}")
    await ctx.poll(
        bob,
        lambda: any(alice.user_id in users for users in bob.typing.get(room_id, [])),
        "alice typing",
    )
    seen_on = len(bob.typing.get(room_id, []))
    resp = await ctx.api(alice.client.room_typing, room_id, typing_state=False)
    check(isinstance(resp, nio.RoomTypingResponse), f"typing off: {describe(resp)}")
    await ctx.poll(
        bob,
        lambda: any(
            alice.user_id not in users
            for users in bob.typing.get(room_id, [])[seen_on:]
        ),
        "alice stop typing",
    )
    return "bob saw m.typing with alice, then without her"


async def step_receipts(ctx: Ctx) -> str:
    alice, bob, room_id = ctx.alice, ctx.bob, ctx.room_id
    event_id = ctx.last_event.get("alice")
    check(room_id and event_id, "no message from alice to acknowledge")
    resp = await ctx.api(
        bob.client.update_receipt_marker, room_id, event_id, ReceiptType.read
    )
    check(
        isinstance(resp, nio.UpdateReceiptMarkerResponse),
        f"receipt: {describe(resp)}",
    )
    key = (room_id, event_id, "m.read", bob.user_id)
    await ctx.poll(alice, lambda: key in alice.receipts, "bob's m.read receipt")
    return f"alice saw bob's m.read on {event_id}"


async def step_presence(ctx: Ctx) -> str:
    alice, bob = ctx.alice, ctx.bob
    seen = []
    # One PUT per user: Synapse rate-limits presence updates per user
    # (rc_presence), so alice sets "online" and bob "unavailable"; each state
    # is read back by its owner and by the other user (they share a room).
    for setter, state, other in ((alice, "online", bob), (bob, "unavailable", alice)):
        msg = f"e2e {ctx.nonce} {setter.name} {state}"
        resp = await ctx.api(setter.client.set_presence, state, status_msg=msg)
        check(
            isinstance(resp, nio.PresenceSetResponse),
            f"{setter.name} set {state}: {describe(resp)}",
        )
        for reader in (setter, other):
            # Presence may be handled by another worker: allow a short delay.
            end = time.monotonic() + min(10.0, max(0.0, ctx.clock.remaining()))
            while True:
                got = await ctx.api(reader.client.get_presence, setter.user_id)
                check(
                    isinstance(got, nio.PresenceGetResponse),
                    f"{reader.name} GET {setter.name}'s presence: {describe(got)}",
                )
                if got.presence == state and got.status_msg == msg:
                    break
                if time.monotonic() >= end:
                    raise CheckFailed(
                        f"{reader.name} read {setter.name}'s presence as "
                        f"{got.presence!r}/{got.status_msg!r}, expected {state!r}/{msg!r}"
                    )
                await asyncio.sleep(0.5)
        seen.append(f"{setter.name} {state}")
    return "set with a status message and read back by both users: " + ", ".join(seen)


async def step_to_device(ctx: Ctx) -> str:
    alice, bob = ctx.alice, ctx.bob
    ev_type = "org.example.e2e_check"
    content = {"nonce": ctx.nonce, "hello": "bob"}
    msg = ToDeviceMessage(ev_type, bob.user_id, bob.device_id, content)
    resp = await ctx.api(alice.client.to_device, msg, tx_id=f"e2e{ctx.nonce}")
    check(isinstance(resp, nio.ToDeviceResponse), f"sendToDevice: {describe(resp)}")

    def arrived() -> bool:
        return any(
            e["type"] == ev_type
            and e["sender"] == alice.user_id
            and e["content"].get("nonce") == ctx.nonce
            for e in bob.to_device
        )

    await ctx.poll(bob, arrived, "alice's to-device event")
    return f"bob's device {bob.device_id} received {ev_type}"


async def step_account_data(ctx: Ctx) -> str:
    alice, room_id = ctx.alice, ctx.room_id
    check(room_id, "no room")
    uid = q(alice.user_id)
    g_type, r_type = "org.example.e2e.global", "org.example.e2e.room"
    g_content = {"nonce": ctx.nonce, "scope": "global"}
    r_content = {"nonce": ctx.nonce, "scope": "room"}
    g_path = f"{V3}/user/{uid}/account_data/{g_type}"
    r_path = f"{V3}/user/{uid}/rooms/{q(room_id)}/account_data/{r_type}"
    for path, content in ((g_path, g_content), (r_path, r_content)):
        status, body = await ctx.raw(alice, "PUT", path, content)
        check(status == 200, f"PUT account data: HTTP {status} {body}")
        status, body = await ctx.raw(alice, "GET", path)
        check(
            status == 200 and body == content, f"GET account data: HTTP {status} {body}"
        )
    await ctx.poll(
        alice,
        lambda: alice.global_account_data.get(g_type) == g_content
        and alice.room_account_data.get((room_id, r_type)) == r_content,
        "the global and room account data",
    )
    return "global and room account data set, read back and seen in sync"


async def step_push_rule(ctx: Ctx) -> str:
    alice = ctx.alice
    rule_id = f"e2e_{ctx.nonce}"
    path = f"{V3}/pushrules/global/override/{rule_id}"
    resp = await ctx.api(
        alice.client.set_pushrule,
        "global",
        PushRuleKind.override,
        rule_id,
        actions=[PushNotify(), PushSetTweak("sound", "default")],
        conditions=[PushEventMatch("content.body", f"*{ctx.nonce}*")],
    )
    check(isinstance(resp, nio.SetPushRuleResponse), f"set push rule: {describe(resp)}")
    status, body = await ctx.raw(alice, "GET", path)
    check(status == 200 and isinstance(body, dict), f"GET push rule: HTTP {status}")
    check(body.get("rule_id") == rule_id, f"rule_id {body.get('rule_id')!r}")
    patterns = [c.get("pattern") for c in body.get("conditions", [])]
    check(f"*{ctx.nonce}*" in patterns, f"conditions {body.get('conditions')}")
    check("notify" in body.get("actions", []), f"actions {body.get('actions')}")
    # Disable it, read the flag back.
    en = await ctx.api(
        alice.client.enable_pushrule, "global", PushRuleKind.override, rule_id, False
    )
    check(
        isinstance(en, nio.EnablePushRuleResponse), f"disable push rule: {describe(en)}"
    )
    status, body = await ctx.raw(alice, "GET", f"{path}/enabled")
    check(
        status == 200 and body == {"enabled": False},
        f"GET enabled: HTTP {status} {body}",
    )
    status, body = await ctx.raw(alice, "GET", f"{V3}/pushrules/")
    check(status == 200, f"GET pushrules: HTTP {status}")
    listed = [r.get("rule_id") for r in body.get("global", {}).get("override", [])]
    check(rule_id in listed, "rule missing from GET /pushrules/")
    dl = await ctx.api(
        alice.client.delete_pushrule, "global", PushRuleKind.override, rule_id
    )
    check(
        isinstance(dl, nio.DeletePushRuleResponse), f"delete push rule: {describe(dl)}"
    )
    status, body = await ctx.raw(alice, "GET", path)
    check(status == 404, f"rule still there after delete: HTTP {status}")
    return f"override rule {rule_id}: created, read back, disabled, listed, deleted (then 404)"


async def step_media(ctx: Ctx) -> str:
    alice, bob = ctx.alice, ctx.bob
    png = make_png(64, 64, seed=int(ctx.nonce[:2], 16))
    up, _ = await ctx.api(
        alice.client.upload,
        io.BytesIO(png),
        content_type="image/png",
        filename="e2e.png",
        filesize=len(png),
    )
    check(isinstance(up, nio.UploadResponse), f"upload: {describe(up)}")
    mxc = up.content_uri
    parts = urlsplit(mxc)
    check(
        parts.scheme == "mxc" and parts.netloc and parts.path.strip("/"),
        f"bad URI {mxc}",
    )
    server, media_id = parts.netloc, parts.path.strip("/")
    check(server == ctx.server_name, f"media server {server} != {ctx.server_name}")
    first_dl = len(ctx.recorder.requests)
    # Bob downloads (another user), alice thumbnails.
    dl = await ctx.api(bob.client.download, mxc=mxc)
    check(isinstance(dl, nio.MemoryDownloadResponse), f"download: {describe(dl)}")
    check(
        dl.body == png,
        f"downloaded {len(dl.body)} bytes differ from the {len(png)} uploaded",
    )
    check(
        (dl.content_type or "").startswith("image/png"),
        f"download type {dl.content_type}",
    )
    th = await ctx.api(
        alice.client.thumbnail, server, media_id, 32, 32, ResizingMethod.crop
    )
    check(isinstance(th, nio.ThumbnailResponse), f"thumbnail: {describe(th)}")
    ctype = th.content_type or ""
    check(ctype.startswith("image/"), f"thumbnail content type {ctype!r}")
    size = image_size(th.body)
    check(
        size is not None,
        f"thumbnail is not a recognisable image ({len(th.body)} bytes)",
    )
    fmt, w, h = size
    check(w <= 64 and h <= 64, f"thumbnail is {w}x{h}, larger than the 64x64 original")
    status, cfg = await ctx.raw(alice, "GET", "/_matrix/client/v1/media/config")
    check(status == 200 and isinstance(cfg, dict), f"media config: HTTP {status}")
    media_paths = [
        r["path"]
        for r in ctx.recorder.requests[first_dl:]
        if "/download/" in r["path"] or "/thumbnail/" in r["path"]
    ]
    check(
        media_paths
        and all(p.startswith("/_matrix/client/v1/media/") for p in media_paths),
        f"media fetched outside the authenticated endpoints: {media_paths}",
    )
    return (
        f"uploaded {len(png)}-byte PNG as {mxc}; download identical; "
        f"thumbnail {fmt} {w}x{h} ({ctype})"
    )


async def step_user_directory(ctx: Ctx) -> str:
    alice, bob = ctx.alice, ctx.bob
    end = time.monotonic() + min(POLL_WAIT, max(0.0, ctx.clock.remaining()))
    tries = 0
    while True:
        tries += 1
        status, body = await ctx.raw(
            alice,
            "POST",
            f"{V3}/user_directory/search",
            {"search_term": bob.localpart, "limit": 10},
        )
        check(
            status == 200 and isinstance(body, dict),
            f"user_directory/search: HTTP {status} {body}",
        )
        found = [r.get("user_id") for r in body.get("results", [])]
        if bob.user_id in found:
            return f"alice found bob after {tries} search(es)"
        if time.monotonic() >= end:
            raise CheckFailed(
                f"bob not in the user directory after {tries} searches: {found}"
            )
        await asyncio.sleep(1.0)


async def step_sync_messages(ctx: Ctx) -> str:
    room_id = ctx.room_id
    check(room_id and ctx.sent, "no messages were sent")
    wanted = dict(ctx.sent)
    for actor in (ctx.alice, ctx.bob):
        # At least one more incremental sync here, whatever was seen before.
        await ctx.sync(actor)

        def all_seen(a: Actor = actor) -> bool:
            seen = a.messages.get(room_id, {})
            return all(seen.get(eid) == body for eid, body in wanted.items())

        try:
            await ctx.poll(actor, all_seen, f"all {len(wanted)} messages")
        except CheckFailed:
            seen = actor.messages.get(room_id, {})
            missing = [b for e, b in wanted.items() if seen.get(e) != b]
            raise CheckFailed(f"{actor.name} never saw via /sync: {missing}") from None
    return (
        f"alice and bob each saw all {len(wanted)} messages via /sync "
        f"({ctx.alice.syncs} and {ctx.bob.syncs} syncs in all)"
    )


async def step_keys(ctx: Ctx) -> str:
    alice, bob = ctx.alice, ctx.bob
    dev = alice.device_id
    ed, curve, otk = b64(32), b64(32), b64(32)
    otk_id = f"signed_curve25519:{secrets.token_hex(3).upper()}"
    upload = {
        "device_keys": {
            "user_id": alice.user_id,
            "device_id": dev,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {f"curve25519:{dev}": curve, f"ed25519:{dev}": ed},
            # Dummy signature: the server stores keys, clients verify them.
            "signatures": {alice.user_id: {f"ed25519:{dev}": b64(64)}},
        },
        "one_time_keys": {
            otk_id: {
                "key": otk,
                "signatures": {alice.user_id: {f"ed25519:{dev}": b64(64)}},
            }
        },
    }
    status, body = await ctx.raw(alice, "POST", f"{V3}/keys/upload", upload)
    check(
        status == 200 and isinstance(body, dict), f"keys/upload: HTTP {status} {body}"
    )
    counts = body.get("one_time_key_counts", {})
    check(counts.get("signed_curve25519", 0) >= 1, f"one_time_key_counts {counts}")
    status, body = await ctx.raw(
        bob,
        "POST",
        f"{V3}/keys/query",
        {"device_keys": {alice.user_id: []}, "timeout": 10000},
    )
    check(status == 200 and isinstance(body, dict), f"keys/query: HTTP {status} {body}")
    got = body.get("device_keys", {}).get(alice.user_id, {}).get(dev)
    check(got is not None, f"bob's keys/query has no key for alice's device {dev}")
    check(
        got.get("keys", {}).get(f"ed25519:{dev}") == ed, "queried ed25519 key differs"
    )
    status, body = await ctx.raw(
        bob,
        "POST",
        f"{V3}/keys/claim",
        {
            "one_time_keys": {alice.user_id: {dev: "signed_curve25519"}},
            "timeout": 10000,
        },
    )
    check(status == 200 and isinstance(body, dict), f"keys/claim: HTTP {status} {body}")
    claimed = body.get("one_time_keys", {}).get(alice.user_id, {}).get(dev, {})
    check(
        claimed.get(otk_id, {}).get("key") == otk,
        f"claimed {sorted(claimed)} instead of {otk_id}",
    )
    return f"device keys + 1 OTK uploaded for {dev}; bob queried the device key and claimed the OTK"


STEPS: list[tuple[str, str, Callable[[Ctx], Awaitable[str]], tuple[str, ...]]] = [
    # (id, title, function, steps it needs)
    ("register", "register alice and bob", step_register, ()),
    ("login", "password login", step_login, ("register",)),
    ("room", "create room, invite, join", step_room, ("login",)),
    ("messages", "send messages", step_messages, ("room",)),
    ("typing", "typing notifications", step_typing, ("room",)),
    ("receipts", "read receipts", step_receipts, ("messages",)),
    ("presence", "presence", step_presence, ("login",)),
    ("to_device", "to-device messages", step_to_device, ("login",)),
    ("account_data", "account data", step_account_data, ("room",)),
    ("push_rules", "push rules", step_push_rule, ("login",)),
    ("media", "media upload/download/thumbnail", step_media, ("login",)),
    ("user_directory", "user directory search", step_user_directory, ("room",)),
    ("sync", "/sync delivers every message", step_sync_messages, ("messages",)),
    ("keys", "keys upload/query/claim", step_keys, ("login",)),
]


@dataclass
class StepResult:
    id: str
    title: str
    status: str = "NOT RUN"  # PASS / FAIL / NOT RUN
    detail: str = ""
    seconds: float = 0.0


async def run_steps(ctx: Any, results: list[StepResult], steps: list | None = None) -> None:
    """Runs each step (id, title, coroutine function, ids it needs) in order,
    STEPS unless given, filling its result. ``ctx`` is what the steps take; it
    has the ``recorder``, ``clock`` and ``args`` (``request_timeout``) this
    reads. The sibling checks run their own steps through it."""
    by_id = {r.id: r for r in results}
    for (sid, _title, func, needs), res in zip(STEPS if steps is None else steps, results):
        ctx.recorder.step = sid
        started = time.monotonic()
        missing = [n for n in needs if by_id[n].status != "PASS"]
        if missing:
            res.status = "FAIL"
            res.detail = f"skipped: needs {', '.join(missing)}"
            continue
        res.status = "RUNNING"
        try:
            if ctx.clock.remaining() <= 0:
                raise OverallTimeout("overall timeout reached")
            res.detail = await func(ctx)
            res.status = "PASS"
        except CheckFailed as exc:
            res.status, res.detail = "FAIL", str(exc)
        except OverallTimeout as exc:
            res.status, res.detail = "FAIL", str(exc)
        except asyncio.TimeoutError:
            res.status = "FAIL"
            if ctx.clock.remaining() <= 0.5:
                res.detail = "overall timeout reached"
            else:
                last = ctx.recorder.requests[-1] if ctx.recorder.requests else None
                where = f" ({last['method']} {last['path']})" if last else ""
                res.detail = (
                    f"request timed out{where}: no answer within "
                    f"{ctx.args.request_timeout:.0f}s (--request-timeout)"
                )
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            res.status, res.detail = (
                "FAIL",
                f"transport error: {type(exc).__name__}: {exc}",
            )
        except Exception as exc:  # a bug or an unexpected answer shape
            res.status, res.detail = "FAIL", f"{type(exc).__name__}: {exc}"
        finally:
            res.seconds = time.monotonic() - started
        bad = ctx.recorder.step_unrecognized(sid)
        if bad:
            res.status = "FAIL"
            listed = ", ".join(f"{r['method']} {r['path']}" for r in bad)
            res.detail = f"M_UNRECOGNIZED from {listed}; " + res.detail
        res.detail = redact(res.detail)


async def log_out(ctx: Ctx) -> None:
    """Best effort, not a step: end the two login sessions (the accounts
    stay; without admin rights a client cannot delete them)."""
    ctx.recorder.step = "cleanup"
    for actor in (ctx.alice, ctx.bob):
        if actor.client is None or not actor.client.access_token:
            continue
        if ctx.clock.remaining() < 2:
            return
        try:
            await actor.client.logout()
        except Exception:  # noqa: BLE001 - cleanup only
            pass


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="End-to-end Matrix client check of a homeserver deployment "
        "(matrix-nio). Exit 0 only if every step passed.",
    )
    p.add_argument("--url", required=True, help="client base URL, https://HOST[:PORT]")
    p.add_argument("--server-name", required=True, help="the homeserver's server_name")
    p.add_argument(
        "--ca-cert", help="CA certificate (PEM) to trust instead of the system store"
    )
    p.add_argument(
        "--tls-server-name",
        help="name for SNI, certificate check and Host header when the URL host "
        "is an address or another name (connects to the URL's host)",
    )
    p.add_argument(
        "--user-prefix",
        default=None,
        help="localpart prefix of the test users (default: random, e2e<hex>)",
    )
    p.add_argument(
        "--report", help="write a JSON report of every step and request here"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="overall bound in seconds (default 300)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="bound of each HTTP request in seconds (default 30)",
    )
    args = p.parse_args(argv)
    if args.user_prefix is None:
        args.user_prefix = "e2e" + secrets.token_hex(4)
    if not re.fullmatch(r"[a-z0-9._=-]{1,100}", args.user_prefix):
        p.error("--user-prefix may only hold a-z 0-9 . _ = -")
    if args.timeout <= 0 or args.request_timeout <= 0:
        p.error("timeouts must be positive")
    if args.ca_cert and not os.path.isfile(args.ca_cert):
        p.error(f"--ca-cert {args.ca_cert}: no such file")
    try:
        build_target(args.url, args.tls_server_name, args.ca_cert)
    except (ValueError, ssl.SSLError, OSError) as exc:
        p.error(str(exc))
    return args


def print_summary(
    args: argparse.Namespace, results: list[StepResult], recorder: Recorder
) -> None:
    width = max(len(r.title) for r in results)
    print()
    print(
        f"Matrix client check of {args.url} (server name {args.server_name}, users {args.user_prefix}-*)"
    )
    print(f"{'#':>2}  {'step':<{width}}  {'result':<7} {'time':>6}  detail")
    for i, r in enumerate(results, 1):
        detail = r.detail.replace("\n", " ")
        print(f"{i:>2}  {r.title:<{width}}  {r.status:<7} {r.seconds:>5.1f}s  {detail}")
    statuses: dict[str, int] = {}
    for req in recorder.requests:
        key = (
            str(req["status"])
            if req["status"] is not None
            else req.get("error", "error")
        )
        statuses[key] = statuses.get(key, 0) + 1
    print(
        f"{len(recorder.requests)} HTTP requests; status counts: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    )
    bad = recorder.unrecognized
    if bad:
        print(f"M_UNRECOGNIZED responses ({len(bad)}):")
        for r in bad:
            print(f"  [{r['step']}] {r['method']} {r['path']} -> {r['status']}")
    else:
        print("M_UNRECOGNIZED responses: none")
    passed = sum(r.status == "PASS" for r in results)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")


async def amain(args: argparse.Namespace) -> int:
    recorder = Recorder()
    clock = Clock(args.timeout, args.request_timeout)
    results = [StepResult(sid, title) for sid, title, _f, _n in STEPS]
    ctx = Ctx(args, recorder, clock)
    started_at = time.time()
    try:
        # Every request and wait is bounded by the time left; this is the
        # hard stop in case anything still runs at the deadline.
        await asyncio.wait_for(run_steps(ctx, results), timeout=args.timeout)
        await asyncio.wait_for(log_out(ctx), timeout=max(0.1, clock.remaining()))
    except asyncio.TimeoutError:
        pass
    finally:
        for c in ctx.clients:
            try:
                await asyncio.wait_for(c.close(), timeout=2)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
    for r in results:
        if r.status == "RUNNING":
            r.status, r.detail = "FAIL", "overall timeout reached"
        elif r.status == "NOT RUN":
            r.status, r.detail = "FAIL", "not run: overall timeout reached"
    ok = all(r.status == "PASS" for r in results) and not recorder.unrecognized
    print_summary(args, results, recorder)
    if args.report:
        report = {
            "tool": "tests/e2e/matrix_client_check.py",
            "url": args.url,
            "tls_server_name": args.tls_server_name,
            "server_name": args.server_name,
            "user_prefix": args.user_prefix,
            "users": [ctx.alice.user_id, ctx.bob.user_id],
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
            "duration_s": round(time.time() - started_at, 3),
            "passed": ok,
            "steps": [
                {
                    "step": r.id,
                    "title": r.title,
                    "status": r.status,
                    "detail": r.detail,
                    "seconds": round(r.seconds, 3),
                }
                for r in results
            ],
            "unrecognized": recorder.unrecognized,
            "requests": recorder.requests,
        }
        with open(args.report, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")
        print(f"report written to {args.report}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
