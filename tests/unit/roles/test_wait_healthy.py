"""synapse_worker's health wait: one run checks every worker of a host."""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import ROOT

SCRIPT = ROOT / "roles" / "synapse_worker" / "files" / "wait_healthy.py"


class Health(BaseHTTPRequestHandler):
    answer = b"OK"

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.answer if self.path == "/health" else b"no"
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class UnixHTTPServer(socketserver.UnixStreamServer):
    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)


@pytest.fixture
def servers(tmp_path):
    path = str(tmp_path / "sync1.sock")
    unix = UnixHTTPServer(path, Health)
    tcp = HTTPServer(("127.0.0.1", 0), Health)
    for server in (unix, tcp):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"sync1": {"path": path}, "reader1": {"upstream_server": f"127.0.0.1:{tcp.server_address[1]}"}}
    for server in (unix, tcp):
        server.shutdown()
        server.server_close()


def wait(targets, seconds):
    return subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(targets), str(seconds)], capture_output=True, text=True, timeout=60
    )


def test_every_worker_healthy_over_unix_and_tcp(servers):
    result = wait(servers, 10)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_names_the_workers_that_never_answer(servers, tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    targets = {**servers, "sender1": {"upstream_server": f"127.0.0.1:{port}"},
               "media1": {"path": str(tmp_path / "missing.sock")}}
    result = wait(targets, 1)
    assert result.returncode == 1
    assert "media1" in result.stdout and "sender1" in result.stdout
    assert "sync1" not in result.stdout and "reader1" not in result.stdout


def test_an_answer_other_than_ok_is_not_healthy(servers, monkeypatch):
    monkeypatch.setattr(Health, "answer", b"STARTING")
    result = wait(servers, 1)
    assert result.returncode == 1
    assert "sync1" in result.stdout and "reader1" in result.stdout
