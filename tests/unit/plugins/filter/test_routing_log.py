"""Real requests judged from nginx's access log (tests/lib/routing_log.py, tests/e2e/routing_probe.py).

The lab's verify sends one request per documented endpoint through nginx and
judges, from the access log's ``upstream_addr``, whether each reached a process
of a type that serves it. Here the judge reads logs crafted from the model of
nginx (a correct one passes; typing sent to another upstream, a missing line,
a request nginx refused or forwarded wrongly are caught), and then a real
nginx on loopback serving the rendered site, with a fake Synapse process on
every upstream socket, takes the probe's requests: the log of a correct site
passes, the log of a site with typing pointed at another upstream does not,
and every logged server is the one that got the request.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from conftest import ROOT
from lib.routing_check import (
    BROKEN,
    FORWARDED,
    MAIN_FALLBACK,
    MISROUTED,
    MISSED_WORKER,
    REFUSED,
    Sample,
    normalise_uri,
    resolve,
)
from lib.routing_log import MISSING, Sent, judge, parse, parse_line, summary
from lib.routing_samples import CHOSEN_SEGMENT_SAMPLES, SAMPLES

sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import routing_probe  # noqa: E402
import sliding_sync_check  # noqa: E402
from plain_http import Homeserver  # noqa: E402

ADMIN_PREFIX = "/_synapse/admin"
RUN = "0123abcd"
TYPING = next(s for s in SAMPLES if s.types == {"typing"})
SYNC = next(s for s in SAMPLES if s.path.startswith("/_matrix/client/v3/sync?"))
REPLICATION = next(s for s in SAMPLES if s.path.startswith("/_synapse/replication/"))
ADMIN_ROOM = next(s for s in SAMPLES if s.path.startswith("/_synapse/admin/v1/rooms/"))


def preset(name, socket_dir=None):
    return build_topology(None, preset=name, main_host="app1", hosts={"app1": "127.0.0.1"}, socket_dir=socket_dir)


def sent_records(samples=None):
    samples = routing_probe.probe_samples("example.org", samples)
    return [Sent(f"{routing_probe.AGENT}/{RUN}/{n}", s, "HTTP 401") for n, s in enumerate(samples, 1)]


def log_line(method, uri, upstream, address, agent, status=None):
    """A line in the nginx role's log_format."""
    status = status or (404 if address == "-" else 401)
    upstream_status = "-" if address == "-" else str(status)
    return (
        f'10.213.57.1 [04/Dec/2025:18:28:00 +0000] "{method} {uri} HTTP/1.1" {status} 53 rt=0.004 '
        f"upstream={upstream} upstream_addr={address} upstream_status={upstream_status} upstream_rt=0.004 "
        f'host=10.213.57.2 port=443 "{agent}"'
    )


def modelled_log(topo, sent, closed_prefixes=(), server=0):
    """The log nginx writes for the sent requests, as the model of nginx says (each upstream's ``server``-th)."""
    nginx = topo["nginx"]
    lines = []
    for request in sent:
        sample = request.sample
        resolution = resolve(nginx, sample.method, sample.path, closed_prefixes=closed_prefixes)
        uri = normalise_uri(sample.path)
        if resolution.answers:
            upstream = "-" if resolution.answers == "exact location" else "denied"
            lines.append(log_line(sample.method, uri, upstream, "-", request.marker))
        else:
            servers = nginx["upstreams"][resolution.upstream]["servers"]
            address = servers[server % len(servers)]
            lines.append(log_line(sample.method, uri, resolution.upstream, address, request.marker))
    return "\n".join(lines) + "\n"


def judged(topo, sent, text, **options):
    lines, other = parse(text)
    assert other == []
    return judge(sent, lines, topo, **options)


def report(findings):
    return "\n".join(str(f) for f in findings)


def worker_of(topo, worker_type):
    return next(w for w in topo["workers"] if worker_type in w["types"])


def swap_line(text, marker, new_line):
    return "\n".join(new_line if line.endswith(f'"{marker}"') else line for line in text.splitlines()) + "\n"


# --- the log format ------------------------------------------------------------------


def test_a_line_of_the_log_format_is_read_field_by_field():
    line = parse_line(
        7,
        '10.0.0.1 [04/Dec/2025:18:28:00 +0000] "PUT /_matrix/client/v3/rooms/!a b:x/typing/@u:x HTTP/2.0" '
        "502 0 rt=3.001 upstream=synapse_typing upstream_addr=10.0.0.2:8083, unix:/run/s/t.sock : 10.0.0.3:8083 "
        'upstream_status=502, 502 : 200 upstream_rt=1.0, 1.0 : 1.0 host=h port=443 "agent \\x22quoted\\x22 caf\\xC3\\xA9"',
    )
    assert line.number == 7 and line.method == "PUT" and line.status == 502
    assert line.uri == "/_matrix/client/v3/rooms/!a b:x/typing/@u:x"
    assert line.upstream == "synapse_typing"
    assert line.addresses == ("10.0.0.2:8083", "unix:/run/s/t.sock", "10.0.0.3:8083")
    assert line.agent == 'agent "quoted" café'
    assert not line.answered_by_nginx
    denied = parse_line(1, log_line("GET", "/_synapse/replication/x", "denied", "-", "a"))
    assert denied.addresses == () and denied.answered_by_nginx
    assert parse_line(1, "127.0.0.1 - - [date] GET / combined format") is None


def test_a_record_survives_json():
    sent = sent_records()
    again = [Sent.from_json(json.loads(json.dumps(s.to_json()))) for s in sent]
    assert again == sent
    with pytest.raises(ValueError, match="not a record"):
        Sent.from_json({"marker": "x", "main": "sometimes"})


# --- what the probe sends -------------------------------------------------------------


def test_the_probe_sends_every_sample_once_with_ids_on_the_server():
    samples = routing_probe.probe_samples("10.213.57.2")
    assert len(samples) == len(SAMPLES + CHOSEN_SEGMENT_SAMPLES)
    assert len({(s.method, s.path) for s in samples}) == len(samples)
    assert not [s for s in samples if "example.org" in s.path]
    assert "/_matrix/client/v3/directory/room/%2310.213.57.2" not in [s.path for s in samples]
    assert f"/_matrix/client/v3/directory/room/%23lobby:10.213.57.2" in [s.path for s in samples]
    # The probe's session ends with its last request.
    assert (samples[-1].method, samples[-1].path) == ("POST", "/_matrix/client/v3/logout")
    # Only the IDs differ: each sample keeps its types, policy and method.
    by_doc = sorted((s.method, s.doc, s.main, sorted(s.types)) for s in samples)
    assert by_doc == sorted((s.method, s.doc, s.main, sorted(s.types)) for s in SAMPLES + CHOSEN_SEGMENT_SAMPLES)
    # Where nginx sends a request does not depend on the server's name.
    topo = preset("one-of-each")
    for ours, table in zip(
        routing_probe.probe_samples("[2001:db8::1]", SAMPLES), routing_probe.probe_samples("example.org", SAMPLES)
    ):
        assert resolve(topo["nginx"], ours.method, ours.path) == resolve(topo["nginx"], table.method, table.path)


# --- the judge on crafted logs ---------------------------------------------------------


@pytest.mark.parametrize("name", ["seed002", "one-of-each", "monolith"])
def test_a_log_where_every_request_reached_a_right_process_passes(name):
    topo, sent = preset(name), sent_records()
    for server in range(4):  # whichever server of an upstream the balancer picked
        findings = judged(topo, sent, modelled_log(topo, sent, server=server))
        assert findings == [], report(findings)


def test_typing_sent_to_another_upstream_is_caught():
    topo, sent = preset("one-of-each"), sent_records()
    text = modelled_log(topo, sent)
    (typing,) = [s for s in sent if s.sample.types == TYPING.types]
    reader = worker_of(topo, "client_reader")
    text = swap_line(
        text,
        typing.marker,
        log_line("PUT", normalise_uri(typing.sample.path), "synapse_client_reader",
                 reader["listeners"][0]["upstream_server"], typing.marker),
    )
    (finding,) = judged(topo, sent, text)
    assert (finding.kind, finding.upstream, [p.name for p in finding.reached]) == (
        MISROUTED, "synapse_client_reader", [reader["name"]]
    )
    message = str(finding)
    assert message.startswith(f"misrouted: PUT {typing.sample.path} -> synapse_client_reader [{reader['name']} (")
    assert f"{reader['name']} has none of the types that serve it" in message and "may serve it: typing" in message
    assert "nginx logged line " in message


def test_a_missing_line_is_caught():
    topo, sent = preset("seed002"), sent_records()
    text = modelled_log(topo, sent)
    gone = next(s for s in sent if s.sample == routing_probe.probe_samples("example.org", [SYNC])[0])
    text = "\n".join(line for line in text.splitlines() if not line.endswith(f'"{gone.marker}"'))
    (finding,) = judged(topo, sent, text)
    assert (finding.kind, finding.sample) == (MISSING, gone.sample)
    assert f"no line of nginx's log carries its marker {gone.marker} (the client saw: HTTP 401)" in str(finding)


def test_a_line_of_another_request_under_the_marker_is_caught():
    topo, sent = preset("seed002"), sent_records()
    first = sent[0]
    text = swap_line(
        modelled_log(topo, sent), first.marker, log_line("GET", "/elsewhere", "synapse_main",
                                                         topo["main"]["listeners"][0]["upstream_server"], first.marker)
    )
    (finding,) = judged(topo, sent, text)
    assert finding.kind == MISSING and "the line with its marker is for GET /elsewhere" in finding.detail


def test_a_request_left_to_main_while_its_worker_runs_is_caught():
    topo, sent = preset("seed002"), sent_records([SYNC])
    main = topo["main"]["listeners"][0]["upstream_server"]
    text = log_line("GET", "/_matrix/client/v3/sync", "synapse_main", main, sent[0].marker)
    (finding,) = judged(topo, sent, text)
    assert (finding.kind, [p.name for p in finding.reached]) == (MISSED_WORKER, ["main"])
    # A monolith has no synchrotron: main is right.
    assert judged(preset("monolith"), sent, text) == []


def test_what_nginx_must_answer_or_forward_is_held_to_it():
    topo, sent = preset("seed002"), sent_records([REPLICATION, ADMIN_ROOM])
    main = topo["main"]["listeners"][0]["upstream_server"]
    replication, admin = sent
    # Replication forwarded to main: caught.
    text = log_line("POST", normalise_uri(replication.sample.path), "synapse_main", main, replication.marker)
    assert [f.kind for f in judged(topo, [replication], text)] == [FORWARDED]
    # The admin API refused: right where it is closed to the client, caught where it is open.
    text = log_line("GET", normalise_uri(admin.sample.path), "denied", "-", admin.marker, status=403)
    assert judged(topo, [admin], text, closed_prefixes=(ADMIN_PREFIX,)) == []
    (finding,) = judged(topo, [admin], text)
    assert finding.kind == REFUSED and "denied pattern" in finding.detail


def test_a_server_of_no_process_is_caught():
    topo, sent = preset("seed002"), sent_records([SYNC])
    # nginx names the upstream when none of its servers is live.
    text = log_line("GET", "/_matrix/client/v3/sync", "synapse_synchrotron", "synapse_synchrotron", sent[0].marker,
                    status=502)
    (finding,) = judged(topo, sent, text)
    assert finding.kind == BROKEN and "synapse_synchrotron is no process of the deployment" in finding.detail


def test_the_summary_counts_who_served_what():
    topo, sent = preset("seed002"), sent_records()
    text = modelled_log(topo, sent)
    lines, _ = parse(text)
    head, verdict = summary(sent, lines, topo, [])
    assert head.startswith(f"{len(sent)} requests judged from nginx's log; served by: ")
    assert "client_sync " in head and "main " in head and "nginx " in head
    assert verdict.startswith("every request reached")
    findings = judge(sent[1:], lines, topo) + judge(sent[:1], [], topo)
    out = summary(sent, lines, topo, findings)
    assert out[1] == "1 findings (missing 1):" and out[2].startswith("  missing: ")


# --- a real nginx, fake Synapse processes, the probe ------------------------------------------


class _Process(BaseHTTPRequestHandler):
    """A Synapse process that answers 200 to anything and notes each request's User-Agent."""

    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.agents.append(self.headers.get("User-Agent", ""))
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = answer

    def log_message(self, *args):
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextlib.contextmanager
def fake_processes(topo):
    """A fake process on the HTTP socket of main and of every worker: {upstream_server: agents it got}."""
    servers = {}
    try:
        for process in [topo["main"], *topo["workers"]]:
            listener = process["listeners"][0]
            server = _Server(listener["path"], _Process)
            server.agents = []
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
            servers[listener["upstream_server"]] = server
        yield {address: server.agents for address, server in servers.items()}
    finally:
        for server in servers.values():
            server.shutdown()
            server.server_close()


@contextlib.contextmanager
def nginx_serving(tmp_path, topo, **overrides):
    """nginx on loopback serving the site rendered from ``topo``: yields its HTTPS port."""
    from test_routing_gaps import _free_port, _nginx_template_tests

    site_tests = _nginx_template_tests()
    assert site_tests.NGINX is not None, "nginx is not installed: tests/run installs nginx-light"
    port = _free_port()
    site = tmp_path / "matrix-synapse.conf"
    site.write_text(site_tests.render_for_nginx(
        tmp_path, topo, nginx_https_port=port, nginx_federation_port=0, nginx_http_port=0,
        nginx_listen_ipv6=False, **overrides,
    ))
    conf = tmp_path / "nginx.conf"
    conf.write_text("daemon off;\nmaster_process off;\n" + site_tests.scratch_main_conf(tmp_path, str(site)))
    process = subprocess.Popen(
        [site_tests.NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def socket_dir():
    # Short: a UNIX socket's path has room for 107 bytes.
    path = tempfile.mkdtemp(prefix="polylith-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def probe_through_nginx(tmp_path, site_topo, processes_topo, **overrides):
    """The probe's requests through nginx serving ``site_topo`` to fake processes of ``processes_topo``.

    Returns (sent, log lines, {upstream_server: agents it got}).
    """
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with fake_processes(processes_topo) as got, nginx_serving(tmp_path, site_topo, **overrides) as port:
        server = Homeserver(f"https://127.0.0.1:{port}", context, "matrix.example.org", request_timeout=10,
                            deadline=time.monotonic() + 120)
        sent = routing_probe.send(server, routing_probe.probe_samples("example.org"), RUN)
    lines, other = parse((tmp_path / "matrix-synapse.access.log").read_text())
    assert other == []
    return sent, lines, got


def assert_the_log_names_the_process_that_got_each_request(sent, lines, got):
    by_marker = {line.agent: line for line in lines}
    for request in sent:
        line = by_marker[request.marker]
        if line.answered_by_nginx:
            assert not any(request.marker in agents for agents in got.values()), request
        else:
            assert request.marker in got[line.addresses[-1]], (request, line.text)


@pytest.mark.parametrize("name", ["seed002", "one-of-each"])
def test_nginx_sends_every_probe_request_to_a_right_process(tmp_path, socket_dir, name):
    topo = preset(name, socket_dir)
    # The admin API open to the probe's address, as the lab opens it to the runner.
    sent, lines, got = probe_through_nginx(tmp_path, topo, topo, nginx_admin_api_allowed_clients=["127.0.0.1"])
    assert all(s.outcome in ("HTTP 200", "HTTP 404") for s in sent), [s.outcome for s in sent]
    assert len(lines) == len(sent)
    assert_the_log_names_the_process_that_got_each_request(sent, lines, got)
    findings = judge(sent, lines, topo)
    assert findings == [], report(findings)


def test_nginx_with_the_admin_api_closed_passes_only_when_the_judge_knows(tmp_path, socket_dir):
    topo = preset("seed002", socket_dir)
    sent, lines, _ = probe_through_nginx(tmp_path, topo, topo)
    assert judge(sent, lines, topo, closed_prefixes=(ADMIN_PREFIX,)) == []
    refused = judge(sent, lines, topo)
    assert refused and {f.kind for f in refused} == {REFUSED}
    assert {f.sample.path.split("?")[0][: len(ADMIN_PREFIX)] for f in refused} == {ADMIN_PREFIX}


def test_nginx_with_typing_pointed_at_another_upstream_is_caught(tmp_path, socket_dir):
    deployed = preset("seed002", socket_dir)
    broken = copy.deepcopy(deployed)
    for route in broken["nginx"]["routes"]:
        if route["worker_type"] == "typing":
            route["upstream"] = "synapse_room_worker"
    sent, lines, got = probe_through_nginx(tmp_path, broken, deployed, nginx_admin_api_allowed_clients=["127.0.0.1"])
    assert_the_log_names_the_process_that_got_each_request(sent, lines, got)
    findings = judge(sent, lines, deployed)
    assert [(f.kind, f.sample.method, f.upstream) for f in findings] == [
        (MISROUTED, "PUT", "synapse_room_worker")
    ], report(findings)
    (finding,) = findings
    assert "/typing/" in finding.sample.path and finding.reached[0].name.startswith("rooms")
    assert "has none of the types that serve it" in str(finding)


def test_a_sliding_sync_record_is_judged_like_the_table():
    # What sliding_sync_check.py records for each of its requests.
    topo = preset("seed002")
    sample = Sample("POST", f"{sliding_sync_check.SLIDING_SYNC}?timeout=0", sliding_sync_check.SERVED_BY,
                    MAIN_FALLBACK, sliding_sync_check.WHERE)
    sent = [Sent("polylith-sliding-sync/1/1", sample, "HTTP 200")]
    sync = worker_of(topo, "synchrotron")["listeners"][0]["upstream_server"]
    main = topo["main"]["listeners"][0]["upstream_server"]
    uri = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"
    assert judged(topo, sent, log_line("POST", uri, "synapse_synchrotron", sync, sent[0].marker)) == []
    (finding,) = judged(topo, sent, log_line("POST", uri, "synapse_main", main, sent[0].marker))
    assert finding.kind == MISSED_WORKER
