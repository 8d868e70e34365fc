"""synapse_main's secrets.yml, run by Ansible on this machine into a scratch directory.

The tasks write the signing key, the secrets, the record of the key in use
and the password files as on the main host, with the test's own Synapse
(its generate_signing_key and export_signing_key) standing in for the
host's venv. Each run is made with --diff: no secret may show in its output.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from signedjson.key import encode_verify_key_base64, generate_signing_key, get_verify_key, read_signing_keys, write_signing_keys

from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from conftest import COLLECTIONS, ROOT

VENV = Path(sys.prefix)
SECRETS = ("macaroon_secret_key", "form_secret", "registration_shared_secret", "worker_replication_secret")
DATABASE_PASSWORD = "db-password-71c3e0"

PLAY = """
- name: Write the secrets as the main host does
  hosts: synapse_main
  gather_facts: false
  tasks:
    - name: Run secrets.yml
      ansible.builtin.include_role:
        name: polylith.synapse.synapse_main
        tasks_from: secrets.yml
    # The notified restart has no systemd to talk to here.
    - name: End before the handlers
      ansible.builtin.meta: end_play
"""


def synapse_key(version):
    key = generate_signing_key(version)
    out = io.StringIO()
    write_signing_keys(out, [key])
    return out.getvalue(), f"ed25519:{version} {encode_verify_key_base64(get_verify_key(key))}"


def public_part(text):
    (key,) = read_signing_keys(text.splitlines())
    return f"ed25519:{key.version} {encode_verify_key_base64(get_verify_key(key))}"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A scratch main host: config and data directories, and a way to run secrets.yml on it."""
    assert os.geteuid() == 0, "the tasks set owner root, as on a host"
    assert (VENV / "bin" / "generate_signing_key").exists(), "Synapse is not installed in the test venv"
    base = tmp_path_factory.mktemp("host")
    etc, data = base / "etc", base / "data"
    (etc / "secrets").mkdir(parents=True)
    data.mkdir()
    deployment = build_topology([], hosts={"app1": "127.0.0.1"}, main_host="app1")
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}"},
                         "children": {"synapse_main": {"hosts": {"app1": {}}}}}}  # fmt: skip
    (base / "inventory.json").write_text(json.dumps(inventory))
    (base / "play.yml").write_text(PLAY)
    runs = []

    def run(**variables):
        values = {
            "polylith_synapse_deployment": deployment,
            "synapse_server_name": "example.org",
            "synapse_database_password": DATABASE_PASSWORD,
            "synapse_system_user": "root",
            "synapse_main_config_dir": str(etc),
            "synapse_main_data_dir": str(data),
            "synapse_main_venv_dir": str(VENV),
            **variables,
        }
        (base / "vars.json").write_text(json.dumps(values))
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_LOCAL_TEMP": str(base / "tmp")}  # fmt: skip
        result = subprocess.run(
            ["ansible-playbook", "--diff", "-i", str(base / "inventory.json"), "-e", f"@{base / 'vars.json'}",
             str(base / "play.yml")],
            capture_output=True, text=True, env=env, timeout=300, cwd=ROOT,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        runs.append(output)
        return output

    return etc, data, run, runs


def changed(output):
    return int(re.search(r"app1 +: ok=\d+ +changed=(\d+)", output).group(1))


def secrets_on_disk(etc):
    return {name: (etc / "secrets" / name).read_text() for name in (*SECRETS, "signing.key", "pgpass")}


def assert_hidden(output, etc):
    for name, value in secrets_on_disk(etc).items():
        secret = value.split()[-1] if name == "signing.key" else value.strip()
        if name == "pgpass":
            secret = DATABASE_PASSWORD
        assert secret not in output, f"the secret in {name} shows in the output"


def test_a_fresh_host_gets_every_secret_once(host):
    etc, data, run, _runs = host
    output = run()
    key = (etc / "secrets" / "signing.key").read_text()
    assert re.fullmatch(r"ed25519 a_[A-Za-z0-9]{4} [A-Za-z0-9+/]{43}\n", key), "not the form Synapse writes"
    for name in SECRETS:
        assert re.fullmatch(r"[A-Za-z0-9]{64}", (etc / "secrets" / name).read_text()), name
    assert len({(etc / "secrets" / name).read_text() for name in SECRETS}) == len(SECRETS)
    assert (data / "signing_key.pub").read_text() == public_part(key) + "\n"
    assert DATABASE_PASSWORD in (etc / "secrets" / "pgpass").read_text()
    for name in (*SECRETS, "signing.key"):
        assert stat.S_IMODE((etc / "secrets" / name).stat().st_mode) == 0o640, name
    assert stat.S_IMODE((etc / "secrets" / "pgpass").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "signing_key.pub").stat().st_mode) == 0o640
    assert_hidden(output, etc)


def test_a_rerun_changes_nothing(host):
    etc, _data, run, runs = host
    assert runs, "runs after test_a_fresh_host_gets_every_secret_once"
    before = secrets_on_disk(etc)
    output = run()
    assert changed(output) == 0, output
    assert secrets_on_disk(etc) == before


def test_supplied_secrets_replace_the_generated_ones(host):
    etc, data, run, _runs = host
    generated = secrets_on_disk(etc)
    key = generated["signing.key"]
    supplied = {"synapse_main_form_secret": "supplied-form-secret-0a1b\n",
                "synapse_main_macaroon_secret_key": generated["macaroon_secret_key"],
                # The key the host has, written otherwise: an equal key is left alone.
                "synapse_main_signing_key": "  " + key.strip().replace(" ", "\t") + "\n\n"}  # fmt: skip
    output = run(**supplied)
    assert (etc / "secrets" / "form_secret").read_text() == "supplied-form-secret-0a1b"
    assert (etc / "secrets" / "macaroon_secret_key").read_text() == generated["macaroon_secret_key"]
    assert (etc / "secrets" / "registration_shared_secret").read_text() == generated["registration_shared_secret"]
    assert (etc / "secrets" / "signing.key").read_text() == key
    assert changed(output) == 1, output
    assert "supplied-form-secret-0a1b" not in output and generated["form_secret"] not in output
    assert_hidden(output, etc)
    assert changed(run(**supplied)) == 0


def test_a_supplied_key_replaces_the_old_and_keeps_it_beside(host):
    etc, data, run, _runs = host
    old = (etc / "secrets" / "signing.key").read_text()
    new, new_public = synapse_key("a_SuPp")
    output = run(synapse_main_signing_key=new)
    assert (etc / "secrets" / "signing.key").read_text() == new
    assert (data / "signing_key.pub").read_text() == new_public + "\n"
    backups = [p for p in (etc / "secrets").iterdir() if p.name.startswith("signing.key.")]
    assert [p.read_text() for p in backups] == [old]
    assert stat.S_IMODE(backups[0].stat().st_mode) == 0o640
    for text in (old, new):
        assert text.split()[2] not in output, "a key's secret part shows in the --diff output"
    assert changed(run(synapse_main_signing_key=new)) == 0
