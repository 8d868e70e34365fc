# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named worker lists, used when `synapse_workers` is not set.

Each preset follows a layout operators already run; `source` says which and
`notes` what our worker types cannot reproduce exactly. The README's preset
table is generated from this module.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    source: str
    workers: tuple
    notes: str = ""


def _w(name, *types, count=1):
    entry = {"name": name, "types": list(types)}
    if count != 1:
        entry["count"] = count
    return entry


def _one_per_stream_writer():
    return tuple(
        _w(f"stream_writer_{stream}", worker_type)
        for stream, worker_type in (
            ("events", "event_persister"),
            ("typing", "typing"),
            ("to_device", "to_device"),
            ("account_data", "account_data"),
            ("receipts", "receipts"),
            ("presence", "presence"),
            ("push_rules", "push_rules"),
            ("device_lists", "device_lists"),
        )
    )


def _one_per_duty():
    return (
        _w("federation_sender", "federation_sender"),
        _w("pusher", "pusher"),
        _w("appservice", "appservice"),
        _w("user_dir", "user_dir"),
        _w("media_repository", "media_repository"),
        _w("background", "background_worker"),
    )


_PRESETS = (
    Preset(
        "monolith",
        "No workers: the main process does everything.",
        "Synapse's default.",
        (),
    ),
    Preset(
        "one-of-each",
        "One generic worker for requests, one worker per stream writer and per duty.",
        "matrix-docker-ansible-deploy, preset `one-of-each`.",
        (
            _w("generic", "synchrotron", "client_reader", "event_creator", "federation_reader", "federation_inbound"),
            *_one_per_stream_writer(),
            *_one_per_duty(),
        ),
        "Its separate quarantined-media writer is folded into the media repository, which writes that stream.",
    ),
    Preset(
        "specialized-workers",
        "Requests split into room, sync, client-reader and federation-reader workers; one worker per stream and duty.",
        "matrix-docker-ansible-deploy, preset `specialized-workers`.",
        (
            _w("room", "client_reader", "event_creator"),
            _w("sync", "synchrotron"),
            _w("client_reader", "client_reader"),
            _w("federation_reader", "federation_reader", "federation_inbound"),
            *_one_per_stream_writer(),
            *_one_per_duty(),
        ),
        "Room-ID paths cannot be split out of the client_reader type: those requests are "
        "balanced over `room` and `client_reader`; the quarantined-media writer is folded into the media repository.",
    ),
    Preset(
        "seed000",
        "One client worker, one federation worker and six federation senders.",
        'The write-up "Towards polylithic synapse" (docker-compose with Traefik).',
        (
            _w("client", "synchrotron", "client_reader", "event_creator", "event_persister", "typing", "receipts", "presence"),
            _w("federation", "federation_reader", "federation_inbound"),
            _w("federation_sender", "federation_sender", count=6),
        ),
    ),
    Preset(
        "seed001",
        "A worker per task: login, three + two sync workers, each stream writer alone, media, pusher, user directory.",
        "A Debian guide with UNIX sockets and a systemd worker template.",
        (
            _w("login", "client_reader"),
            _w("federation_sender", "federation_sender"),
            _w("mediaworker", "media_repository"),
            _w("userdir", "user_dir"),
            _w("pusher", "pusher"),
            _w("push_rules", "push_rules"),
            _w("typing", "typing"),
            _w("todevice", "to_device"),
            _w("accountdata", "account_data"),
            _w("presence", "presence"),
            _w("receipts", "receipts"),
            _w("initial_sync", "initial_synchrotron", count=2),
            _w("normal_sync", "synchrotron", count=3),
        ),
        "As in the guide, initial syncs (a `/sync` without `since`, and `/initialSync` as Synapse's "
        "docs route it) go to initial_sync and the other syncs to normal_sync, each sticky by user.",
    ),
    Preset(
        "seed002",
        "client_sync with the small stream writers, federation reader, media, four room workers, four senders, tasks.",
        "A Docker guide (tcpipuk): UNIX sockets, room-sticky room workers.",
        (
            _w("client_sync", "synchrotron", "account_data", "presence", "receipts", "to_device", "typing", "user_dir"),
            _w("federation_reader", "federation_reader", "federation_inbound"),
            _w("media", "media_repository"),
            _w("rooms", "room_worker", count=4),
            _w("sender", "federation_sender", count=4),
            _w("tasks", "event_persister", "pusher", "appservice", "background_worker"),
        ),
        "As in the guide, every client and federation request with a room ID in its path that a "
        "worker serves is hashed by room over the four room workers, after the stream writers' "
        "endpoints; other client requests go to main, other federation requests to federation_reader. "
        "The room ID ends with its path segment (the guide's capture runs on to the path's last "
        "`:server`), and a room's account data and tags stay with their writer.",
    ),
)

PRESETS = {p.name: p for p in _PRESETS}
