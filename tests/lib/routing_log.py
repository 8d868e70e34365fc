"""Which process served each request, read back from nginx's access log.

The nginx role logs every request in one format (``log_format`` of
roles/nginx/templates/matrix-synapse.conf.j2): the method and the normalised
URI ($uri, no query string), the status, the upstream the location chose
(``upstream=``: "denied" where nginx refused it, "-" where it answered
without a route) and the servers it tried (``upstream_addr=``: "-" when none),
and last the client's User-Agent in quotes.

A client that wants its requests judged sends each with a marker of its own
as User-Agent and keeps a record (``Sent``): the marker, the request and who
may serve it (a ``Sample``). ``judge`` finds each marker's line in the log,
maps ``upstream_addr`` to the processes of the deployment by their
listener's ``upstream_server``, and applies routing_check's policy
(``judge_reached``, ``judge_answered``) to what nginx did: one policy for
the model of nginx and for nginx itself.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from lib.routing_check import (
    BROKEN,
    Finding,
    Sample,
    deployed_types,
    judge_answered,
    judge_reached,
    normalise_uri,
    processes,
)

# A request with no line of its own in the log, or whose line is another request's.
MISSING = "missing"

# The log_format of the nginx role, field by field. $uri may hold spaces
# (decoded %20), $upstream_addr holds ", " and " : " between servers.
LINE = re.compile(
    r'^(?P<client>\S+) \[(?P<time>[^\]]*)\] "(?P<method>\S+) (?P<uri>.*) (?P<protocol>\S+)" '
    r"(?P<status>\d{3}) (?P<bytes>\d+) rt=(?P<rt>\S+) upstream=(?P<upstream>\S+) "
    r"upstream_addr=(?P<addresses>.*?) upstream_status=(?P<upstream_status>.*?) "
    r'upstream_rt=(?P<upstream_rt>.*?) host=(?P<host>\S*) port=(?P<port>\d+) "(?P<agent>.*)"$'
)


def unescape(value):
    """A logged variable as the request carried it: nginx writes \\xHH for '"', '\\' and bytes
    outside printable ASCII."""
    raw = re.sub(
        rb"\\x([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), value.encode("utf-8", "surrogateescape")
    )
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class LogLine:
    """One request as nginx logged it."""

    number: int
    method: str
    uri: str
    status: int
    upstream: str
    addresses: tuple
    agent: str
    text: str

    @property
    def answered_by_nginx(self):
        return not self.addresses


def parse_line(number, text):
    """A LogLine, or None for a line of another format."""
    match = LINE.match(text)
    if match is None:
        return None
    addresses = match["addresses"]
    servers = () if addresses == "-" else tuple(a for a in re.split(r", | : ", addresses) if a)
    return LogLine(
        number=number,
        method=match["method"],
        uri=unescape(match["uri"]),
        status=int(match["status"]),
        upstream=match["upstream"],
        addresses=servers,
        agent=unescape(match["agent"]),
        text=text,
    )


def parse(text):
    """(LogLines, lines of another format) of an access log's text; lines count from 1."""
    lines, other = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        line = parse_line(number, raw)
        if line is None:
            other.append(raw)
        else:
            lines.append(line)
    return lines, other


@dataclass(frozen=True)
class Sent:
    """A request a client sent with ``marker`` as its User-Agent, and what came of it on its side."""

    marker: str
    sample: Sample
    outcome: str = ""

    def to_json(self):
        return {
            "marker": self.marker,
            "method": self.sample.method,
            "path": self.sample.path,
            "types": sorted(self.sample.types),
            "main": self.sample.main,
            "doc": self.sample.doc,
            "outcome": self.outcome,
        }

    @classmethod
    def from_json(cls, data):
        try:
            sample = Sample(data["method"], data["path"], frozenset(data["types"]), data["main"], data["doc"])
            return cls(data["marker"], sample, data.get("outcome", ""))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"not a record of a sent request: {data!r}") from None


def _answers(line, closed_prefixes):
    """How nginx answered a request itself, in routing_check's words."""
    if line.upstream == "denied":
        closed = any(line.uri.startswith(prefix) for prefix in closed_prefixes)
        return "closed prefix" if closed else "denied pattern"
    if line.upstream == "-":
        return f"status {line.status} from a location without a route"
    return f"status {line.status} before reaching a server of {line.upstream}"


def judge(sent, lines, topology, closed_prefixes=()):
    """Every sent request that nginx's log shows gone astray, or does not show: a list of Findings.

    ``topology`` needs ``main`` and ``workers`` as the deployment has them
    (names, types, listeners); ``closed_prefixes`` are prefixes nginx answers
    itself for this client (the admin API, unless the client is allowed).
    """
    by_server = processes(topology)
    running = deployed_types(topology)
    by_marker = {}
    for line in lines:
        by_marker.setdefault(line.agent, []).append(line)
    findings = []
    for request in sent:
        sample = request.sample

        def finding(kind, detail, line=None, reached=()):
            upstream = line.upstream if line is not None and line.upstream not in ("-", "denied") else None
            logged = f"line {line.number}: {line.text}" if line is not None else ""
            findings.append(Finding(sample, kind, "", upstream, tuple(reached), detail, logged))

        found = by_marker.get(request.marker, [])
        if not found:
            outcome = f" (the client saw: {request.outcome})" if request.outcome else ""
            finding(MISSING, f"no line of nginx's log carries its marker {request.marker}{outcome}")
            continue
        for line in found:
            if (line.method, line.uri) != (sample.method, normalise_uri(sample.path)):
                finding(MISSING, f"the line with its marker is for {line.method} {line.uri}", line)
                continue
            if line.answered_by_nginx:
                verdict = judge_answered(sample, _answers(line, closed_prefixes))
                if verdict:
                    finding(*verdict, line)
                continue
            unknown = [a for a in line.addresses if a not in by_server]
            if unknown:
                finding(BROKEN, f"{', '.join(unknown)} is no process of the deployment", line)
                continue
            reached = [by_server[a] for a in line.addresses]
            verdict = judge_reached(sample, running, reached)
            if verdict:
                finding(*verdict, line, reached)
    return findings


def served_by(sent, lines, topology):
    """How many of the sent requests each process served (nginx: answered itself), from the log."""
    by_server = processes(topology)
    markers = {request.marker for request in sent}
    counts = Counter()
    for line in lines:
        if line.agent not in markers:
            continue
        if line.answered_by_nginx:
            counts["nginx"] += 1
        else:
            served = by_server.get(line.addresses[-1])
            counts[served.name if served else line.addresses[-1]] += 1
    return counts


def summary(sent, lines, topology, findings):
    """A few lines saying what was sent, who served it and what went astray."""
    counts = served_by(sent, lines, topology)
    served = ", ".join(f"{name} {count}" for name, count in sorted(counts.items(), key=lambda nc: (-nc[1], nc[0])))
    head = f"{len(sent)} requests judged from nginx's log; served by: {served or 'none'}"
    if not findings:
        return [head, "every request reached a process of a type that serves it (or nginx, where it must answer)"]
    kinds = Counter(f.kind for f in findings)
    return [
        head,
        f"{len(findings)} findings ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}):",
        *(f"  {f}" for f in findings),
    ]
