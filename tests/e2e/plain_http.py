"""Bounded HTTP(S) requests to one homeserver URL, with the standard library only.

The transport of routing_probe.py and sliding_sync_check.py: every request
goes to the base URL given (a new connection each, so a connection the
server closed is never reused), waits at most its timeout, and carries the
User-Agent its caller chooses (the marker nginx's log is searched for).
Access tokens travel in the Authorization header only and are never printed.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

# A 429 asking to wait at most this long is waited out, a few times per request.
MAX_RATE_LIMIT_WAIT = 10.0
RATE_LIMIT_RETRIES = 3


class Timeout(Exception):
    """The run's own bound is spent."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes

    def json(self):
        try:
            parsed = json.loads(self.body) if self.body else None
        except ValueError:
            return None
        return parsed

    @property
    def errcode(self):
        parsed = self.json()
        return parsed.get("errcode") if isinstance(parsed, dict) else None


class _Connection(http.client.HTTPSConnection):
    """HTTPS to ``address`` with ``tls_name`` for SNI, the certificate check and Host."""

    def __init__(self, address, port, tls_name, context, timeout):
        super().__init__(tls_name, port, context=context, timeout=timeout)
        self._address = address

    def connect(self):
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class Homeserver:
    """One base URL (``https://HOST[:PORT]`` or ``http://``), reached within a deadline."""

    def __init__(self, url, ssl_context=None, tls_server_name=None, request_timeout=10.0, deadline=None):
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"the URL must be http(s)://HOST[:PORT], got {url!r}")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError(f"the URL must carry no path, query string or fragment, got {url!r}")
        if tls_server_name is not None and not re.fullmatch(r"[A-Za-z0-9.-]+", tls_server_name):
            raise ValueError(f"the TLS server name must be a DNS name, got {tls_server_name!r}")
        self.scheme = parts.scheme
        self.address = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls_name = tls_server_name or parts.hostname
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.request_timeout = request_timeout
        self.deadline = deadline

    def _timeout(self):
        if self.deadline is None:
            return self.request_timeout
        left = self.deadline - time.monotonic()
        if left <= 0.1:
            raise Timeout("the run's time is spent")
        return min(self.request_timeout, left)

    def _connection(self, timeout):
        if self.scheme == "http":
            return http.client.HTTPConnection(self.address, self.port, timeout=timeout)
        return _Connection(self.address, self.port, self.tls_name, self.ssl_context, timeout)

    def request(self, method, target, body=None, token=None, agent="polylith-e2e"):
        """Send one request (``target`` exactly as given: path and query string); a Response.

        Raises OSError (socket.timeout included) and http.client.HTTPException
        when no answer comes, Timeout when the deadline has passed.
        """
        # http.client sends Host: the TLS name (and port, if not the default).
        headers = {"User-Agent": agent, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection = self._connection(self._timeout())
        try:
            connection.request(method, target, body=data, headers=headers)
            response = connection.getresponse()
            return Response(response.status, response.read())
        finally:
            connection.close()

    def call(self, method, target, body=None, token=None, agent="polylith-e2e"):
        """A request whose short rate limits (429) are waited out; a Response."""
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            response = self.request(method, target, body, token, agent)
            if response.status != 429 or attempt == RATE_LIMIT_RETRIES:
                return response
            parsed = response.json()
            wait_ms = parsed.get("retry_after_ms") if isinstance(parsed, dict) else None
            wait = float(wait_ms) / 1000 if isinstance(wait_ms, (int, float)) else 1.0
            if wait > MAX_RATE_LIMIT_WAIT:
                return response
            time.sleep(wait)
        return response


def tls_context(ca_cert=None):
    """Trust exactly ``ca_cert`` (PEM) when given, the system's store otherwise."""
    return ssl.create_default_context(cafile=ca_cert) if ca_cert else ssl.create_default_context()


class ClientError(Exception):
    """The homeserver refused a step of a client's way in."""


def register(server, localpart, password, agent):
    """Register a user with dummy auth (open registration) and no session of its own."""
    response = server.call(
        "POST",
        "/_matrix/client/v3/register",
        {"username": localpart, "password": password, "auth": {"type": "m.login.dummy"}, "inhibit_login": True},
        agent=agent,
    )
    parsed = response.json()
    if response.status != 200 or not isinstance(parsed, dict) or "user_id" not in parsed:
        raise ClientError(f"register {localpart}: HTTP {response.status} {response.errcode or ''}".strip())
    return parsed["user_id"]


def log_in(server, user_id, password, agent, device_name):
    """Log in with a password: (access token, device ID)."""
    response = server.call(
        "POST",
        "/_matrix/client/v3/login",
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
            "initial_device_display_name": device_name,
        },
        agent=agent,
    )
    parsed = response.json()
    if response.status != 200 or not isinstance(parsed, dict) or "access_token" not in parsed:
        raise ClientError(f"login {user_id}: HTTP {response.status} {response.errcode or ''}".strip())
    return parsed["access_token"], parsed.get("device_id")


def log_out(server, token, agent):
    """End a session; best effort."""
    try:
        server.request("POST", "/_matrix/client/v3/logout", {}, token=token, agent=agent)
    except (OSError, http.client.HTTPException, Timeout):
        pass
