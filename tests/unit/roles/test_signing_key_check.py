"""synapse_main's signing key check, run by Ansible on this machine against a real PostgreSQL.

The database query (roles/synapse_main/files/database_state.sh) is judged
against a throwaway PostgreSQL cluster of the installed server (tests/run
installs it), started as the OS user postgres on a UNIX socket in a scratch
directory. The role's tasks (signing_key_check.yml) then run through
ansible-playbook with a local connection on scratch key, record and database
states: what must pass passes, what must be refused is refused with the
reason, and no secret reaches the output, not even at -vvv.
"""

from __future__ import annotations

import copy
import glob
import io
import json
import os
import pwd
import random
import re
import shutil
import socket
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key, write_signing_keys

from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from conftest import COLLECTIONS, ROOT

SCRIPT = ROOT / "roles" / "synapse_main" / "files" / "database_state.sh"
PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))


def synapse_key(version):
    key = generate_signing_key(version)
    out = io.StringIO()
    write_signing_keys(out, [key])
    return out.getvalue(), f"ed25519:{version} {encode_verify_key_base64(get_verify_key(key))}"


KEY, KEY_PUBLIC = synapse_key("a_HoSt")
OTHER, _ = synapse_key("a_NeWw")


def as_postgres(*argv, **kwargs):
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], cwd="/", check=True, capture_output=True,
                          text=True, **kwargs)  # fmt: skip


class Cluster:
    """A throwaway PostgreSQL cluster on a UNIX socket only."""

    def __init__(self):
        assert os.geteuid() == 0, "the query runs as root, becoming postgres, as on the PostgreSQL host"
        assert PG_BINS, "PostgreSQL is not installed: tests/run installs it"
        self.bin = Path(PG_BINS[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="polylith-pg-"))
        postgres = pwd.getpwnam("postgres")
        os.chown(self.dir, postgres.pw_uid, postgres.pw_gid)
        self.port = random.randint(40000, 60000)
        as_postgres(str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "peer", "--no-sync", "-E", "UTF8")
        as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                    "-o", f"-k {self.dir} -p {self.port} -c listen_addresses='' -c fsync=off", "start")  # fmt: skip

    def sql(self, database, statement):
        return as_postgres("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.dir),
                           "-p", str(self.port), "-d", database, "-c", statement).stdout.strip()  # fmt: skip

    def stop(self):
        subprocess.run(["runuser", "-u", "postgres", "--", str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"),
                        "-m", "immediate", "-w", "stop"], cwd="/", capture_output=True)  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    pg = Cluster()
    try:
        yield pg
    finally:
        pg.stop()


def state(socket_dir, port, database, path=None):
    env = {**os.environ, "PATH": f"{path}:{os.environ['PATH']}"} if path else None
    result = subprocess.run(["sh", "-c", SCRIPT.read_text(), "database_state.sh", str(socket_dir), str(port), database],
                            capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result
    return result.stdout


# --- the query alone ------------------------------------------------------------


def test_the_query_tells_each_state(cluster):
    assert state(cluster.dir, cluster.port, "synapse_states") == "no-database\n"
    cluster.sql("postgres", "CREATE DATABASE synapse_states")
    assert state(cluster.dir, cluster.port, "synapse_states") == "no-schema\n"
    cluster.sql("synapse_states", "CREATE TABLE users (name text); CREATE TABLE events (event_id text)")
    assert state(cluster.dir, cluster.port, "synapse_states") == "data 0 0\n"
    cluster.sql("synapse_states", "INSERT INTO events VALUES ('$a'), ('$b')")
    assert state(cluster.dir, cluster.port, "synapse_states") == "data 0 1\n"
    cluster.sql("synapse_states", "INSERT INTO users VALUES ('@a:example.org'), ('@b:example.org')")
    assert state(cluster.dir, cluster.port, "synapse_states") == "data 2 1\n"


def test_the_query_changes_nothing(cluster):
    cluster.sql("postgres", "CREATE DATABASE synapse_untouched")
    before = cluster.sql("postgres", "SELECT xact_commit FROM pg_stat_database WHERE datname = 'synapse_untouched'")
    state(cluster.dir, cluster.port, "synapse_untouched")
    tables = cluster.sql("synapse_untouched", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    assert tables == "0"
    assert before is not None


def test_no_server_is_no_data(tmp_path):
    # No socket, and no cluster set up on the port (pg_lsclusters lists none there).
    assert state(tmp_path, 1, "synapse") == "no-server\n"


def test_a_cluster_set_up_but_not_running_cannot_tell(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "pg_lsclusters").write_text("#!/bin/sh\necho '15  main    5499 down   postgres /var/lib/postgresql/15/main x'\n")
    (fake / "pg_lsclusters").chmod(0o755)
    out = state(tmp_path, 5499, "synapse", path=fake)
    assert out.startswith("unreachable a PostgreSQL cluster is set up on port 5499"), out


def test_a_socket_nobody_answers_cannot_tell(tmp_path):
    directory = tmp_path / "sock"
    directory.mkdir()
    directory.chmod(0o755)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(directory / ".s.PGSQL.5498"))  # bound, never listening: connections are refused
    try:
        out = state(directory, 5498, "synapse")
    finally:
        stale.close()
    assert out.startswith("unreachable ") and "psql" in out, out


# --- the role's tasks, through ansible-playbook ------------------------------------

PLAY = """
- name: Check the signing key as site.yml does
  hosts: synapse_main
  gather_facts: false
  tasks:
    - name: Run the check
      ansible.builtin.include_role:
        name: polylith.synapse.synapse_main
        tasks_from: signing_key_check.yml
    - name: Run the role's preflight copy of it, which finds it done
      ansible.builtin.include_role:
        name: polylith.synapse.synapse_main
        tasks_from: signing_key_check.yml
"""


def run_check(tmp_path, cluster, *, database, key=None, record=None, extra=None, verbose=False):
    """ansible-playbook running the check on this machine; (return code, output with blanks folded)."""
    etc, data = tmp_path / "etc", tmp_path / "data"
    (etc / "secrets").mkdir(parents=True)
    data.mkdir()
    if key is not None:
        (etc / "secrets" / "signing.key").write_text(key)
    if record is not None:
        (data / "signing_key.pub").write_text(record + "\n")
    deployment = build_topology([], hosts={"app1": "127.0.0.1"}, main_host="app1")
    deployment = copy.deepcopy(deployment)
    deployment["backends"]["postgres"].update(socket_dir=str(cluster.dir), port=cluster.port, database=database)
    variables = {
        "polylith_synapse_deployment": deployment,
        "synapse_server_name": "example.org",
        "synapse_database_password": "not-the-secret",
        "synapse_main_config_dir": str(etc),
        "synapse_main_data_dir": str(data),
        **(extra or {}),
    }
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"},
                         "children": {"synapse_main": {"hosts": {"app1": {}}}, "postgres": {"hosts": {"app1": {}}}}}}  # fmt: skip
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    (tmp_path / "play.yml").write_text(PLAY)
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")}  # fmt: skip
    command = ["ansible-playbook", "-i", str(tmp_path / "inventory.json"), "-e", f"@{tmp_path / 'vars.json'}",
               str(tmp_path / "play.yml")] + (["-vvv"] if verbose else [])  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    output = result.stdout + result.stderr
    # The check reads only: the key and the record are as they were.
    assert (etc / "secrets" / "signing.key").exists() == (key is not None)
    if key is not None:
        assert (etc / "secrets" / "signing.key").read_text() == key
    assert sorted(p.name for p in (etc / "secrets").iterdir()) == (["signing.key"] if key is not None else [])
    assert sorted(p.name for p in data.iterdir()) == (["signing_key.pub"] if record is not None else [])
    return result.returncode, " ".join(output.split())


# Each scenario: the database, the key file and record on the host, the
# variables, and whether to run at -vvv. They run a few at a time.
SCENARIOS = {
    "first-key-no-database": {"database": "synapse_absent"},
    "first-key-empty-database": {"database": "synapse_empty"},
    "lost-key-users": {"database": "synapse_used"},
    "lost-key-record": {"database": "synapse_empty", "record": KEY_PUBLIC},
    "lost-key-allowed": {"database": "synapse_used", "record": KEY_PUBLIC,
                         "extra": {"synapse_main_allow_new_signing_key": True}},
    "kept-key": {"database": "synapse_used", "key": KEY, "record": KEY_PUBLIC},
    "kept-key-supplied": {"database": "synapse_used", "key": KEY, "extra": {"synapse_main_signing_key": KEY.strip()}},
    "other-key-supplied": {"database": "synapse_used", "key": KEY, "verbose": True,
                           "extra": {"synapse_main_signing_key": OTHER}},
    "lost-key-supplied": {"database": "synapse_used", "record": KEY_PUBLIC, "extra": {"synapse_main_signing_key": KEY}},
    "lost-key-other-supplied": {"database": "synapse_used", "record": KEY_PUBLIC,
                                "extra": {"synapse_main_signing_key": OTHER}},
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(cluster):
    """Every scenario's (return code, flattened output), against a database Synapse never ran on and one it did."""
    cluster.sql("postgres", "CREATE DATABASE synapse_empty")
    cluster.sql("postgres", "CREATE DATABASE synapse_used")
    cluster.sql("synapse_used", "CREATE TABLE users (name text); CREATE TABLE events (event_id text);"
                                "INSERT INTO users VALUES ('@a:example.org'); INSERT INTO events VALUES ('$e')")  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(4) as pool:
        futures = {
            name: pool.submit(run_check, Path(workdir) / name, cluster, **scenario)
            for name, scenario in SCENARIOS.items()
        }
        return {name: future.result() for name, future in futures.items()}


def passed(runs, name):
    returncode, output = runs[name]
    assert returncode == 0, output
    assert "failed=0" in output, output
    return output


def refused(runs, name):
    returncode, output = runs[name]
    assert returncode != 0, output
    assert "Refuse a run that would give the server a new signing key" in output, output
    return output


@pytest.mark.parametrize("name", ["first-key-no-database", "first-key-empty-database"])
def test_a_first_key_may_be_generated(runs, name):
    passed(runs, name)


def test_a_lost_key_of_a_server_with_users_is_refused(runs):
    output = refused(runs, "lost-key-users")
    assert "signing.key is missing on app1, and the role will not generate a new one" in output
    assert "the database synapse_used on app1 already holds 1 user(s) and events" in output
    assert "synapse_main_allow_new_signing_key: true" in output


def test_a_lost_key_with_a_record_is_refused_without_asking_the_database(runs):
    output = refused(runs, "lost-key-record")
    assert f"this server has used the key ed25519:a_HoSt (public key {KEY_PUBLIC.split()[1]}, recorded in" in output
    assert re.search(r"Ask PostgreSQL whether Synapse's database holds data \(a key would be generated\)\] \**"
                     r" skipping: \[app1\]", output), output  # fmt: skip


def test_allowing_a_new_key_lets_the_run_go_on(runs):
    passed(runs, "lost-key-allowed")


@pytest.mark.parametrize("name", ["kept-key", "kept-key-supplied", "lost-key-supplied"])
def test_the_key_the_server_has_passes(runs, name):
    passed(runs, name)


def test_the_second_check_finds_the_first_done(runs):
    # site.yml checks in a play of its own; the role's preflight then reads nothing again.
    output = passed(runs, "kept-key")
    assert output.count("TASK [polylith.synapse.synapse_main : Look for the signing key]") == 2
    assert re.search(r"Look for the signing key\] \** ok: \[app1\].*Look for the signing key\] \** skipping: \[app1\]",
                     output), output  # fmt: skip


def test_a_different_supplied_key_is_refused_and_no_secret_shows(runs):
    output = refused(runs, "other-key-supplied")
    assert "synapse_main_signing_key (ed25519:a_NeWw) differs from the signing key in" in output
    assert "which holds the key ed25519:a_HoSt" in output
    assert "<TASK" in output or "task path:" in output, "the run was not verbose"
    for secret in (KEY.split()[2], OTHER.split()[2]):
        assert secret not in output, "a key's secret part shows in the -vvv output"


def test_a_supplied_key_other_than_the_recorded_one_is_refused(runs):
    output = refused(runs, "lost-key-other-supplied")
    assert "synapse_main_signing_key (ed25519:a_NeWw) is not the key this server has used" in output
