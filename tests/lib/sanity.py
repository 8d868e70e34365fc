"""Run `ansible-test sanity` on the collection as it ships.

    .venv/bin/python tests/lib/sanity.py [ansible-test sanity options]

ansible-test must run from inside a real ansible_collections/NAMESPACE/NAME
directory (it resolves symbolic links, so .collections/ does not do), and it
checks every file it finds there. So this builds the collection with
`ansible-galaxy collection build` (galaxy.yml's build_ignore leaves out the
tests, their tools and every tool cache), unpacks the tarball into a temporary
ansible_collections/polylith/synapse, adds tests/sanity/ (the ignore file),
and runs `ansible-test sanity --venv --python X.Y` there with this Python's
version, the controller's.

ansible-test installs each test's own checkers (pylint, pycodestyle,
voluptuous, yamllint, ...) at the versions it pins, each into a venv of its
own. It bootstraps pip into each with a get-pip script that it downloads
from a host that is not a package index, so it cannot be fetched where only
package indexes are reachable. A stand-in takes its place in ansible-test's
cache: it installs pip from Python's own ensurepip, then the pip release
ansible-test asks for from the package index. ansible-test's home (its venvs
and that cache) is .cache/ansible-test, kept between runs; the first run
builds the venvs, about a minute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / ".cache" / "ansible-test"

GET_PIP_STAND_IN = '''\
"""Stand-in for get-pip.py, written by polylith.synapse's tests/lib/sanity.py.

ansible-test runs it in a new venv as `get-pip.py [pip options] pip==X.Y`.
"""
import subprocess
import sys

ARGS = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *ARGS], check=True)
'''


def pip_version():
    """The pip release ansible-test bootstraps into its venvs."""
    from ansible_test._internal.python_requirements import get_venv_packages

    python = types.SimpleNamespace(version=f"{sys.version_info.major}.{sys.version_info.minor}")
    return get_venv_packages(python)["pip"]


def prepare_home():
    """ansible-test's home with the get-pip stand-in in its cache."""
    cache = HOME / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / f"get_pip_{pip_version().replace('.', '_')}.py").write_text(GET_PIP_STAND_IN)
    return HOME


def unpack_built_collection(workdir):
    """Build the collection and unpack it into workdir/ansible_collections/NS/NAME."""
    dist = workdir / "dist"
    subprocess.run(
        ["ansible-galaxy", "collection", "build", "--output-path", str(dist), str(ROOT)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    (tarball,) = dist.glob("*.tar.gz")
    namespace, name = tarball.name.split("-")[:2]
    content = workdir / "ansible_collections" / namespace / name
    content.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(content, filter="data")
    if (ROOT / "tests" / "sanity").is_dir():
        shutil.copytree(ROOT / "tests" / "sanity", content / "tests" / "sanity")
    return content


def main(argv):
    env = dict(os.environ, HOME=str(prepare_home()))
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    workdir = Path(tempfile.mkdtemp(prefix="polylith-sanity-"))
    try:
        content = unpack_built_collection(workdir)
        command = ["ansible-test", "sanity", "--venv", "--python", python, *argv]
        return subprocess.run(command, cwd=content, env=env, stdin=subprocess.DEVNULL, check=False).returncode
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
