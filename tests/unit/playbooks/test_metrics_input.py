"""The metrics variables as inventories give them: bad ones fail site.yml's first play.

As in test_bad_input.py, playbooks/site.yml runs against hosts that cannot be
reached (192.0.2.0/24, TEST-NET-1); a bad case must fail before any
connection is tried, naming the value and the fix. A good case runs only the
derivation (the internal role polylith.synapse._deployment, which never
connects) and shows the metrics targets it derived.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import COLLECTIONS, ROOT

PLAYBOOK = ROOT / "playbooks" / "site.yml"
FIRST_HOST_PLAY = "PLAY [PostgreSQL]"
CONNECTION_SIGNS = ("UNREACHABLE", "Failed to connect", "ssh:")

INVENTORY = {
    "all": {
        "vars": {
            "ansible_connection": "ssh",
            "ansible_user": "root",
            "ansible_ssh_common_args": "-o ConnectTimeout=3 -o BatchMode=yes -o StrictHostKeyChecking=no",
            "synapse_server_name": "example.org",
            "synapse_database_password": "db-Passw0rd",
            "synapse_redis_password": "redis-Passw0rd",
            "synapse_workers": [{"name": "sync", "types": ["synchrotron"], "count": 2, "hosts": ["app1", "app2"]}],
        },
        "hosts": {"app1": {"ansible_host": "192.0.2.1"}, "app2": {"ansible_host": "192.0.2.2"}},
        "children": {
            "synapse_main": {"hosts": {"app1": {}}},
            "synapse_workers": {"hosts": {"app1": {}, "app2": {}}},
        },
    }
}

# A play that derives the deployment and shows the metrics targets.
DERIVE_PLAY = [
    {
        "name": "Derive the deployment",
        "hosts": "synapse_main:synapse_workers",
        "gather_facts": False,
        "roles": [{"role": "polylith.synapse._deployment"}],
        "tasks": [
            {
                "name": "Show the metrics targets",
                "ansible.builtin.debug": {
                    "msg": "targets={{ polylith_synapse_deployment.metrics.targets | map(attribute='target') | join(',') }}"
                },
                "run_once": True,
            }
        ],
    }
]

# Each host binds its metrics to its own (private) address.
OWN_ADDRESSES = {"app1": {"synapse_metrics_address": "192.0.2.1"}, "app2": {"synapse_metrics_address": "192.0.2.2"}}

# (id, extra vars, what the output must hold[, host variables]): a good
# case's targets, or a bad case's message fragments.
GOOD = [
    ("metrics-on", {"synapse_metrics_enabled": True, "synapse_metrics_port": "9000"},
     "targets=127.0.0.1:9000,127.0.0.1:19091,127.0.0.1:19092"),
    ("metrics-on-from-the-command-line", {"synapse_metrics_enabled": "true"},
     "targets=127.0.0.1:19090,127.0.0.1:19091,127.0.0.1:19092"),
    ("metrics-on-own-addresses", {"synapse_metrics_enabled": True, "synapse_metrics_allowed_clients": ["192.0.2.50"]},
     "targets=192.0.2.1:19090,192.0.2.1:19091,192.0.2.2:19092", OWN_ADDRESSES),
    ("metrics-on-one-own-address", {"synapse_metrics_enabled": True},
     "targets=127.0.0.1:19090,127.0.0.1:19091,192.0.2.2:19092", {"app2": OWN_ADDRESSES["app2"]}),
    ("metrics-off", {}, "targets="),
]  # fmt: skip
CASES = [
    ("metrics-enabled-word", {"synapse_metrics_enabled": "sometimes"},
     ["synapse_metrics_enabled is 'sometimes' (a string); set it to true or false"]),
    ("metrics-port-privileged", {"synapse_metrics_enabled": True, "synapse_metrics_port": 443},
     ["synapse_metrics_port is 443; give a TCP port from 1024 to 65535", "cannot bind a port below 1024"]),
    ("metrics-port-clash", {"synapse_metrics_enabled": True, "synapse_metrics_port_base": 9093},
     ["the metrics listener of sync1 would listen on port 9093 on host 'app1'", "where main listens already",
      "set synapse_metrics_port_base to the start of a free range"]),
]  # fmt: skip


def _run(tmp_path, case_id, extra_vars, playbook=PLAYBOOK, host_vars=None):
    case_dir = tmp_path / case_id
    case_dir.mkdir()
    inventory = json.loads(json.dumps(INVENTORY))
    for host, values in (host_vars or {}).items():
        inventory["all"]["hosts"][host].update(values)
    (case_dir / "inventory.json").write_text(json.dumps(inventory))
    if playbook is None:
        playbook = case_dir / "derive.yml"
        playbook.write_text(json.dumps(DERIVE_PLAY))
    (case_dir / "extra.json").write_text(json.dumps(extra_vars))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_TIMEOUT": "3",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": str(case_dir / "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(case_dir / "cp"),
    }
    command = ["ansible-playbook", "-i", str(case_dir / "inventory.json"), str(playbook),
               "-e", f"@{case_dir / 'extra.json'}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("metrics-input")
    with ThreadPoolExecutor(2) as pool:
        futures = {case_id: pool.submit(_run, workdir, case_id, extra) for case_id, extra, _ in CASES}
        futures.update(
            {g[0]: pool.submit(_run, workdir, g[0], g[1], None, g[3] if len(g) > 3 else None) for g in GOOD}
        )
        return {case_id: future.result() for case_id, future in futures.items()}


@pytest.mark.parametrize(("case_id", "expected"), [(g[0], g[2]) for g in GOOD], ids=[g[0] for g in GOOD])
def test_good_metrics_variables_derive_their_targets(results, case_id, expected):
    returncode, output = results[case_id]
    assert returncode == 0, output
    assert re.search(rf"^\s*msg: {re.escape(expected)}$", output, re.M), output


@pytest.mark.parametrize(("case_id", "fragments"), [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_metrics_variables_fail_before_connecting(results, case_id, fragments):
    returncode, output = results[case_id]
    assert returncode != 0, output
    flat = re.sub(r"\s+", " ", output)
    for fragment in fragments:
        assert fragment in flat, f"{fragment!r} missing from:\n{output}"
    for sign in CONNECTION_SIGNS:
        assert sign not in output, f"{sign!r}: Ansible tried to connect:\n{output}"
    assert FIRST_HOST_PLAY not in output, output
    assert "Traceback" not in output, output
