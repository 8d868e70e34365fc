"""playbooks/restart.yml and the restarts of a deploy, run for real against a stand-in systemd.

Two inventory hosts (local connections) run the real playbook and roles;
`systemctl` is tests/lib/fake_systemctl.py, which keeps the units' states and
logs every call, and each Synapse process is a small HTTP server answering
/health on the listener the deployment gives it (TCP on 127.0.0.2 and
127.0.0.3, or a UNIX socket). The tests read from the calls in which order
processes restarted and from the servers when each answered:

- restart.yml restarts main first, then the workers in the filter's batches,
  every host finishing a batch (restarted and answering /health) before any
  host starts the next; a batch that fails stops every host;
- without restart_all (upgrade.yml's import), only processes older than a
  file they read restart: a change left by a run that stopped half-way is
  applied by the next run, and a run with nothing due changes nothing;
- unit files systemd has not reloaded are reloaded;
- changed stream writers stop every worker on every host before main restarts.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ansible_collections.polylith.synapse.plugins.plugin_utils.restarts import (
    restart_batches,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from conftest import COLLECTIONS, ROOT

FAKE = ROOT / "tests" / "lib" / "fake_systemctl.py"
ADDRESSES = {"app1": "127.0.0.2", "app2": "127.0.0.3"}
WORKER_UNIT = "matrix-synapse-worker@{}.service"
GROUPS = {"synapse_main": ["app1"], "synapse_workers": ["app1", "app2"], "postgres": ["app1"],
          "redis": ["app1"], "nginx": ["app1"]}


def free_port(address):
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def worker_list():
    return [
        {"name": "typing", "types": ["typing"], "port": free_port(ADDRESSES["app1"])},
        {"name": "events", "types": ["event_persister"], "count": 2, "hosts": ["app1", "app2"]},
        {"name": "sync", "types": ["synchrotron"], "count": 2, "hosts": ["app1", "app2"],
         "port": free_port(ADDRESSES["app2"])},
        {"name": "sender", "types": ["federation_sender"], "hosts": ["app2"]},
    ]


class Health(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.answers.append((time.monotonic(), self.server.process))
        body = b"OK" if self.path == "/health" else b"no"
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


class Deployment:
    """A scratch deployment: config files, the fake systemd's units, the health servers."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.config = tmp_path / "etc"
        self.sockets = tmp_path / "run"
        self.state = tmp_path / "systemd.json"
        self.log = tmp_path / "systemd.json.log"
        self.workers = worker_list()
        self.topology = build_topology(
            self.workers, groups=GROUPS, hostvars={h: {"ansible_host": a} for h, a in ADDRESSES.items()},
            socket_dir=str(self.sockets),
        )
        self.answers = []
        self.servers = []
        for sub in ("workers", "log", "secrets"):
            (self.config / sub).mkdir(parents=True)
        self.sockets.mkdir()
        for name in ("homeserver.yaml", "workers.yaml", "secrets/signing.key", "log/main.yaml"):
            (self.config / name).write_text("x: 1\n")
        for worker in self.topology["workers"]:
            (self.config / "workers" / f"{worker['name']}.yaml").write_text("x: 1\n")
            (self.config / "log" / f"{worker['name']}.yaml").write_text("x: 1\n")
        record = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "matrix_synapse-1.163.2.dist-info"
        record.mkdir(parents=True)
        (record / "RECORD").write_text("x")
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "systemctl").write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
        (bin_dir / "systemctl").chmod(0o755)
        self.bin_dir = bin_dir
        time.sleep(0.05)  # every process starts after its files
        now = int(time.monotonic() * 1e6)
        units = {"matrix-synapse.target": {"active": "active", "enabled": "enabled"},
                 "matrix-synapse.service": {"active": "active", "enabled": "enabled", "started_usec": now}}
        for worker in self.topology["workers"]:
            units[WORKER_UNIT.format(worker["name"])] = {"active": "active", "enabled": "enabled", "started_usec": now}
        self.state.write_text(json.dumps({"units": units}))
        self.inventory = tmp_path / "inventory.json"
        self.inventory.write_text(json.dumps(self.inventory_data()))
        for process in [self.topology["main"], *self.topology["workers"]]:
            self.serve(process["name"], process["listeners"][0])

    def inventory_data(self):
        hosts = {name: {"ansible_host": address} for name, address in ADDRESSES.items()}
        return {"all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "synapse_server_name": "example.org",
                "synapse_database_password": "db-Passw0rd",
                "synapse_redis_password": "redis-Passw0rd",
                "synapse_system_user": "daemon",
                "synapse_socket_dir": str(self.sockets),
                "synapse_workers": self.workers,
                "synapse_main_config_dir": str(self.config),
                "synapse_main_venv_dir": str(self.tmp / "venv"),
                "synapse_worker_health_timeout": 20,
                "synapse_main_health_timeout": 20,
            },
            "hosts": hosts,
            "children": {group: {"hosts": {host: {} for host in members}} for group, members in GROUPS.items()},
        }}

    def serve(self, process, listener):
        if "path" in listener:
            server = UnixHTTPServer(listener["path"], Health)
        else:
            host, port = listener["upstream_server"].rsplit(":", 1)
            server = HTTPServer((host, int(port)), Health)
        server.answers, server.process = self.answers, process
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.servers.append(server)

    def close(self):
        for server in self.servers:
            server.shutdown()
            server.server_close()

    def units(self):
        return json.loads(self.state.read_text())["units"]

    def set_units(self, fail=None, **changes):
        """Change units' states; ``fail`` lists units that fail to (re)start."""
        state = json.loads(self.state.read_text())
        for name, values in changes.items():
            state["units"].setdefault(name, {}).update(values)
        if fail is not None:
            state["fail"] = fail
        self.state.write_text(json.dumps(state))

    def calls(self):
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def restarts(self):
        """(time, unit) of every unit restarted, in order."""
        found = []
        for call in self.calls():
            words = [arg for arg in call["argv"] if not arg.startswith("-")]
            if words[0] == "restart":
                found.extend((call["time"], unit) for unit in words[1:])
        return found

    def run(self, playbook="restart.yml", *extra):
        self.log.unlink(missing_ok=True)
        self.answers.clear()
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
               "ANSIBLE_NOCOLOR": "1", "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
               "FAKE_SYSTEMCTL_STATE": str(self.state)}
        return subprocess.run(
            ["ansible-playbook", "-i", str(self.inventory), str(ROOT / "playbooks" / playbook), *extra],
            capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
        )


@pytest.fixture
def deployment(tmp_path):
    deployment = Deployment(tmp_path)
    yield deployment
    deployment.close()


DUE_ONLY = ("-e", "synapse_main_restart_all=false", "-e", "synapse_worker_restart_all=false")


def recap(result):
    """Each host's PLAY RECAP counters."""
    counters = {}
    for line in result.stdout.splitlines():
        if line.startswith(("app1 ", "app2 ")) and ":" in line:
            host, _, rest = line.partition(":")
            counters[host.strip()] = {k: int(v) for k, v in (pair.split("=") for pair in rest.split())}
    return counters


def batch_of(batches, unit):
    for index, batch in enumerate(batches):
        if unit in [WORKER_UNIT.format(name) for name in batch]:
            return index
    raise AssertionError(f"{unit} is in no batch")


def check_rolling_order(deployment, restarts):
    """Main first; then the filter's batches in order, each answering /health before the next."""
    batches = restart_batches(deployment.topology)
    units = [unit for _, unit in restarts]
    assert units[0] == "matrix-synapse.service"
    assert sorted(units[1:]) == sorted(WORKER_UNIT.format(w["name"]) for w in deployment.topology["workers"])
    order = [batch_of(batches, unit) for unit in units[1:]]
    assert order == sorted(order), f"batches restarted out of order: {units}"
    restart_times = {unit: at for at, unit in restarts}
    main_restart = restart_times["matrix-synapse.service"]
    first_worker = min(at for at, unit in restarts if unit != "matrix-synapse.service")
    assert any(main_restart < at < first_worker for at, process in deployment.answers if process == "main"), \
        "a worker restarted before main answered /health"
    for index, batch in enumerate(batches[:-1]):
        next_start = min(restart_times[WORKER_UNIT.format(name)] for name in batches[index + 1])
        for name in batch:
            restarted = restart_times[WORKER_UNIT.format(name)]
            assert any(restarted < at < next_start for at, process in deployment.answers if process == name), \
                f"{name} did not answer /health between its restart and batch {index + 1}"


def test_restarts_follow_the_rules_and_the_hosts_state(deployment):
    """One deployment through five runs, each starting from what the last one left on the hosts."""
    hosts = {worker["name"]: worker["host"] for worker in deployment.topology["workers"]}
    batches = restart_batches(deployment.topology)
    # Writers first (typing and one event persister, then the other), then
    # the rest, never both instances of a type together; batch 3 spans both
    # hosts (sync1 on app1, sender on app2).
    assert batches == [["typing", "events1"], ["events2"], ["sync1", "sender"], ["sync2"]]
    assert {hosts["sync1"], hosts["sender"]} == {"app1", "app2"}

    def run(*extra, fails=False):
        result = deployment.run("restart.yml", *extra)
        assert (result.returncode != 0) is fails, result.stdout[-4000:] + result.stderr
        return result

    # 1. restart.yml: main, then every batch on both hosts before the next.
    run()
    check_rolling_order(deployment, deployment.restarts())
    noted = deployment.config / ".assignments.yaml"
    assert "typing:" in noted.read_text()  # the stream writers the processes run with

    # 2. upgrade.yml's restart (due only) with nothing changed since the
    # processes started: nothing restarts, nothing changes.
    result = run(*DUE_ONLY)
    assert deployment.restarts() == []
    assert not [call for call in deployment.calls() if call["argv"][:1] in (["stop"], ["start"], ["daemon-reload"])]
    assert all(host["changed"] == 0 for host in recap(result).values()), result.stdout[-3000:]

    # 3. A run wrote sync2's file and a new unit file, then stopped before
    # restarting anything: the next run reloads systemd and restarts sync2 alone.
    (deployment.config / "workers" / "sync2.yaml").write_text("x: 2\n")
    deployment.set_units(**{WORKER_UNIT.format("sync2"): {"need_reload": True}})
    run(*DUE_ONLY)
    assert [unit for _, unit in deployment.restarts()] == [WORKER_UNIT.format("sync2")]
    assert any(call["argv"][:1] == ["daemon-reload"] for call in deployment.calls())

    # 4. The processes run with other stream writers than the deployment's (a
    # run changed them and stopped): every worker stops, on both hosts, before
    # main restarts; then they start again at once, not in batches.
    noted.write_text(noted.read_text().replace("- typing", "- somebody_else"))
    run(*DUE_ONLY)
    calls = deployment.calls()
    stops = [i for i, call in enumerate(calls) if call["argv"][:2] == ["stop", "matrix-synapse-worker@*.service"]]
    main_restart = next(i for i, c in enumerate(calls) if c["argv"][:2] == ["restart", "matrix-synapse.service"])
    assert len(stops) == 2 and max(stops) < main_restart
    assert [unit for _, unit in deployment.restarts()] == ["matrix-synapse.service"]
    states = deployment.units()
    assert all(states[WORKER_UNIT.format(name)]["active"] == "active" for name in hosts)
    assert "- somebody_else" not in noted.read_text()

    # 5. A run put a new homeserver.yaml live, then stopped: main restarts,
    # then the batches, until events2 (app2) does not come back: neither host
    # goes on to the next batch.
    (deployment.config / "homeserver.yaml").write_text("x: 2\n")
    deployment.set_units(fail=[WORKER_UNIT.format("events2")])
    result = run(*DUE_ONLY, fails=True)
    units = [unit for _, unit in deployment.restarts()]
    assert units[:2] == ["matrix-synapse.service", WORKER_UNIT.format("typing")]
    assert set(units[1:]) == {WORKER_UNIT.format(name) for name in ("typing", "events1", "events2")}, units
    assert not [call for call in deployment.calls() if call["argv"][:1] == ["stop"]]
    assert recap(result)["app2"]["failed"] == 1


def batch_of(batches, unit):
    for index, batch in enumerate(batches):
        if unit in [WORKER_UNIT.format(name) for name in batch]:
            return index
    raise AssertionError(f"{unit} is in no batch")


