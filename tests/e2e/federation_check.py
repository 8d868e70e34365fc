#!/usr/bin/env python3
"""End-to-end federation check between two deployed Matrix homeservers.

One user on each server (alice on the first, bob on the second) share a room
created on the first server, then exercise what crosses federation in both
directions with the real client library matrix-nio: the invite and the join,
messages, typing notifications, read receipts, to-device messages, and media
uploaded on one server and downloaded through the other (which fetches it from
its origin). Every wait polls /sync and is bounded; the whole run is bounded by
--timeout.

Exit status: 0 only if every step passed; 1 if any failed or the overall
timeout hit, or some response was M_UNRECOGNIZED; 2 for bad arguments.
Passwords and access tokens are never printed (see matrix_client_check).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import re
import secrets
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from matrix_client_check import (  # noqa: E402 - the sibling module, found through sys.path
    SECRETS,
    Actor,
    CheckFailed,
    Clock,
    Recorder,
    RedactingFilter,
    StepResult,
    build_target,
    check,
    describe,
    make_client,
    make_png,
    run_steps,
)

import nio  # noqa: E402
from nio.api import ReceiptType  # noqa: E402
from nio.event_builders import ToDeviceMessage  # noqa: E402

# How long one wait for something to cross federation may take at most.
POLL_WAIT = 60.0
SYNC_LONGPOLL_MS = 2000
SYNC_FILTER = {"room": {"timeline": {"limit": 100}}}
MESSAGES_PER_USER = 3


@dataclass
class Server:
    """One homeserver as the check reaches it."""

    url: str
    server_name: str
    ca_cert: str


class Ctx:
    """Both servers, one user on each, and what the steps left for the next."""

    def __init__(self, args: argparse.Namespace, recorder: Recorder, clock: Clock):
        self.args = args
        self.recorder = recorder
        self.clock = clock
        self.nonce = secrets.token_hex(6)
        self.servers = {
            "alice": Server(args.url_a, args.server_name_a, args.ca_cert),
            "bob": Server(args.url_b, args.server_name_b, args.ca_cert),
        }
        prefix = args.user_prefix
        self.alice = Actor("alice", f"{prefix}-alice", f"@{prefix}-alice:{args.server_name_a}", secrets.token_urlsafe(24))
        self.bob = Actor("bob", f"{prefix}-bob", f"@{prefix}-bob:{args.server_name_b}", secrets.token_urlsafe(24))
        SECRETS.update((self.alice.password, self.bob.password))
        self.room_id: str | None = None
        self.sent: dict[str, str] = {}
        self.last_event: dict[str, str] = {}
        self.clients: list[nio.AsyncClient] = []

    def pairs(self):
        """(sender, receiver) both ways."""
        return ((self.alice, self.bob), (self.bob, self.alice))

    def new_client(self, actor: Actor, user: str) -> nio.AsyncClient:
        server = self.servers[actor.name]
        target = build_target(server.url, None, server.ca_cert)
        client = make_client(target, user, self.recorder, self.clock, self.args.request_timeout)
        self.clients.append(client)
        return client

    async def sync(self, actor: Actor) -> None:
        wait_ms = SYNC_LONGPOLL_MS if actor.synced_once else 0
        wait_ms = int(max(0, min(wait_ms, (self.clock.remaining() - 3) * 1000)))
        resp = await actor.client.sync(timeout=wait_ms, sync_filter=SYNC_FILTER)
        check(isinstance(resp, nio.SyncResponse), f"{actor.name}: /sync failed: {describe(resp)}")
        actor.synced_once = True
        actor.syncs += 1
        actor.absorb(resp)

    async def poll(self, actor: Actor, predicate: Callable[[], bool], what: str) -> None:
        end = time.monotonic() + min(POLL_WAIT, max(0.0, self.clock.remaining()))
        for _ in range(300):
            if predicate():
                return
            if time.monotonic() >= end:
                break
            await self.sync(actor)
        raise CheckFailed(f"{actor.name} did not see {what} via /sync within {POLL_WAIT:.0f}s")

    async def retry(self, call: Callable[[], Awaitable], ok: Callable, what: str, wait: float = POLL_WAIT):
        """Repeat a request until its answer is ``ok`` (what crosses federation
        may need a moment: a join needs the remote's keys, a media fetch the
        remote's answer). Bounded by ``wait`` and the overall timeout."""
        end = time.monotonic() + min(wait, max(0.0, self.clock.remaining()))
        while True:
            resp = await call()
            if ok(resp):
                return resp
            if time.monotonic() >= end:
                raise CheckFailed(f"{what}: {describe(resp)}")
            await asyncio.sleep(1.0)


# --------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------


async def step_users(ctx: Ctx) -> str:
    for actor in (ctx.alice, ctx.bob):
        client = ctx.new_client(actor, actor.localpart)
        resp = await client.register(actor.localpart, actor.password, device_name=f"federation-{actor.name}")
        check(isinstance(resp, nio.RegisterResponse), f"register {actor.localpart}: {describe(resp)}")
        SECRETS.add(resp.access_token)
        check(resp.user_id == actor.user_id, f"registered as {resp.user_id}, expected {actor.user_id}")
        actor.client = client
        actor.device_id = resp.device_id
        await ctx.sync(actor)
    return f"{ctx.alice.user_id} and {ctx.bob.user_id} registered, one on each server"


async def step_room(ctx: Ctx) -> str:
    alice, bob = ctx.alice, ctx.bob
    resp = await alice.client.room_create(
        name=f"federation check {ctx.nonce}", preset=nio.RoomPreset.private_chat, invite=[bob.user_id]
    )
    check(isinstance(resp, nio.RoomCreateResponse), f"createRoom: {describe(resp)}")
    room_id = ctx.room_id = resp.room_id
    await ctx.poll(bob, lambda: room_id in bob.invites, "the invite from the other server")
    await ctx.retry(
        lambda: bob.client.join(room_id), lambda r: isinstance(r, nio.JoinResponse), "bob's join over federation"
    )

    async def both_joined():
        return await alice.client.joined_members(room_id)

    await ctx.retry(
        both_joined,
        lambda r: isinstance(r, nio.JoinedMembersResponse) and bob.user_id in {m.user_id for m in r.members},
        "alice's server never saw bob join",
    )
    await ctx.poll(bob, lambda: room_id in bob.joined, "the joined room")
    return f"room {room_id} on {ctx.args.server_name_a}: invite crossed, bob joined from {ctx.args.server_name_b}"


async def step_messages(ctx: Ctx) -> str:
    room_id = ctx.room_id
    check(room_id, "no room")
    for i in range(MESSAGES_PER_USER):
        for actor in (ctx.alice, ctx.bob):
            body = f"federation {ctx.nonce} {actor.name} #{i + 1}"
            resp = await actor.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
            check(isinstance(resp, nio.RoomSendResponse), f"{actor.name} send #{i + 1}: {describe(resp)}")
            ctx.sent[resp.event_id] = body
            ctx.last_event[actor.name] = resp.event_id
    for actor in (ctx.alice, ctx.bob):

        def all_seen(a: Actor = actor) -> bool:
            seen = a.messages.get(room_id, {})
            return all(seen.get(e) == b for e, b in ctx.sent.items())

        try:
            await ctx.poll(actor, all_seen, f"all {len(ctx.sent)} messages")
        except CheckFailed:
            seen = actor.messages.get(room_id, {})
            raise CheckFailed(f"{actor.name} never saw: {[b for e, b in ctx.sent.items() if seen.get(e) != b]}") from None
    return f"each user saw all {len(ctx.sent)} messages ({MESSAGES_PER_USER} from each server) in /sync"


async def step_typing(ctx: Ctx) -> str:
    room_id = ctx.room_id
    check(room_id, "no room")
    for sender, receiver in ctx.pairs():
        resp = await sender.client.room_typing(room_id, typing_state=True, timeout=30000)
        check(isinstance(resp, nio.RoomTypingResponse), f"{sender.name} typing: {describe(resp)}")
        await ctx.poll(
            receiver,
            lambda s=sender, r=receiver: any(s.user_id in users for users in r.typing.get(room_id, [])),
            f"{sender.name} typing",
        )
        await sender.client.room_typing(room_id, typing_state=False)
    return "each user saw the other's m.typing across federation"


async def step_receipts(ctx: Ctx) -> str:
    room_id = ctx.room_id
    for sender, receiver in ctx.pairs():
        event_id = ctx.last_event.get(receiver.name)
        check(room_id and event_id, f"no message from {receiver.name} to acknowledge")
        resp = await sender.client.update_receipt_marker(room_id, event_id, ReceiptType.read)
        check(isinstance(resp, nio.UpdateReceiptMarkerResponse), f"{sender.name} receipt: {describe(resp)}")
        key = (room_id, event_id, "m.read", sender.user_id)
        await ctx.poll(receiver, lambda k=key, r=receiver: k in r.receipts, f"{sender.name}'s m.read receipt")
    return "each user saw the other's m.read receipt across federation"


async def step_to_device(ctx: Ctx) -> str:
    ev_type = "org.example.federation_check"
    for sender, receiver in ctx.pairs():
        content = {"nonce": ctx.nonce, "from": sender.name}
        msg = ToDeviceMessage(ev_type, receiver.user_id, receiver.device_id, content)
        resp = await sender.client.to_device(msg, tx_id=f"fed{ctx.nonce}{sender.name}")
        check(isinstance(resp, nio.ToDeviceResponse), f"{sender.name} sendToDevice: {describe(resp)}")

        def arrived(s: Actor = sender, r: Actor = receiver) -> bool:
            return any(
                e["type"] == ev_type and e["sender"] == s.user_id and e["content"].get("from") == s.name
                for e in r.to_device
            )

        await ctx.poll(receiver, arrived, f"{sender.name}'s to-device message")
    return "each user's device received the other's to-device message"


async def step_media(ctx: Ctx) -> str:
    done = []
    for uploader, downloader in ctx.pairs():
        png = make_png(48, 48, seed=len(uploader.name))
        up, _ = await uploader.client.upload(
            io.BytesIO(png), content_type="image/png", filename="federation.png", filesize=len(png)
        )
        check(isinstance(up, nio.UploadResponse), f"{uploader.name} upload: {describe(up)}")
        origin = urlsplit(up.content_uri).netloc
        check(origin == ctx.servers[uploader.name].server_name, f"media server {origin}")
        # The downloader's own server fetches it from the origin over federation.
        dl = await ctx.retry(
            lambda u=up.content_uri, d=downloader: d.client.download(mxc=u),
            lambda r: isinstance(r, nio.MemoryDownloadResponse),
            f"{downloader.name} download of {up.content_uri} through {ctx.servers[downloader.name].server_name}",
        )
        check(dl.body == png, f"{downloader.name} got {len(dl.body)} bytes, not the {len(png)} uploaded")
        done.append(f"{up.content_uri} fetched through {ctx.servers[downloader.name].server_name}")
    return "; ".join(done)


STEPS: list[tuple[str, str, Callable[[Ctx], Awaitable[str]], tuple[str, ...]]] = [
    ("users", "a user on each server", step_users, ()),
    ("room", "invite and join across", step_room, ("users",)),
    ("messages", "messages both ways", step_messages, ("room",)),
    ("typing", "typing both ways", step_typing, ("room",)),
    ("receipts", "read receipts both ways", step_receipts, ("messages",)),
    ("to_device", "to-device both ways", step_to_device, ("users",)),
    ("media", "media fetched across", step_media, ("users",)),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Federation check between two homeservers (matrix-nio).")
    p.add_argument("--url-a", required=True, help="client base URL of the first server, https://HOST")
    p.add_argument("--server-name-a", required=True)
    p.add_argument("--url-b", required=True, help="client base URL of the second server")
    p.add_argument("--server-name-b", required=True)
    p.add_argument("--ca-cert", required=True, help="CA certificate (PEM) both servers' certificates chain to")
    p.add_argument("--user-prefix", default=None, help="localpart prefix of the test users (default random)")
    p.add_argument("--timeout", type=float, default=300.0, help="overall bound in seconds (default 300)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="bound of each request (default 30)")
    args = p.parse_args(argv)
    if args.user_prefix is None:
        args.user_prefix = "fed" + secrets.token_hex(4)
    if not re.fullmatch(r"[a-z0-9._=-]{1,100}", args.user_prefix):
        p.error("--user-prefix may only hold a-z 0-9 . _ = -")
    if args.timeout <= 0 or args.request_timeout <= 0:
        p.error("timeouts must be positive")
    if not os.path.isfile(args.ca_cert):
        p.error(f"--ca-cert {args.ca_cert}: no such file")
    if args.server_name_a == args.server_name_b:
        p.error("the two servers need different server names")
    for url in (args.url_a, args.url_b):
        try:
            build_target(url, None, args.ca_cert)
        except (ValueError, ssl.SSLError, OSError) as exc:
            p.error(str(exc))
    return args


async def amain(args: argparse.Namespace) -> int:
    recorder = Recorder()
    clock = Clock(args.timeout, args.request_timeout)
    results = [StepResult(sid, title) for sid, title, _f, _n in STEPS]
    ctx = Ctx(args, recorder, clock)
    try:
        await asyncio.wait_for(run_steps(ctx, results, STEPS), timeout=args.timeout)
    except asyncio.TimeoutError:
        pass
    finally:
        for client in ctx.clients:
            try:
                await asyncio.wait_for(client.close(), timeout=2)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
    for r in results:
        if r.status in ("NOT RUN", "RUNNING"):
            r.status, r.detail = "FAIL", "overall timeout reached"
    width = max(len(r.title) for r in results)
    print(f"Federation check: {args.server_name_a} ({args.url_a}) <-> {args.server_name_b} ({args.url_b})")
    for i, r in enumerate(results, 1):
        print(f"{i:>2}  {r.title:<{width}}  {r.status:<7} {r.seconds:>5.1f}s  {r.detail}")
    passed = sum(r.status == "PASS" for r in results)
    print(f"{len(recorder.requests)} HTTP requests; {passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) and not recorder.unrecognized else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
