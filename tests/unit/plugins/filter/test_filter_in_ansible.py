"""The filter as operators call it: by FQCN from a playbook, reading the inventory."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from conftest import COLLECTIONS, ROOT

PLAY = Path(__file__).parent / "files" / "topology_play.yml"


def run_play(tmp_path, workers):
    inventory = {
        "all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                     "synapse_workers": workers},
            "children": {
                "synapse_main": {"hosts": {"app1": {"ansible_host": "10.0.0.1"}}},
                "synapse_workers": {"hosts": {"app2": {"ansible_host": "10.0.0.2"}}},
                "nginx": {"hosts": {"app1": {}}},
            },
        }
    }
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory))
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        ["ansible-playbook", "-i", str(path), str(PLAY)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )


def test_filter_runs_in_a_playbook(tmp_path):
    result = run_play(
        tmp_path,
        [{"name": "sync", "types": ["synchrotron"], "count": 2, "hosts": ["app1", "app2"]},
         {"name": "typing", "types": ["typing"]}],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed=0" in result.stdout


def test_bad_worker_list_fails_the_play_with_the_fix(tmp_path):
    result = run_play(tmp_path, [{"name": "typing", "types": ["typing"], "count": 2}])
    assert result.returncode != 0
    assert "typing1, typing2 all write the 'typing' stream" in result.stdout + result.stderr
