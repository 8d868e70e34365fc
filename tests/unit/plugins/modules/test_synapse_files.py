"""The synapse_files module: many files in one task, each validated before it goes live."""

from __future__ import annotations

import getpass
import grp
import json
import os
import stat
import subprocess
import sys

from conftest import ROOT

MODULE = ROOT / "plugins" / "modules" / "synapse_files.py"


def run(tmp_path, check_mode=False, diff=False, **params):
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**params, "_ansible_check_mode": check_mode,
                                                        "_ansible_diff": diff}}))
    result = subprocess.run([sys.executable, str(MODULE), str(args)], capture_output=True, text=True, timeout=60)
    return json.loads(result.stdout)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def owner_group():
    return getpass.getuser(), grp.getgrgid(os.getgid()).gr_name


def test_writes_new_files_with_the_asked_mode_then_changes_nothing(tmp_path):
    owner, group = owner_group()
    files = {str(tmp_path / "a.yaml"): "a: 1\n", str(tmp_path / "b.yaml"): "b: 2\n"}
    first = run(tmp_path, files=files, owner=owner, group=group, mode="0640")
    assert first["changed"] is True
    assert first["changed_files"] == sorted(files)
    assert (tmp_path / "a.yaml").read_text() == "a: 1\n"
    assert mode(tmp_path / "a.yaml") == 0o640 and mode(tmp_path / "b.yaml") == 0o640
    again = run(tmp_path, files=files, owner=owner, group=group, mode="0640")
    assert again["changed"] is False and again["changed_files"] == []


def test_only_the_file_whose_content_changed_is_rewritten(tmp_path):
    files = {str(tmp_path / "a.yaml"): "a: 1\n", str(tmp_path / "b.yaml"): "b: 2\n"}
    run(tmp_path, files=files, mode="0640")
    before = os.stat(tmp_path / "a.yaml").st_ino
    result = run(tmp_path, files={**files, str(tmp_path / "b.yaml"): "b: 3\n"}, mode="0640")
    assert result["changed_files"] == [str(tmp_path / "b.yaml")]
    assert os.stat(tmp_path / "a.yaml").st_ino == before
    assert (tmp_path / "b.yaml").read_text() == "b: 3\n"
    assert mode(tmp_path / "b.yaml") == 0o640


def test_a_mode_that_drifted_is_put_back(tmp_path):
    target = tmp_path / "a.yaml"
    run(tmp_path, files={str(target): "a: 1\n"}, mode="0640")
    os.chmod(target, 0o666)
    result = run(tmp_path, files={str(target): "a: 1\n"}, mode="0640")
    assert result["changed_files"] == [str(target)]
    assert mode(target) == 0o640


def test_a_refused_content_never_goes_live(tmp_path):
    target = tmp_path / "a.yaml"
    run(tmp_path, files={str(target): "good\n"}, mode="0640")
    checker = f"{sys.executable} -c \"import sys; sys.exit('bad' in open(sys.argv[1]).read())\" %s"
    result = run(tmp_path, files={str(target): "bad\n"}, mode="0640", validate=checker)
    assert result.get("failed") is True
    assert f"the new content of {target} was refused" in result["msg"]
    assert target.read_text() == "good\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.yaml", "args.json"]
    accepted = run(tmp_path, files={str(target): "fine\n"}, mode="0640", validate=checker)
    assert accepted["changed"] is True and target.read_text() == "fine\n"


def test_check_mode_reports_and_writes_nothing(tmp_path):
    existing = tmp_path / "a.yaml"
    run(tmp_path, files={str(existing): "a: 1\n"}, mode="0640")
    os.chmod(existing, 0o600)
    new = tmp_path / "b.yaml"
    result = run(tmp_path, check_mode=True, diff=True,
                 files={str(existing): "a: 1\n", str(new): "b: 2\n"}, mode="0640")
    assert result["changed_files"] == [str(existing), str(new)]
    assert not new.exists() and mode(existing) == 0o600
    assert result["diff"] == [{"before_header": str(new), "after_header": str(new), "before": "", "after": "b: 2\n"}]


def test_relative_paths_and_a_validate_without_the_file_are_refused(tmp_path):
    assert "not an absolute path" in run(tmp_path, files={"a.yaml": "x"})["msg"]
    result = run(tmp_path, files={str(tmp_path / "a.yaml"): "x"}, validate="/bin/true")
    assert "validate must name the file to check as %s" in result["msg"]
    assert not (tmp_path / "a.yaml").exists()


def test_directories_are_created_with_the_asked_mode_before_the_files(tmp_path):
    config = tmp_path / "etc" / "app"
    logs = config / "log"
    result = run(tmp_path, directories=[str(config), str(logs)],
                 files={str(logs / "main.yaml"): "x: 1\n"}, mode="0750")
    assert result["changed_files"] == [str(config), str(logs), str(logs / "main.yaml")]
    assert mode(config) == 0o750 and mode(logs) == 0o750
    assert (logs / "main.yaml").read_text() == "x: 1\n"
    os.chmod(logs, 0o755)
    again = run(tmp_path, directories=[str(config), str(logs)], mode="0750")
    assert again["changed_files"] == [str(logs)] and mode(logs) == 0o750
    assert run(tmp_path, directories=[str(config), str(logs)], mode="0750")["changed"] is False


def test_check_mode_creates_no_directory(tmp_path):
    wanted = tmp_path / "new"
    result = run(tmp_path, check_mode=True, directories=[str(wanted)], mode="0750")
    assert result["changed_files"] == [str(wanted)] and not wanted.exists()
    assert "not an absolute path" in run(tmp_path, directories=["relative"])["msg"]


def test_without_force_an_existing_content_is_kept_and_a_missing_file_written(tmp_path):
    kept, missing = tmp_path / "secret_a", tmp_path / "secret_b"
    kept.write_text("first value")
    os.chmod(kept, 0o644)
    result = run(tmp_path, force=False, mode="0640",
                 files={str(kept): "another value", str(missing): "fresh value"})
    assert result["changed_files"] == [str(kept), str(missing)]
    assert kept.read_text() == "first value" and mode(kept) == 0o640
    assert missing.read_text() == "fresh value" and mode(missing) == 0o640
    again = run(tmp_path, force=False, mode="0640",
                files={str(kept): "a third value", str(missing): "a fourth value"})
    assert again["changed"] is False
    assert kept.read_text() == "first value" and missing.read_text() == "fresh value"
