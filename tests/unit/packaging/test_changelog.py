"""Changelog fragments as contributors write them, and the release that consumes them."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from conftest import ROOT

CONFIG = yaml.safe_load((ROOT / "changelogs" / "config.yaml").read_text())
SECTIONS = [name for name, _title in CONFIG["sections"]]


def changelog(*args, cwd=ROOT):
    return subprocess.run(["antsibull-changelog", *args], cwd=cwd, capture_output=True, text=True,
                           timeout=300, check=False)


def test_the_standard_sections_are_configured():
    assert {"major_changes", "minor_changes", "breaking_changes", "deprecated_features",
            "removed_features", "security_fixes", "bugfixes", "known_issues"} <= set(SECTIONS)
    assert CONFIG["output"] == [{"file": "CHANGELOG.md", "format": "md"}]


def test_a_fragment_in_each_section_passes_lint(tmp_path):
    fragments = []
    for section in SECTIONS:
        fragment = tmp_path / f"{section}.yml"
        fragment.write_text(yaml.safe_dump({section: ["The ``nginx`` role does something new."]}))
        fragments.append(str(fragment))
    result = changelog("lint", *fragments)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_fragment_with_an_unknown_section_fails_lint(tmp_path):
    fragment = tmp_path / "topic.yml"
    fragment.write_text(yaml.safe_dump({"new_features": ["Something."]}))
    result = changelog("lint", str(fragment))
    assert result.returncode != 0
    assert "invalid section: new_features" in result.stdout + result.stderr


def test_a_release_moves_fragments_into_changelog_md(tmp_path):
    """What the README tells a contributor to do ends up in the next release's notes."""
    for path in ("galaxy.yml", "CHANGELOG.md", "changelogs/config.yaml", "changelogs/changelog.yaml"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    fragments = tmp_path / "changelogs" / "fragments"
    fragments.mkdir()
    (fragments / "nginx-thing.yml").write_text(
        "---\nminor_changes:\n  - nginx - serves a new thing.\nbugfixes:\n  - redis - fixes an old thing.\n"
    )
    result = changelog("release", "--version", "99.0.0", "--date", "2099-01-01", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    notes = (tmp_path / "CHANGELOG.md").read_text()
    newest = notes.split("## v0\\.1\\.0")[0]
    assert "## v99\\.0\\.0" in newest
    assert "### Minor Changes\n\n* nginx \\- serves a new thing\\." in newest
    assert "### Bugfixes\n\n* redis \\- fixes an old thing\\." in newest
    assert list(fragments.iterdir()) == []
    released = yaml.safe_load((tmp_path / "changelogs" / "changelog.yaml").read_text())["releases"]
    assert set(released) == {"0.1.0", "99.0.0"}
