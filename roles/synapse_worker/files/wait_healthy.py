"""Waits until every named Synapse worker answers GET /health with OK.

argv: a JSON object {name: listener}, each listener of the topology with a
UNIX socket "path" or a TCP "upstream_server" (host:port),
and the seconds to wait at most. Prints the workers still not healthy and
exits 1 when the time is up; exits 0 as soon as all answered. One run checks
every worker of the host, so a rerun costs one task however many there are.
"""

import http.client
import json
import socket
import sys
import time


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=5)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.socket_path)


def healthy(target):
    if "path" in target:
        connection = UnixConnection(target["path"])
    else:
        connection = http.client.HTTPConnection(target["upstream_server"], timeout=5)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        return response.status == 200 and response.read() == b"OK"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def main():
    pending = json.loads(sys.argv[1])
    deadline = time.monotonic() + float(sys.argv[2])
    while True:
        pending = {name: target for name, target in pending.items() if not healthy(target)}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(2)
    if pending:
        where = ", ".join(f"{name} ({target.get('path') or target.get('upstream_server')})" for name, target in sorted(pending.items()))
        print(f"not answering /health with OK after {sys.argv[2]} s: {where}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
