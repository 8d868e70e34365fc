#!/usr/bin/env python3
"""Prove nginx's routes with real traffic: one request per documented endpoint, judged from nginx's log.

Two steps, run apart because the log lives on the nginx host:

``send``  sends every request of tests/lib/routing_samples.py (each endpoint
          docs/workers.md lists, each method that differs) to the URL given,
          each with its own marker as User-Agent, and writes a record of what
          it sent. It registers and logs in a user of its own (open
          registration) so requests carry an access token; Synapse's answer
          (401, 403, 404...) does not matter, only where nginx sent the
          request. Paths are sent exactly as the table gives them, but with
          the table's domain (example.org) replaced by the server's name, so
          Synapse never asks another server about the table's made-up IDs.
``judge`` reads nginx's access log, the deployment (``polylith_synapse_deployment``
          or at least its ``main`` and ``workers``) and one or more records,
          finds each request's line by its marker, and judges from
          ``upstream_addr`` whether the process that got it is of a type that
          serves it (lib/routing_log.py, with the policy of lib/routing_check.py).

Exit status: 0 when everything was sent / every request reached a right
process; 1 otherwise; 2 for bad arguments. Traffic goes to the given URL
only, one request at a time, each bounded by --request-timeout and all by
--timeout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
for _path in (HERE, HERE.parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from lib.routing_check import Sample  # noqa: E402
from lib.routing_log import Sent, judge, parse, summary  # noqa: E402
from lib.routing_samples import CHOSEN_SEGMENT_SAMPLES, SAMPLES  # noqa: E402
from plain_http import ClientError, Homeserver, Timeout, log_in, log_out, register, tls_context  # noqa: E402

AGENT = "polylith-routing-probe"
# The domain of the table's made-up IDs.
TABLE_DOMAIN = "example.org"
# Requests that end the probe's own session go last.
LAST = {("POST", "/_matrix/client/v3/logout")}


def probe_samples(server_name, samples=None):
    """The table's samples as the probe sends them: IDs on ``server_name``, session-ending ones last."""
    samples = list(SAMPLES + CHOSEN_SEGMENT_SAMPLES if samples is None else samples)
    domain = quote(server_name, safe=":")
    local = [
        Sample(s.method, s.path.replace(TABLE_DOMAIN, domain), s.types, s.main, s.doc) for s in samples
    ]
    return sorted(local, key=lambda s: (s.method, s.path.split("?")[0]) in LAST)


def _body(method):
    return b"{}" if method in ("POST", "PUT") else None


def send(server, samples, run, token=None):
    """Send each sample once with marker ``AGENT/run/n``; the list of Sent records.

    A request that gets no answer within the request timeout is recorded as
    such (nginx still logs it, 499, once the probe hangs up); once the
    server's deadline has passed the rest are recorded as not sent.
    """
    sent = []
    for number, sample in enumerate(samples, 1):
        marker = f"{AGENT}/{run}/{number}"
        try:
            response = server.request(sample.method, sample.path, _body(sample.method), token, marker)
            outcome = f"HTTP {response.status}" + (f" {response.errcode}" if response.errcode else "")
        except Timeout:
            outcome = "not sent: the probe's time was spent"
        except TimeoutError:
            outcome = "no answer within the request timeout"
        except (OSError, http.client.HTTPException) as exc:
            outcome = f"no answer: {type(exc).__name__}: {exc}"
        sent.append(Sent(marker, sample, outcome))
    return sent


def write_record(path, run, sent):
    record = {"tool": "tests/e2e/routing_probe.py", "run": run, "sent": [s.to_json() for s in sent]}
    Path(path).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def read_records(paths):
    """The Sent requests of records written by send or sliding_sync_check.py."""
    sent = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            sent.extend(Sent.from_json(entry) for entry in data["sent"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"routing_probe: {path} is no record of sent requests: {exc}") from None
    return sent


def cmd_send(args):
    deadline = time.monotonic() + args.timeout
    server = Homeserver(
        args.url,
        tls_context(args.ca_cert),
        args.tls_server_name,
        request_timeout=args.request_timeout,
        deadline=deadline,
    )
    run = secrets.token_hex(4)
    setup_agent = f"{AGENT}/{run}/setup"
    token = None
    if not args.anonymous:
        localpart, password = f"probe{run}", secrets.token_urlsafe(24)
        try:
            user_id = register(server, localpart, password, setup_agent)
            token, _ = log_in(server, user_id, password, setup_agent, "routing probe")
        except (ClientError, OSError, http.client.HTTPException, Timeout) as exc:
            print(f"routing_probe: cannot get an access token: {exc}", file=sys.stderr)
            return 1
    samples = probe_samples(args.server_name)
    try:
        sent = send(server, samples, run, token)
    finally:
        if token:
            log_out(server, token, setup_agent)
    write_record(args.record, run, sent)
    outcomes = Counter(s.outcome.split(" M_")[0] for s in sent)
    print(
        f"routing probe {run}: {len(sent)} requests to {args.url} as "
        + ("an anonymous client" if args.anonymous else f"a user of its own ({user_id})")
    )
    print("answers: " + ", ".join(f"{k}: {n}" for k, n in sorted(outcomes.items())))
    print(f"record written to {args.record}")
    return 0 if all(not s.outcome.startswith("not sent") for s in sent) else 1


def cmd_judge(args):
    sent = read_records(args.record)
    deployment = json.loads(Path(args.deployment).read_text(encoding="utf-8"))
    lines, _ = parse(Path(args.log).read_text(encoding="utf-8", errors="surrogateescape"))
    findings = judge(sent, lines, deployment, closed_prefixes=tuple(args.closed_prefix))
    for line in summary(sent, lines, deployment, findings):
        print(line)
    return 1 if findings else 0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)

    out = steps.add_parser("send", help="send one request per documented endpoint, write a record")
    out.add_argument("--url", required=True, help="https://HOST[:PORT] of nginx")
    out.add_argument("--server-name", required=True, help="the homeserver's server_name (IDs of the requests)")
    out.add_argument("--ca-cert", help="CA certificate (PEM) to trust instead of the system store")
    out.add_argument("--tls-server-name", help="name for SNI, certificate check and Host when the URL holds an address")
    out.add_argument("--record", required=True, help="where to write the record of what was sent (JSON)")
    out.add_argument("--anonymous", action="store_true", help="send without an access token (no user registered)")
    out.add_argument("--timeout", type=float, default=300.0, help="bound of the whole run in seconds (default 300)")
    out.add_argument(
        "--request-timeout", type=float, default=10.0, help="bound of each request in seconds (default 10)"
    )

    check = steps.add_parser("judge", help="judge recorded requests from nginx's access log")
    check.add_argument("--log", required=True, help="nginx's access log (the nginx role's log format)")
    check.add_argument("--deployment", required=True, help="JSON with the deployment's main and workers")
    check.add_argument("--record", required=True, action="append", help="a record written by send (repeatable)")
    check.add_argument(
        "--closed-prefix",
        action="append",
        default=[],
        help="a path prefix nginx answers itself for this client (the admin API when the client is not allowed)",
    )
    args = parser.parse_args(argv)
    if args.step == "judge":
        for path in [args.log, args.deployment, *args.record]:
            if not Path(path).is_file():
                parser.error(f"{path}: no such file")
    if args.step == "send":
        if args.timeout <= 0 or args.request_timeout <= 0:
            parser.error("timeouts must be positive")
        if args.ca_cert and not Path(args.ca_cert).is_file():
            parser.error(f"--ca-cert {args.ca_cert}: no such file")
        try:
            Homeserver(args.url, tls_server_name=args.tls_server_name)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def main(argv=None):
    args = parse_args(argv)
    return cmd_send(args) if args.step == "send" else cmd_judge(args)


if __name__ == "__main__":
    sys.exit(main())
