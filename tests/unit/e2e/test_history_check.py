"""The history check's own logic (tests/e2e/history_check.py), without a server.

Its record (written 0600, refused when it does not fit), its verdict on what
a server returned (missing, changed, duplicated and reordered messages), the
paginated walk backwards through /messages, and its command line. The lab's
operations scenario runs it against the deployment before and after an
upgrade and a reboot.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import history_check as hc  # noqa: E402

SENT = [{"event_id": f"$e{i}", "body": f"history n #{i}"} for i in range(1, 6)]


def message(event_id, body, kind="m.room.message"):
    return {"type": kind, "event_id": event_id, "content": {"msgtype": "m.text", "body": body}}


def record(**changes):
    base = hc.make_record("lab.test", "@h-history:lab.test", "pw", "!room:lab.test", SENT)
    base.update(changes)
    return base


# --- the record ----------------------------------------------------------------


def test_the_record_is_written_for_its_owner_alone_and_read_back(tmp_path):
    path = tmp_path / "history.json"
    os.umask(0o022)
    hc.save_record(str(path), record())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = hc.load_record(str(path), "lab.test")
    assert loaded["events"] == SENT and loaded["password"] == "pw"
    # A second write replaces it whole, still 0600, with no temporary file left.
    path.chmod(0o644)
    hc.save_record(str(path), record(room_id="!other:lab.test"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert hc.load_record(str(path), "lab.test")["room_id"] == "!other:lab.test"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such record; run `history_check.py write` first"),
        ("{not json", "not a readable record"),
        (json.dumps([1, 2]), "not a record of this check"),
        (json.dumps(record(version=7)), "not a record of this check"),
        (json.dumps(record(password="")), "password is missing or empty"),
        (json.dumps(record(room_id=None)), "room_id is missing or empty"),
        (json.dumps(record(events=[])), "events must be a non-empty list"),
        (json.dumps(record(events=[{"event_id": "$a"}])), "events must be a non-empty list"),
        (json.dumps(record(events=SENT + SENT[:1])), "an event ID is listed twice"),
        (json.dumps(record(server_name="other.test")), "written for the server other.test, not lab.test"),
        (json.dumps(record(user_id="@h:other.test")), "the user @h:other.test is not one of lab.test"),
    ],
)
def test_a_record_that_does_not_fit_is_refused_saying_why(tmp_path, content, message):
    path = tmp_path / "history.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(hc.RecordError, match=None) as exc:
        hc.load_record(str(path), "lab.test")
    assert message in str(exc.value)


# --- the verdict -----------------------------------------------------------------


def pairs(events):
    return [(e["event_id"], e["body"]) for e in events]


def test_every_message_there_in_order_among_others_passes():
    seen = [("$other", "someone else")] + pairs(SENT[:2]) + [("$x", "between")] + pairs(SENT[2:])
    assert hc.compare(SENT, seen, "/messages") == []


def test_a_missing_message_is_named():
    problems = hc.compare(SENT, pairs(SENT[:2] + SENT[3:]), "/messages")
    assert problems == ["/messages: 1 of 5 messages missing: ['history n #3']"]


def test_a_changed_body_is_named():
    seen = pairs(SENT)
    seen[1] = ("$e2", "edited")
    assert hc.compare(SENT, seen, "initial /sync") == [
        "initial /sync: $e2 has the body 'edited', sent as 'history n #2'"
    ]


def test_a_message_seen_twice_is_named():
    assert hc.compare(SENT, pairs(SENT + SENT[4:]), "/messages") == ["/messages: $e5 appears 2 times"]


def test_messages_out_of_order_fail():
    seen = pairs(SENT)
    seen[0], seen[1] = seen[1], seen[0]
    assert hc.compare(SENT, seen, "/messages") == ["/messages: the messages are not in the order sent"]


def test_only_text_messages_with_a_body_count():
    events = [
        message("$e1", "one"),
        message("$s", "state", kind="m.room.member"),
        {"type": "m.room.message", "event_id": "$r", "content": {}},  # redacted
        {"type": "m.room.message", "content": {"body": "no id"}},
        "not an event",
        message("$e2", "two"),
    ]
    assert hc.message_events(events) == [("$e1", "one"), ("$e2", "two")]
    assert hc.message_events(None) == []


def test_the_room_timeline_is_read_from_an_initial_sync():
    sync = {"rooms": {"join": {"!room:lab.test": {"timeline": {"events": [message("$e1", "one")], "limited": True}}}}}
    assert hc.sync_timeline(sync, "!room:lab.test") == ([message("$e1", "one")], True)
    assert hc.sync_timeline(sync, "!gone:lab.test") is None
    assert hc.sync_timeline({"rooms": {}}, "!room:lab.test") is None


# --- paginating /messages ----------------------------------------------------------


class FakeRoom:
    """/messages dir=b over a room: its state, then the messages, PAGE_SIZE a page."""

    def __init__(self, events, page_size=hc.PAGE_SIZE):
        self.timeline = [message(f"$s{i}", "", kind="m.room.member") for i in range(6)] + events
        self.page_size = page_size
        self.asked = []

    async def fetch(self, token):
        self.asked.append(token)
        end = len(self.timeline) if token is None else int(token)
        start = max(0, end - self.page_size)
        chunk = list(reversed(self.timeline[start:end]))
        page = {"chunk": chunk, "start": str(end)}
        if start > 0:
            page["end"] = str(start)
        return page


def run(coro):
    return asyncio.run(coro)


def test_pagination_walks_back_until_every_message_was_seen():
    room = FakeRoom([message(e["event_id"], e["body"]) for e in SENT])
    seen, pages = run(hc.paginate(room.fetch, {e["event_id"] for e in SENT}, hc.max_pages(len(SENT))))
    assert seen == pairs(SENT)  # oldest first
    assert pages == 2 and room.asked == [None, str(len(room.timeline) - hc.PAGE_SIZE)]
    assert hc.compare(SENT, seen, "/messages") == []


def test_pagination_stops_at_the_room_start_when_a_message_is_missing():
    room = FakeRoom([message(e["event_id"], e["body"]) for e in SENT[1:]])
    seen, pages = run(hc.paginate(room.fetch, {e["event_id"] for e in SENT}, 50))
    assert pages == 3  # 10 events, 4 a page: the start of the room ends it
    assert hc.compare(SENT, seen, "/messages") == ["/messages: 1 of 5 messages missing: ['history n #1']"]


def test_pagination_is_bounded_even_if_the_server_never_ends():
    async def endless(token):
        return {"chunk": [message("$noise", "x")], "end": f"t{int((token or 't0')[1:]) + 1}"}

    seen, pages = run(hc.paginate(endless, {"$e1"}, 7))
    assert pages == 7 and len(seen) == 7


def test_a_token_repeated_by_the_server_ends_the_walk():
    async def stuck(token):
        return {"chunk": [message("$noise", "x")], "end": "same"}

    _seen, pages = run(hc.paginate(stuck, {"$e1"}, 50))
    assert pages == 2


def test_the_page_bound_covers_the_messages_and_the_room_state():
    for count in (1, 8, 100):
        assert hc.max_pages(count) * hc.PAGE_SIZE >= count + 20


# --- the command line ------------------------------------------------------------------


def test_write_needs_the_record_directory(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        hc.parse_args(["write", "--url", "https://x", "--server-name", "x", "--record", str(tmp_path / "no" / "h.json")])
    assert exc.value.code == 2
    assert "its directory does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("count", ["0", "101"])
def test_the_message_count_is_bounded(tmp_path, capsys, count):
    with pytest.raises(SystemExit):
        hc.parse_args(["write", "--url", "https://x", "--server-name", "x", "--record", str(tmp_path / "h.json"), "--messages", count])
    assert "--messages must be between 1 and 100" in capsys.readouterr().err


def test_read_refuses_a_missing_record_before_connecting(tmp_path, capsys):
    code = hc.main(["read", "--url", "https://127.0.0.1:9", "--server-name", "x", "--record", str(tmp_path / "h.json")])
    assert code == 2
    assert "no such record" in capsys.readouterr().err


def test_defaults_and_a_random_user_prefix(tmp_path):
    args = hc.parse_args(["write", "--url", "https://x", "--server-name", "x", "--record", str(tmp_path / "h.json")])
    other = hc.parse_args(["write", "--url", "https://x", "--server-name", "x", "--record", str(tmp_path / "h.json")])
    assert args.messages == hc.DEFAULT_MESSAGES <= 10  # within Synapse's default burst of sent events
    assert args.user_prefix.startswith("hist") and args.user_prefix != other.user_prefix
    assert [step[0] for step in hc.STEPS["read"]] == ["login", "messages", "sync", "context"]
    assert hc.STEPS["write"][-1][3] == ("messages", "sync", "context")
