"""The database wait every Synapse unit runs before Synapse starts (ExecStartPre)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from conftest import ROOT

SCRIPT = ROOT / "roles" / "synapse_main" / "files" / "wait_for_database.py"

# A psycopg2 that refuses the first N connections, then accepts, and notes
# the arguments it was called with.
FAKE_PSYCOPG2 = '''
import json, os

class Error(Exception):
    pass

class OperationalError(Error):
    pass

class _Connection:
    def close(self):
        pass

def connect(**kwargs):
    path = os.environ["FAKE_PG_STATE"]
    with open(path) as handle:
        state = json.load(handle)
    state["calls"].append(kwargs)
    with open(path, "w") as handle:
        json.dump(state, handle)
    if len(state["calls"]) <= state["refuse"]:
        raise OperationalError("connection to server on socket failed: No such file or directory")
    return _Connection()
'''


def run(tmp_path, refuse, seconds):
    (tmp_path / "fake").mkdir(exist_ok=True)
    (tmp_path / "fake" / "psycopg2.py").write_text(FAKE_PSYCOPG2)
    state = tmp_path / "pg.json"
    state.write_text(json.dumps({"refuse": refuse, "calls": []}))
    config = tmp_path / "homeserver.yaml"
    config.write_text(yaml.safe_dump({"database": {"name": "psycopg2", "args": {
        "user": "synapse", "dbname": "synapse", "host": "/var/run/postgresql", "port": 5432,
        "passfile": "/etc/matrix-synapse/secrets/pgpass", "cp_min": 5, "cp_max": 10, "keepalives_idle": 10}}}))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "fake"), "FAKE_PG_STATE": str(state)}
    result = subprocess.run([sys.executable, str(SCRIPT), str(config), str(seconds)],
                            capture_output=True, text=True, timeout=60, env=env)
    return result, json.loads(state.read_text())["calls"]


def test_waits_until_the_database_accepts_synapses_login(tmp_path):
    result, calls = run(tmp_path, refuse=2, seconds=30)
    assert result.returncode == 0, result.stderr
    assert len(calls) == 3
    # Synapse's own connection, without its pool settings.
    assert calls[-1] == {"user": "synapse", "dbname": "synapse", "host": "/var/run/postgresql", "port": 5432,
                         "passfile": "/etc/matrix-synapse/secrets/pgpass", "keepalives_idle": 10,
                         "connect_timeout": 5}


def test_gives_up_after_the_time_naming_the_last_error(tmp_path):
    result, calls = run(tmp_path, refuse=1000, seconds=1)
    assert result.returncode == 1
    assert "did not accept Synapse's login within 1 s" in result.stderr
    assert "No such file or directory" in result.stderr
    assert 1 <= len(calls) <= 3
