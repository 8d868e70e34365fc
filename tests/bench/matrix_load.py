#!/usr/bin/env python3
"""Bounded Matrix load through nginx: flood throughput and quiet-room latency.

    .venv/bin/python tests/bench/matrix_load.py --url https://ADDR \\
        --ca-cert CA.pem --server-name NAME [--address IP] [--json OUT]

Fresh users register themselves (open registration; names under a random
prefix per run, passwords in memory only) with matrix-nio (nio.AsyncClient):
--senders and --readers join one busy room; --quiet-users come in pairs,
each pair in a room of its own, one sending, the other syncing. After that
(the setup, timed apart) three phases, each at most --phase-seconds:

    idle   no flood; each quiet sender sends a message every second and its
           partner's long-poll /sync notes when it arrives (the latency)
    busy   the senders flood the busy room in closed loop (each sends again
           as soon as its previous send returned); quiet latency measured
    fixed  the senders offer exactly --fixed-rate messages a second between
           them (open loop, on a schedule); quiet latency measured

The readers /sync the busy room all along. A latency is the arrival in a
/sync minus the start of the send; percentiles are nearest-rank
(load_stats.py). The JSON document (stdout, and --json) has the same shape
every run, for comparing runs; a summary goes to stderr.

Exit 0 when the run completed (errors are figures, not a verdict), 1 when
the setup failed or the overall --timeout hit (what was measured is still
printed), 2 for bad arguments. Tokens and passwords are never printed.
Synapse must allow the flood: raise rc_message (and rc_registration).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import platform
import re
import secrets
import ssl
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:
    import aiohttp
    import nio
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"matrix_load: cannot import matrix-nio/aiohttp ({exc}); "
        "install matrix-nio into the interpreter running this script\n"
    )
    sys.exit(2)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "e2e"))

import load_stats  # noqa: E402

# The end-to-end check's transport: trust of one CA, pinned name resolution,
# redaction of this run's secrets, secret-free descriptions of responses.
from matrix_client_check import (  # noqa: E402
    SECRETS,
    PinnedResolver,
    RedactingFilter,
    build_target,
    describe,
    redact,
)

PHASES = ("idle", "busy", "fixed")
# Long-poll timeout of every measuring /sync, in milliseconds.
SYNC_TIMEOUT_MS = 5000
# Each quiet sender sends one message this often, in seconds.
QUIET_INTERVAL = 1.0
# A scheduled send that starts more than this many seconds after its slot is
# counted late; slots more than MAX_BEHIND seconds overdue are skipped, so a
# sender that fell behind sends at most MAX_BEHIND seconds' worth at once.
LATE_AFTER = 0.1
MAX_BEHIND = 1.0
# After each phase, at most this many seconds for what was sent in it to
# reach the partners and readers (not part of the phase's seconds).
DRAIN_SECONDS = 10.0
# Setup only: a 429 is waited out this many times per call, if it asks for
# at most MAX_SETUP_WAIT seconds.
SETUP_RETRIES = 6
MAX_SETUP_WAIT = 30.0
# Registrations at once (each costs the server a password hash).
REGISTER_CONCURRENCY = 4
# After an error in a sending or syncing loop, pause this long before going
# on, so that a failing server is not hammered.
ERROR_PAUSE = 0.2
# Error descriptions kept per phase, for the report.
ERROR_SAMPLES = 3
SYNC_FILTER = {
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
    "room": {
        "timeline": {"limit": 200},
        "ephemeral": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
        "state": {"lazy_load_members": True},
    },
}


class SetupFailed(Exception):
    """The users or rooms could not be made ready."""


class OverallTimeout(Exception):
    """The overall --timeout cut the run short."""


def now() -> float:
    return time.monotonic()


# --------------------------------------------------------------------------
# Figures of one phase
# --------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    max_messages: int
    started: float = 0.0  # monotonic
    ended: float | None = None  # when the last send of the phase returned
    wall_started: float = 0.0  # the same two instants as Unix times
    wall_ended: float | None = None
    cpu_started: float = 0.0
    cpu_seconds: float = 0.0
    complete: bool = False
    capped: bool = False  # --max-messages ended it early
    attempts: int = 0  # sends started (every kind), bounded by max_messages
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    errors: Counter = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)
    rate_limited: int = 0
    quiet_sent: int = 0
    quiet_pending: set[str] = field(default_factory=set)  # bodies not seen yet
    quiet_latencies_ms: list[float] = field(default_factory=list)
    quiet_lost: int = 0
    flood_sent: int = 0
    late: int = 0
    skipped: int = 0
    scheduled: int = 0
    reader_events: int = 0
    reader_gaps: int = 0
    reader_latencies_ms: list[float] = field(default_factory=list)

    def reserve(self) -> bool:
        """Take one send out of the phase's --max-messages; False (and the
        phase stops) once they are spent."""
        if self.stop.is_set():
            return False
        if self.attempts >= self.max_messages:
            self.capped = True
            self.stop.set()
            return False
        self.attempts += 1
        return True

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            # aiohttp names the SSL context object, address and all.
            detail = re.sub(r" ssl:<[^>]*>", "", detail)
            self.error_samples.append(redact(detail)[:200])

    @property
    def seconds(self) -> float:
        end = self.ended if self.ended is not None else now()
        return max(0.0, end - self.started)

    def report(self, args: argparse.Namespace, readers: int) -> dict[str, Any]:
        secs = self.seconds
        out: dict[str, Any] = {
            # Unix times, to match the phase with figures taken elsewhere
            # (say, the host's CPU use).
            "started": round(self.wall_started, 3),
            "ended": round(self.wall_ended if self.wall_ended is not None else time.time(), 3),
            "seconds": round(secs, 3),
            "complete": self.complete,
            "capped": self.capped,
            "quiet_latency_ms": load_stats.summarise(self.quiet_latencies_ms),
            "quiet_sent": self.quiet_sent,
            "quiet_lost": self.quiet_lost,
            "errors": sum(self.errors.values()),
            "error_kinds": dict(sorted(self.errors.items())),
            "error_samples": list(self.error_samples),
            "rate_limited": self.rate_limited,
            "reader_events": self.reader_events,
            "reader_gaps": self.reader_gaps,
            "loadgen_cpu": load_stats.rate(self.cpu_seconds, secs),
        }
        if self.name in ("busy", "fixed"):
            out["reader_events_expected"] = self.flood_sent * readers
            out["reader_latency_ms"] = load_stats.summarise(self.reader_latencies_ms)
        if self.name == "busy":
            out["flood_sent"] = self.flood_sent
            out["flood_rate"] = load_stats.rate(self.flood_sent, secs)
        if self.name == "fixed":
            out["offered_rate"] = args.fixed_rate
            out["scheduled"] = self.scheduled
            out["sent"] = self.flood_sent
            out["achieved_rate"] = load_stats.rate(self.flood_sent, secs)
            out["late"] = self.late  # sent, but more than LATE_AFTER after the slot
            out["skipped"] = self.skipped  # slots not sent: too far behind, or the phase ended
        return out


# --------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------


@dataclass
class User:
    role: str  # sender, reader, quiet-sender, quiet-syncer
    index: int
    localpart: str
    password: str
    client: nio.AsyncClient | None = None
    user_id: str | None = None
    room_id: str | None = None  # the room it sends to or syncs
    syncs: int = 0


@dataclass
class Sent:
    phase: Phase
    kind: str  # flood or quiet
    started: float


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = now() + args.timeout
        self.target = build_target(args.url, None, args.ca_cert)
        if args.address:
            host = urlsplit(args.url).hostname or ""
            self.target.pins[host.lower().rstrip(".")] = args.address
        prefix = args.user_prefix
        self.senders = [self.new_user("sender", i, f"{prefix}-s{i}") for i in range(args.senders)]
        self.readers = [self.new_user("reader", i, f"{prefix}-r{i}") for i in range(args.readers)]
        self.quiet_pairs = [
            (
                self.new_user("quiet-sender", i, f"{prefix}-q{i}a"),
                self.new_user("quiet-syncer", i, f"{prefix}-q{i}b"),
            )
            for i in range(args.quiet_users // 2)
        ]
        self.busy_room: str | None = None
        self.phase: Phase | None = None
        self.phases: dict[str, Phase] = {}
        self.sent: dict[str, Sent] = {}  # message body -> what and when
        self.setup_seconds: float | None = None
        self.setup_rate_limited = 0
        self.sync_tasks: list[asyncio.Task] = []
        self.clients: list[nio.AsyncClient] = []

    @staticmethod
    def new_user(role: str, index: int, localpart: str) -> User:
        user = User(role, index, localpart, secrets.token_urlsafe(24))
        SECRETS.add(user.password)
        return user

    @property
    def users(self) -> list[User]:
        return self.senders + self.readers + [u for pair in self.quiet_pairs for u in pair]

    def remaining(self) -> float:
        return self.deadline - now()

    def bound(self, extra: float = 0.0) -> float:
        """Time one request may take: --request-timeout (plus a long poll's
        wait), never past the overall deadline."""
        return max(0.05, min(self.args.request_timeout + extra, self.remaining()))

    def make_client(self, user: User) -> nio.AsyncClient:
        config = nio.AsyncClientConfig(
            encryption_enabled=False,
            store_sync_tokens=False,
            request_timeout=self.args.request_timeout,
            # Every 429, timeout and refused connection comes back here and
            # is counted; nio neither sleeps nor retries.
            max_limit_exceeded=0,
            max_timeouts=0,
        )
        client = nio.AsyncClient(
            self.target.homeserver, user=user.localpart, config=config, ssl=self.target.ssl_context
        )
        connector = aiohttp.TCPConnector(
            resolver=PinnedResolver(self.target.pins), ssl=self.target.ssl_context, limit=4
        )
        client.client_session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.args.request_timeout)
        )
        self.clients.append(client)
        return client

    # ----------------------------------------------------------------------
    # Calls
    # ----------------------------------------------------------------------

    async def setup_call(self, what: str, call: Callable[[], Awaitable[Any]], extra: float = 0.0) -> Any:
        """A setup request that must succeed; short rate limits are waited
        out (setup time is not a result)."""
        for _attempt in range(SETUP_RETRIES + 1):
            try:
                resp = await asyncio.wait_for(call(), timeout=self.bound(extra))
            except TimeoutError:
                raise SetupFailed(f"{what}: no answer within {self.bound(extra):.0f}s") from None
            except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
                raise SetupFailed(f"{what}: {type(exc).__name__}: {redact(str(exc))}") from None
            if not isinstance(resp, nio.ErrorResponse):
                return resp
            if not is_rate_limited(resp):
                raise SetupFailed(f"{what}: {redact(describe(resp))}")
            self.setup_rate_limited += 1
            wait = (resp.retry_after_ms or 1000) / 1000
            if wait > MAX_SETUP_WAIT or wait > self.remaining() - 5:
                raise SetupFailed(
                    f"{what}: rate-limited, the server asks to wait {wait:.0f}s; "
                    "raise its rate limits (rc_registration, rc_joins, ...)"
                )
            await asyncio.sleep(wait)
        raise SetupFailed(f"{what}: still rate-limited after {SETUP_RETRIES} waits")

    async def measured_call(self, phase: Phase, call: Callable[[], Awaitable[Any]], extra: float = 0.0) -> Any:
        """A request during a phase: the response, or None after counting
        what went wrong (an error, or a 429 as rate_limited)."""
        try:
            resp = await asyncio.wait_for(call(), timeout=self.bound(extra))
        except TimeoutError:
            phase.error("timeout", "request timed out")
            return None
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            phase.error(type(exc).__name__, f"{type(exc).__name__}: {exc}")
            return None
        except Exception as exc:  # noqa: BLE001 - every failure is a figure
            phase.error(type(exc).__name__, f"{type(exc).__name__}: {exc}")
            return None
        status = getattr(getattr(resp, "transport_response", None), "status", None)
        if isinstance(resp, nio.ErrorResponse):
            if is_rate_limited(resp):
                phase.rate_limited += 1
                await self.pause(phase, (resp.retry_after_ms or 1000) / 1000)
            else:
                phase.error(f"http_{status}" if status else type(resp).__name__, describe(resp))
            return None
        if status is not None and not 200 <= status < 300:
            phase.error(f"http_{status}", f"{type(resp).__name__} with HTTP {status}")
            return None
        return resp

    async def pause(self, phase: Phase, seconds: float) -> None:
        """Sleep, but no longer than the phase lasts."""
        try:
            await asyncio.wait_for(phase.stop.wait(), timeout=max(0.0, min(seconds, self.remaining())))
        except TimeoutError:
            pass

    # ----------------------------------------------------------------------
    # Setup
    # ----------------------------------------------------------------------

    async def setup(self) -> None:
        started = now()
        limit = asyncio.Semaphore(REGISTER_CONCURRENCY)

        async def register(user: User) -> None:
            async with limit:
                client = self.make_client(user)
                resp = await self.setup_call(
                    f"register {user.localpart}",
                    lambda: client.register(user.localpart, user.password, device_name="matrix-load"),
                )
                SECRETS.add(resp.access_token)
                expected = f"@{user.localpart}:{self.args.server_name}"
                if resp.user_id != expected:
                    raise SetupFailed(f"registered as {resp.user_id}, expected {expected} (wrong --server-name?)")
                user.client, user.user_id = client, resp.user_id

        await gather_all(register(u) for u in self.users)

        async def create_room(user: User, name: str) -> str:
            resp = await self.setup_call(
                f"{user.localpart} creates a room",
                lambda: user.client.room_create(name=name, preset=nio.RoomPreset.public_chat, federate=False),
            )
            return resp.room_id

        async def join(user: User, room_id: str) -> None:
            await self.setup_call(f"{user.localpart} joins", lambda: user.client.join(room_id))
            user.room_id = room_id

        prefix = self.args.user_prefix
        creator = self.senders[0]
        self.busy_room = await create_room(creator, f"{prefix} busy")
        creator.room_id = self.busy_room

        async def pair_room(sender: User, syncer: User) -> None:
            room_id = await create_room(sender, f"{prefix} quiet {sender.index}")
            sender.room_id = room_id
            await join(syncer, room_id)

        await gather_all(
            [join(u, self.busy_room) for u in self.senders[1:] + self.readers]
            + [pair_room(a, b) for a, b in self.quiet_pairs]
        )

        async def first_sync(user: User) -> None:
            resp = await self.setup_call(
                f"{user.localpart} first sync",
                lambda: user.client.sync(timeout=0, sync_filter=SYNC_FILTER),
            )
            if user.room_id not in resp.rooms.join:
                raise SetupFailed(f"{user.localpart}'s first sync does not show its room")
            user.syncs += 1

        await gather_all(first_sync(u) for u in self.users)
        self.setup_seconds = now() - started

    # ----------------------------------------------------------------------
    # Syncing
    # ----------------------------------------------------------------------

    async def sync_loop(self, user: User, stop: asyncio.Event) -> None:
        """Long-poll /sync as ``user`` until ``stop``, noting the arrival of
        every message this run sent to its room. Bounded by the deadline and
        in rounds (each round brings events, or waits up to the long poll)."""
        rounds_left = 3 * self.args.max_messages + int(self.args.timeout * 20) + 10
        while not stop.is_set() and rounds_left > 0 and self.remaining() > 0.5:
            rounds_left -= 1
            phase = self.phase
            wait_ms = int(max(0, min(SYNC_TIMEOUT_MS, (self.remaining() - 1) * 1000)))
            resp = await self.measured_call(
                phase,
                lambda wait_ms=wait_ms: user.client.sync(timeout=wait_ms, sync_filter=SYNC_FILTER),
                extra=wait_ms / 1000,
            )
            if resp is None:
                await asyncio.sleep(ERROR_PAUSE)
                continue
            arrived = now()
            user.syncs += 1
            info = resp.rooms.join.get(user.room_id)
            if info is None:
                continue
            if info.timeline.limited and user.role == "reader":
                phase.reader_gaps += 1
            for ev in info.timeline.events:
                src = getattr(ev, "source", None) or {}
                if src.get("type") != "m.room.message":
                    continue
                body = (src.get("content") or {}).get("body")
                sent = self.sent.get(body) if isinstance(body, str) else None
                if sent is None:
                    continue
                latency_ms = (arrived - sent.started) * 1000
                if sent.kind == "quiet" and user.role == "quiet-syncer":
                    if body in sent.phase.quiet_pending:
                        sent.phase.quiet_pending.discard(body)
                        sent.phase.quiet_latencies_ms.append(latency_ms)
                elif sent.kind == "flood" and user.role == "reader":
                    sent.phase.reader_events += 1
                    sent.phase.reader_latencies_ms.append(latency_ms)

    # ----------------------------------------------------------------------
    # Sending
    # ----------------------------------------------------------------------

    async def send(self, phase: Phase, user: User, kind: str, seq: int) -> bool:
        body = f"{self.args.user_prefix} {phase.name} {kind} {user.localpart} #{seq}"
        sent = Sent(phase, kind, now())
        # Known before the request goes out: the event may reach a syncing
        # client before the send returns.
        self.sent[body] = sent
        if kind == "quiet":
            phase.quiet_pending.add(body)
        resp = await self.measured_call(
            phase,
            lambda: user.client.room_send(user.room_id, "m.room.message", {"msgtype": "m.text", "body": body}),
        )
        if resp is None:
            phase.quiet_pending.discard(body)  # an error, not waited for
            return False
        if kind == "quiet":
            phase.quiet_sent += 1
        else:
            phase.flood_sent += 1
        return True

    async def scheduled_sender(
        self, phase: Phase, user: User, kind: str, offsets: list[float], count_lateness: bool
    ) -> None:
        """Send at the given offsets from the phase start (open loop): wait
        for a slot due later, send a slot due now or a little ago (late if
        more than LATE_AFTER), skip slots more than MAX_BEHIND overdue."""
        index = 0
        while index < len(offsets) and not phase.stop.is_set():
            elapsed = now() - phase.started
            index, skipped = load_stats.catch_up(offsets, index, elapsed, MAX_BEHIND)
            if count_lateness:
                phase.skipped += skipped
            if index >= len(offsets):
                break
            wait = offsets[index] - elapsed
            if wait > 0:
                await self.pause(phase, wait)
                if phase.stop.is_set():
                    break
            elif count_lateness and -wait > LATE_AFTER:
                phase.late += 1
            if not phase.reserve():
                break
            if not await self.send(phase, user, kind, index):
                await self.pause(phase, ERROR_PAUSE)
            index += 1
        if count_lateness:
            # Slots the phase's end (or --max-messages) left unsent.
            phase.skipped += len(offsets) - index

    async def flood_sender(self, phase: Phase, user: User) -> None:
        """Closed loop: the next send as soon as the previous one returned."""
        seq = 0
        while phase.reserve():
            if not await self.send(phase, user, "flood", seq):
                await self.pause(phase, ERROR_PAUSE)
            seq += 1

    # ----------------------------------------------------------------------
    # Phases
    # ----------------------------------------------------------------------

    async def run_phase(self, name: str) -> None:
        args = self.args
        phase = Phase(name, args.max_messages)
        self.phases[name] = phase
        self.phase = phase
        seconds = min(args.phase_seconds, max(0.0, self.remaining() - 1))
        cut = seconds < args.phase_seconds
        if self.quiet_pairs:
            quiet = load_stats.fixed_rate_schedule(
                len(self.quiet_pairs) / QUIET_INTERVAL, seconds, len(self.quiet_pairs)
            )
        else:
            quiet = []
        phase.started, phase.wall_started = now(), time.time()
        phase.cpu_started = time.process_time()
        tasks = [
            asyncio.create_task(self.scheduled_sender(phase, sender, "quiet", quiet[i], False))
            for i, (sender, _syncer) in enumerate(self.quiet_pairs)
        ]
        if name == "busy":
            tasks += [asyncio.create_task(self.flood_sender(phase, s)) for s in self.senders]
        elif name == "fixed":
            schedule = load_stats.fixed_rate_schedule(
                args.fixed_rate, seconds, len(self.senders), limit=args.max_messages
            )
            phase.scheduled = sum(len(offsets) for offsets in schedule)
            tasks += [
                asyncio.create_task(self.scheduled_sender(phase, s, "flood", schedule[i], True))
                for i, s in enumerate(self.senders)
            ]
        try:
            await self.pause(phase, seconds)
        finally:
            phase.stop.set()
            # Sends under way finish (each is bounded by --request-timeout).
            await asyncio.gather(*tasks, return_exceptions=True)
            phase.ended, phase.wall_ended = now(), time.time()
            phase.cpu_seconds = time.process_time() - phase.cpu_started
        await self.drain(phase)
        if cut:
            raise OverallTimeout(f"the {name} phase was cut short by --timeout")
        phase.complete = True

    async def drain(self, phase: Phase) -> None:
        """Give what the phase sent a bounded time to arrive; quiet messages
        still missing then are counted lost, and later arrivals ignored."""
        end = now() + min(DRAIN_SECONDS, max(0.0, self.remaining() - 1))
        while now() < end and (phase.quiet_pending or phase.reader_events < phase.flood_sent * len(self.readers)):
            await asyncio.sleep(0.05)
        phase.quiet_lost = len(phase.quiet_pending)
        phase.quiet_pending.clear()
        self.sent = {body: s for body, s in self.sent.items() if s.phase is not phase}

    async def run(self) -> None:
        await self.setup()
        stop = asyncio.Event()
        self.phase = Phase("idle", self.args.max_messages)  # until idle starts
        syncers = self.readers + [b for _a, b in self.quiet_pairs]
        self.sync_tasks = [asyncio.create_task(self.sync_loop(u, stop)) for u in syncers]
        try:
            for name in PHASES:
                await self.run_phase(name)
        finally:
            stop.set()
            for task in self.sync_tasks:
                task.cancel()
            await asyncio.gather(*self.sync_tasks, return_exceptions=True)

    async def close(self) -> None:
        """Best effort: log every user out (ends its device session) and
        close the connections."""

        async def finish(user: User) -> None:
            if user.client is None:
                return
            if user.client.access_token and self.remaining() > 3:
                try:
                    await asyncio.wait_for(user.client.logout(), timeout=min(5.0, self.remaining() - 1))
                except Exception:  # noqa: BLE001 - cleanup only
                    pass

        await asyncio.gather(*(finish(u) for u in self.users), return_exceptions=True)
        for client in self.clients:
            try:
                await asyncio.wait_for(client.close(), timeout=2)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def report(self, setup_error: str | None, timed_out: bool) -> dict[str, Any]:
        args = self.args
        phases = {name: p.report(args, len(self.readers)) for name, p in self.phases.items()}
        completed = (
            setup_error is None
            and not timed_out
            and all(name in self.phases and self.phases[name].complete for name in PHASES)
        )
        return {
            "tool": "tests/bench/matrix_load.py",
            "params": {
                "url": args.url,
                "address": args.address,
                "server_name": args.server_name,
                "user_prefix": args.user_prefix,
                "senders": args.senders,
                "readers": args.readers,
                "quiet_users": args.quiet_users,
                "phase_seconds": args.phase_seconds,
                "fixed_rate": args.fixed_rate,
                "max_messages": args.max_messages,
                "timeout": args.timeout,
                "request_timeout": args.request_timeout,
                "sync_timeout_ms": SYNC_TIMEOUT_MS,
                "quiet_interval_s": QUIET_INTERVAL,
                "late_after_s": LATE_AFTER,
                "max_behind_s": MAX_BEHIND,
                "drain_s": DRAIN_SECONDS,
                "percentiles": "nearest-rank",
                "matrix_nio": package_version("matrix-nio"),
                "python": platform.python_version(),
            },
            "completed": completed,
            "timed_out": timed_out,
            "setup_error": setup_error,
            "setup_seconds": None if self.setup_seconds is None else round(self.setup_seconds, 3),
            "setup_rate_limited": self.setup_rate_limited,
            "phases": phases,
            "errors_total": sum(p["errors"] for p in phases.values()),
            "rate_limited_total": sum(p["rate_limited"] for p in phases.values()),
        }


def is_rate_limited(resp: Any) -> bool:
    status = getattr(getattr(resp, "transport_response", None), "status", None)
    return status == 429 or getattr(resp, "status_code", None) == "M_LIMIT_EXCEEDED"


async def gather_all(coros: Any) -> None:
    """Run them together; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--url", required=True, help="client base URL through nginx, https://HOST[:PORT]")
    p.add_argument("--ca-cert", required=True, help="CA certificate (PEM) to trust, alone")
    p.add_argument("--server-name", required=True, help="the homeserver's server_name")
    p.add_argument("--address", help="connect to this IP address (the URL's host stays the TLS name and Host header)")
    p.add_argument("--senders", type=int, default=4, help="users flooding the busy room (default 4)")
    p.add_argument("--readers", type=int, default=2, help="users syncing the busy room (default 2)")
    p.add_argument("--quiet-users", type=int, default=8, help="users in pairs, a quiet room each (even; default 8)")
    p.add_argument("--phase-seconds", type=float, default=30.0, help="length of each phase (default 30)")
    p.add_argument(
        "--fixed-rate", type=float, default=10.0, help="messages a second the senders offer in fixed (default 10)"
    )
    p.add_argument("--max-messages", type=int, default=20000, help="sends per phase at most (default 20000)")
    p.add_argument("--timeout", type=float, default=600.0, help="overall bound in seconds (default 600)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="bound of each request in seconds (default 30)")
    p.add_argument("--user-prefix", help="localpart prefix of the users (default: random, load<hex>)")
    p.add_argument("--json", help="also write the JSON document here")
    args = p.parse_args(argv)
    if args.user_prefix is None:
        args.user_prefix = "load" + secrets.token_hex(4)
    if not re.fullmatch(r"[a-z0-9._=-]{1,60}", args.user_prefix):
        p.error("--user-prefix may only hold a-z 0-9 . _ = - (at most 60)")
    if args.senders < 1 or args.readers < 0:
        p.error("--senders must be at least 1, --readers at least 0")
    if args.quiet_users < 0 or args.quiet_users % 2:
        p.error("--quiet-users must be an even number (pairs), 0 or more")
    if args.phase_seconds <= 0 or args.fixed_rate <= 0 or args.timeout <= 0 or args.request_timeout <= 0:
        p.error("--phase-seconds, --fixed-rate, --timeout and --request-timeout must be positive")
    if args.max_messages < 1:
        p.error("--max-messages must be at least 1")
    if not os.path.isfile(args.ca_cert):
        p.error(f"--ca-cert {args.ca_cert}: no such file")
    if args.address:
        try:
            args.address = str(ipaddress.ip_address(args.address))
        except ValueError:
            p.error(f"--address must be an IP address, got {args.address!r}")
    try:
        build_target(args.url, None, args.ca_cert)
    except (ValueError, ssl.SSLError, OSError) as exc:
        p.error(str(exc))
    if not urlsplit(args.url).hostname:
        p.error("--url has no host")
    return args


def fmt(value: Any, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_summary(doc: dict[str, Any]) -> None:
    params = doc["params"]
    out = sys.stderr
    out.write(
        f"matrix_load: {params['url']} (server {params['server_name']}), users {params['user_prefix']}-*: "
        f"{params['senders']} senders, {params['readers']} readers, {params['quiet_users']} quiet\n"
    )
    if doc["setup_error"]:
        out.write(f"setup FAILED: {doc['setup_error']}\n")
    out.write(f"setup {fmt(doc['setup_seconds'], '.1f')} s ({doc['setup_rate_limited']} rate-limited waits)\n")
    out.write(
        f"{'phase':<6} {'secs':>6}  {'quiet ms p50/p95/max (n, lost)':<32} "
        f"{'msg/s':>8} {'readers seen':>14} {'late':>5} {'errors':>6} {'429':>5} {'cpu':>5}\n"
    )
    for name, ph in doc["phases"].items():
        q = ph["quiet_latency_ms"]
        quiet = f"{fmt(q['p50'])}/{fmt(q['p95'])}/{fmt(q['max'])} ({q['count']}, {ph['quiet_lost']})"
        msgs = ph.get("flood_rate", ph.get("achieved_rate"))
        seen = f"{ph['reader_events']}/{ph['reader_events_expected']}" if "reader_events_expected" in ph else "-"
        flag = "" if ph["complete"] else " (incomplete)"
        out.write(
            f"{name:<6} {ph['seconds']:>6.1f}  {quiet:<32} {fmt(msgs, '.1f'):>8} {seen:>14} "
            f"{ph.get('late', '-'):>5} {ph['errors']:>6} {ph['rate_limited']:>5} {ph['loadgen_cpu']:>5.2f}{flag}\n"
        )
        for sample in ph["error_samples"]:
            out.write(f"       error: {sample}\n")
    verdict = "completed" if doc["completed"] else ("TIMED OUT" if doc["timed_out"] else "NOT completed")
    out.write(f"{verdict}; errors {doc['errors_total']}, rate-limited {doc['rate_limited_total']}\n")


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    load = Load(args)
    setup_error: str | None = None
    timed_out = False
    try:
        # Every request and wait is bounded by the time left; this is the
        # hard stop in case anything still runs at the deadline.
        await asyncio.wait_for(load.run(), timeout=args.timeout)
    except (TimeoutError, OverallTimeout):
        timed_out = True
    except SetupFailed as exc:
        setup_error = redact(str(exc))
    finally:
        await load.close()
    if load.setup_seconds is None and setup_error is None:
        setup_error = "overall timeout reached during setup"
    return load.report(setup_error, timed_out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    try:
        doc = asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130
    text = redact(json.dumps(doc, indent=2)) + "\n"
    sys.stdout.write(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text)
    print_summary(doc)
    return 0 if doc["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
