#!/usr/bin/env python3
"""Throw-away Debian test hosts for the collection, booted with systemd-nspawn.

    lab.py up --release bookworm|trixie [--hosts N] [--name PREFIX] [--timeout S]
    lab.py down [HOST ...]
    lab.py status [--json]
    lab.py ssh HOST [-- CMD ...]
    lab.py reboot HOST [HOST ...] [--timeout S]
    lab.py image --release bookworm|trixie      (build/refresh the cached image only)

Python 3 standard library only; run as root on a Debian runner. See README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import hashlib
import inspect
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

# --------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]
STATE = REPO / ".lab"
HOSTS_DIR = STATE / "hosts"
LOGS_DIR = STATE / "logs"
SSH_DIR = STATE / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
SSH_CONFIG = SSH_DIR / "config"
HOSTS_JSON = STATE / "hosts.json"  # for callers: {host name: {address, release, ...}}
STATE_JSON = STATE / "state.json"  # lab.py's own bookkeeping
INVENTORY = STATE / "inventory.yml"
NET_JSON = STATE / "net.json"
STATE_LOCK = STATE / "lock"

CACHE = Path(os.environ.get("LAB_CACHE", "/var/cache/polylith-lab"))
BRIDGE = os.environ.get("LAB_BRIDGE", "plab0")
SUBNET = ipaddress.ip_network(os.environ.get("LAB_SUBNET", "10.213.57.0/24"))
GATEWAY = SUBNET.network_address + 1
FIRST_HOST = 10  # host addresses are .10, .11, ...
TAG = f"polylith-lab:{BRIDGE}"  # iptables comment on every rule we add
CGROUP_PARENT = "polylith-lab"  # hosts run in <cgroup root>/polylith-lab/NAME

RELEASES = ("bookworm", "trixie")
RUNNER_PACKAGES = ("systemd-container", "debootstrap", "iptables", "openssh-client")
RUNNER_TOOLS = ("systemd-nspawn", "debootstrap", "iptables", "ssh", "ssh-keygen", "ip", "mount")
# Installed into the image by debootstrap. Beyond what systemd + ssh + Ansible
# need: ca-certificates (HTTPS to package indexes, pip) and python3-apt (used
# by Ansible's apt module, which would otherwise install it on first use).
IMAGE_PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "python3", "openssh-server", "iproute2",
    "sudo", "ca-certificates", "python3-apt",
)
RECIPE_VERSION = 1
PIP_DEFAULT_HOSTS = ("pypi.org", "files.pythonhosted.org")
RUNNER_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_CA_BUNDLE = "/etc/ssl/lab-runner-ca-bundle.crt"  # path inside a host

BOOT_TIMEOUT = 60  # s, launch to SSH answering on every host
STOP_TIMEOUT = 30  # s, clean poweroff before forcing it
REBOOT_TIMEOUT = 150  # s, `systemctl reboot` until nspawn exited (a unit may take systemd's 90 s stop timeout)
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")  # "vb-" + name must fit IFNAMSIZ


class LabError(Exception):
    """An expected failure: the message says what failed and how to fix it."""


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Subprocesses: every call is bounded in time
# --------------------------------------------------------------------------

def run(cmd, timeout: float, *, check: bool = True, hint: str = "", logfile: Path | None = None,
        input: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run cmd in its own process group; on timeout kill the whole group."""
    cmd = [str(c) for c in cmd]
    out = open(logfile, "a", encoding="utf-8") if logfile else subprocess.PIPE
    try:
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT if logfile else subprocess.PIPE,
                text=True, errors="replace", start_new_session=True, env=env)
        except FileNotFoundError:
            raise LabError(f"`{cmd[0]}` not found. {hint or 'Run `lab.py up` (it installs what the lab needs) or install it.'}")
        try:
            stdout, stderr = proc.communicate(input=input, timeout=timeout)
        except BaseException as exc:  # timeout, Ctrl-C, SIGTERM: take the whole process group down
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            raise LabError(f"timed out after {timeout:.0f}s: {shlex.join(cmd)}"
                           + (f" (output in {logfile})" if logfile else "") + (f"\n  {hint}" if hint else ""))
    finally:
        if logfile:
            out.close()
    res = subprocess.CompletedProcess(cmd, proc.returncode, stdout or "", stderr or "")
    if check and proc.returncode != 0:
        detail = (res.stderr or res.stdout).strip()
        if logfile:
            detail = tail(logfile, 25)
        raise LabError(f"failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                       + indent(detail) + (f"\n  {hint}" if hint else ""))
    return res


def tail(path: Path, n: int) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(path: Path, timeout: float, what: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"{what}: another lab.py still holds {path} after {timeout:.0f}s; "
                                   "wait for it to finish (see `ps -ef | grep lab.py`).")
                time.sleep(0.5)
        yield
    finally:
        os.close(fd)


def need_root() -> None:
    if os.geteuid() != 0:
        raise LabError("this needs root (mounts, bridges, iptables, systemd-nspawn): run it with sudo or as root.")


# --------------------------------------------------------------------------
# Runner packages
# --------------------------------------------------------------------------

def dpkg_installed(pkg: str) -> bool:
    res = run(["dpkg-query", "-W", "-f=${Status}", pkg], 30, check=False)
    return res.returncode == 0 and res.stdout.strip() == "install ok installed"


def ensure_runner_packages() -> None:
    missing = [p for p in RUNNER_PACKAGES if not dpkg_installed(p)]
    if missing:
        log(f"installing on the runner: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", NEEDRESTART_MODE="a")
        with locked(CACHE / ".apt.lock", 900, "apt"):
            apt_log = STATE / "apt.log"
            apt_log.parent.mkdir(parents=True, exist_ok=True)
            hint = f"Check the runner's apt sources and network; output in {apt_log}."
            run(["apt-get", "update"], 600, env=env, logfile=apt_log, hint=hint)
            run(["apt-get", "install", "-y", "--no-install-recommends",
                 "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
                 *missing], 900, env=env, logfile=apt_log, hint=hint)
    absent = [t for t in RUNNER_TOOLS if shutil.which(t) is None]
    if absent:
        raise LabError(f"still missing after installing packages: {' '.join(absent)}; "
                       f"install the Debian packages {' '.join(RUNNER_PACKAGES)} by hand.")


# --------------------------------------------------------------------------
# Package mirrors (read from the runner's apt and pip configuration)
# --------------------------------------------------------------------------

def apt_source_entries() -> list[dict]:
    """Enabled entries of the runner's apt sources: {types, uris, suites}."""
    entries = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text(errors="replace")):
            fields, key = {}, None
            for line in stanza.splitlines():
                if line.startswith("#") or not line.strip():
                    continue
                if line[0] in " \t" and key:
                    fields[key] += " " + line.strip()
                    continue
                key, _, val = line.partition(":")
                key = key.strip().lower()
                fields[key] = val.strip()
            if not fields.get("uris") or fields.get("enabled", "yes").lower() == "no":
                continue
            entries.append({"types": fields.get("types", "").split(), "uris": fields["uris"].split(),
                            "suites": fields.get("suites", "").split()})
    lists = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*.list"))
    for f in lists:
        if not f.is_file():
            continue
        for line in f.read_text(errors="replace").splitlines():
            line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] in ("deb", "deb-src"):
                entries.append({"types": [line[0]], "uris": [line[1]], "suites": [line[2]]})
    return entries


def debian_mirror() -> str:
    if os.environ.get("LAB_MIRROR"):
        return os.environ["LAB_MIRROR"].rstrip("/")
    for e in apt_source_entries():
        if "deb" not in e["types"]:
            continue
        for uri in e["uris"]:
            u = urlsplit(uri)
            if u.scheme in ("http", "https") and not u.path.rstrip("/").endswith("-security") \
                    and any(not s.endswith("-security") for s in e["suites"]):
                return uri.rstrip("/")
    raise LabError("found no http(s) Debian mirror in /etc/apt/sources.list.d/*.sources or "
                   "/etc/apt/sources.list; set LAB_MIRROR=http://HOST/debian.")


@functools.lru_cache(maxsize=None)
def pip_index_urls() -> list[str]:
    """http(s) index URLs the runner's pip is configured with (file:// ones are runner-only)."""
    urls = []
    for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        urls += os.environ.get(var, "").split()
    res = run([sys.executable, "-m", "pip", "config", "list"], 60, check=False,
              env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    for line in res.stdout.splitlines():
        key, _, val = line.partition("=")
        if key.split(".")[-1] in ("index-url", "extra-index-url"):
            urls += val.strip().strip("'\"").split()
    return [u for u in dict.fromkeys(urls) if urlsplit(u).scheme in ("http", "https")]


@functools.lru_cache(maxsize=None)
def pip_index_url() -> str | None:
    """The runner's primary pip index, if it is an http(s) one; None means pip's default."""
    url = os.environ.get("PIP_INDEX_URL", "").strip()
    if not url:
        res = run([sys.executable, "-m", "pip", "config", "get", "global.index-url"], 60, check=False)
        url = res.stdout.strip() if res.returncode == 0 else ""
    return url if urlsplit(url).scheme in ("http", "https") else None


def mirror_endpoints() -> tuple[dict[str, list[str]], list[int]]:
    """{host name: [IPv4 addresses]} for apt and pip mirrors, and the TCP ports they use."""
    urls = []
    for e in apt_source_entries():
        urls += [u for u in e["uris"] if urlsplit(u).scheme in ("http", "https")]
    urls.append(debian_mirror())
    index = pip_index_url()
    urls += pip_index_urls()
    if index is None:
        urls += [f"https://{h}/" for h in PIP_DEFAULT_HOSTS]
    names, ports = {}, {80, 443}
    for url in urls:
        u = urlsplit(url)
        if u.hostname:
            names.setdefault(u.hostname, [])
            ports.add(u.port or (443 if u.scheme == "https" else 80))
    for name in names:
        try:
            ipaddress.ip_address(name)
            names[name] = [name]
            continue
        except ValueError:
            pass
        res = run(["getent", "ahostsv4", name], 20, check=False)
        names[name] = sorted({line.split()[0] for line in res.stdout.splitlines() if line.strip()})
    apt_host = urlsplit(debian_mirror()).hostname
    if not names.get(apt_host):
        raise LabError(f"cannot resolve the Debian mirror {apt_host} to an IPv4 address on the runner "
                       "(`getent ahostsv4` found nothing); check the runner's DNS.")
    return {n: a for n, a in names.items() if a}, sorted(ports)


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------

def dpkg_arch() -> str:
    return run(["dpkg", "--print-architecture"], 30).stdout.strip()


def customize_image(root: Path) -> None:
    """Runner-independent settings baked into the cached image (per-host ones: prepare_host)."""
    etc = root / "etc"
    write(etc / "hostname", "lab\n")  # debootstrap copied the runner's
    write(etc / "hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    # debootstrap copied the runner's resolver, unreachable from a host: names
    # the hosts need come from /etc/hosts, anything else fails fast.
    write(etc / "resolv.conf", "# lab host: no DNS; package mirrors are in /etc/hosts\noptions timeout:1 attempts:1\n")
    write(etc / "machine-id", "")  # one per host, written at boot
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_file() and not dbus_id.is_symlink():
        dbus_id.unlink()
    run(["systemctl", f"--root={root}", "enable", "systemd-networkd.service"], 60,
        hint="enabling systemd-networkd in the image failed; the image is not used.")
    # apt's daily timers would take the dpkg lock under a running test.
    run(["systemctl", f"--root={root}", "mask", "apt-daily.timer", "apt-daily-upgrade.timer"], 60)
    write(etc / "ssh/sshd_config.d/10-lab.conf",
          "PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUseDNS no\n")
    ssh = root / "root/.ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    os.chmod(ssh, 0o700)
    for f in ("ssh_host_ed25519_key.pub", "ssh_host_rsa_key.pub"):
        if not (etc / "ssh" / f).is_file():
            raise LabError(f"the image has no /etc/ssh/{f}: openssh-server did not install correctly.")


def image_recipe(release: str, mirror: str) -> dict:
    return {
        "version": RECIPE_VERSION, "release": release, "mirror": mirror, "arch": dpkg_arch(),
        "variant": "minbase", "include": list(IMAGE_PACKAGES),
        "customize": hashlib.sha256(inspect.getsource(customize_image).encode()).hexdigest(),
    }


def mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, super options) from /proc/self/mountinfo."""
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            point = pre.split()[4].replace("\\040", " ")
            fstype, _, opts = post.split()[:3]
            res.append((point, fstype, opts))
    return res


def mounts_under(path: Path) -> list[str]:
    p = str(path).rstrip("/")
    return sorted({m for m, _, _ in mounts() if m == p or m.startswith(p + "/")}, key=len, reverse=True)


def umount_all_under(path: Path) -> None:
    for m in mounts_under(path):
        if run(["umount", m], 60, check=False).returncode != 0:
            run(["umount", "-l", m], 60, hint=f"something still uses {m}; see `fuser -vm {m}`.")


def remove_tree(path: Path) -> None:
    """rm -rf that refuses to cross into anything still mounted below path."""
    if not path.exists() and not path.is_symlink():
        return
    umount_all_under(path)
    if mounts_under(path):
        raise LabError(f"{path} still has mounts below it; unmount them (`findmnt -R {path}`) and retry.")
    run(["rm", "-rf", "--one-file-system", path], 600)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def kill_users(path: Path) -> None:
    """SIGKILL processes whose command line, root or working directory is inside path."""
    prefix = str(path).rstrip("/") + "/"
    for _ in range(5):
        users = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                refs = [os.readlink(d / "root") + "/", os.readlink(d / "cwd") + "/"]
                refs += (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if any(r.startswith(prefix) or r == prefix[:-1] for r in refs):
                    users.append(int(d.name))
        if not users:
            return
        for pid in users:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    raise LabError(f"processes keep using {path}; stop them (`fuser -vm {path}`) and retry.")


def image_dir(release: str, mirror: str) -> Path:
    recipe = image_recipe(release, mirror)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return CACHE / f"{release}-{key}"


def ensure_image(release: str, mirror: str) -> tuple[Path, float | None]:
    """Return (image dir, build seconds or None if cached). rootfs is IMG/rootfs."""
    img = image_dir(release, mirror)
    if (img / "recipe.json").is_file():
        return img, None
    CACHE.mkdir(parents=True, exist_ok=True)
    with locked(CACHE / f".{release}.lock", 3600, f"building the {release} image"):
        if (img / "recipe.json").is_file():
            return img, None
        # Interrupted builds are never reused. We hold the release's lock, so
        # anything still working in one (debootstrap orphaned by a killed
        # lab.py) is a leftover of ours: stop it, then remove the directory.
        for stale in CACHE.glob(f".build-{release}-*"):
            log(f"removing interrupted build {stale}")
            kill_users(stale)
            remove_tree(stale)
        tmp = CACHE / f".build-{img.name}-{os.getpid()}"
        remove_tree(tmp)
        tmp.mkdir(parents=True)
        rootfs = tmp / "rootfs"
        LOGS_DIR.mkdir(parents=True, exist_ok=True)
        blog = LOGS_DIR / f"debootstrap-{release}.log"  # kept when the build fails
        blog.write_text(f"# building {img.name} in {tmp}\n")
        log(f"building the {release} image with debootstrap from {mirror} (about a minute; log {blog})")
        t0 = time.monotonic()
        try:
            run(["debootstrap", "--variant=minbase", f"--include={','.join(IMAGE_PACKAGES)}",
                 release, rootfs, mirror], 1800, logfile=blog,
                hint=f"debootstrap of {release} from {mirror} failed; see {blog} (mirror reachable? release name right?).")
            customize_image(rootfs)
            umount_all_under(tmp)
            write(tmp / "recipe.json", json.dumps(image_recipe(release, mirror), indent=2) + "\n")
            if img.exists():  # a half-deleted image (no recipe.json): never used as is
                remove_tree(img)
            os.rename(tmp, img)
        except BaseException:
            with contextlib.suppress(Exception):  # best effort; the next build removes it anyway
                kill_users(tmp)
                remove_tree(tmp)
            raise
        seconds = time.monotonic() - t0
        prune_images(release, keep=img)
        return img, seconds


def prune_images(release: str, keep: Path) -> None:
    """Remove older images of a release that no mounted overlay uses."""
    in_use = " ".join(opts for _, fstype, opts in mounts() if fstype == "overlay")
    for old in CACHE.glob(f"{release}-*"):
        if old != keep and old.is_dir() and str(old) + "/" not in in_use:
            log(f"removing outdated image {old}")
            remove_tree(old)


# --------------------------------------------------------------------------
# Lab state
# --------------------------------------------------------------------------

def load_state() -> dict:
    try:
        return json.loads(STATE_JSON.read_text())
    except (OSError, ValueError):
        return {"hosts": {}}


def save_state(state: dict) -> None:
    state.update({
        "bridge": BRIDGE, "subnet": str(SUBNET), "gateway": str(GATEWAY),
        "ssh_private_key": str(SSH_KEY), "known_hosts": str(KNOWN_HOSTS), "ssh_config": str(SSH_CONFIG),
        "inventory": str(INVENTORY),
    })
    write(STATE_JSON, json.dumps(state, indent=2, sort_keys=True) + "\n")
    public = {name: {**h, "ansible_user": "root", "ssh_private_key": str(SSH_KEY),
                     "known_hosts": str(KNOWN_HOSTS), "ssh_config": str(SSH_CONFIG)}
              for name, h in state.get("hosts", {}).items()}
    write(HOSTS_JSON, json.dumps(public, indent=2, sort_keys=True) + "\n")
    write_access_files(state)


def write_access_files(state: dict) -> None:
    hosts = state.get("hosts", {})
    ssh_args = (f"-o UserKnownHostsFile={KNOWN_HOSTS} -o StrictHostKeyChecking=accept-new "
                "-o IdentitiesOnly=yes -o LogLevel=ERROR")
    lines = ["# Written by tests/lab/lab.py: the hosts `lab.py up` booted.", "all:", "  hosts:"]
    if not hosts:
        lines[-1] += " {}"
    for name, h in sorted(hosts.items()):
        lines += [f"    {name}:",
                  f"      ansible_host: {h['address']}",
                  "      ansible_user: root",
                  f"      ansible_ssh_private_key_file: {json.dumps(str(SSH_KEY))}",
                  f"      ansible_ssh_common_args: {json.dumps(ssh_args)}",
                  "      ansible_python_interpreter: /usr/bin/python3",
                  f"      lab_release: {h['release']}"]
    groups = sorted({h["release"] for h in hosts.values()})
    if groups:
        lines.append("  children:")
        for g in groups:
            lines += [f"    {g}:", "      hosts:"]
            lines += [f"        {n}: {{}}" for n, h in sorted(hosts.items()) if h["release"] == g]
    write(INVENTORY, "\n".join(lines) + "\n")

    known, conf = [], ["# Written by tests/lab/lab.py. Use: ssh -F " + str(SSH_CONFIG) + " HOST"]
    for name, h in sorted(hosts.items()):
        for pub in sorted(Path(h["image"], "rootfs/etc/ssh").glob("ssh_host_*_key.pub")):
            with contextlib.suppress(OSError, IndexError):
                kind, key = pub.read_text().split()[:2]
                known.append(f"{h['address']} {kind} {key}")
        conf += [f"Host {name}", f"  HostName {h['address']}", "  User root", f"  IdentityFile {SSH_KEY}",
                 "  IdentitiesOnly yes", f"  UserKnownHostsFile {KNOWN_HOSTS}",
                 "  StrictHostKeyChecking accept-new", "  BatchMode yes", "  LogLevel ERROR",
                 "  ConnectTimeout 5", ""]
    SSH_DIR.mkdir(parents=True, exist_ok=True)
    write(KNOWN_HOSTS, "".join(k + "\n" for k in known), 0o600)
    write(SSH_CONFIG, "\n".join(conf) + "\n", 0o600)


def ensure_ssh_key() -> str:
    SSH_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(SSH_DIR, 0o700)
    if not SSH_KEY.is_file() or not SSH_KEY.with_suffix(".pub").is_file():
        for f in (SSH_KEY, SSH_KEY.with_suffix(".pub")):
            f.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "polylith-lab", "-f", SSH_KEY], 30)
    return SSH_KEY.with_suffix(".pub").read_text().strip()


# --------------------------------------------------------------------------
# Network: bridge, forwarding, NAT to the mirrors only
# --------------------------------------------------------------------------

def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def ipt(args, table="filter", check=True):
    return run(["iptables", "-w", "10", "-t", table, *args], 30, check=check,
               hint="iptables failed; is the kernel's nf_tables/x_tables support available?")


def forward_rules(mirror_ips: list[str], ports: list[int]) -> tuple[list[list[str]], list[str]]:
    c = ["-m", "comment", "--comment", TAG]
    accepts = [["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT", *c],
               ["-o", BRIDGE, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT", *c]]
    portlist = ",".join(str(p) for p in ports)
    accepts += [["-i", BRIDGE, "-d", f"{ip}/32", "-p", "tcp", "-m", "multiport", "--dports", portlist,
                 "-j", "ACCEPT", *c] for ip in mirror_ips]
    drop = ["-i", BRIDGE, "-j", "DROP", *c]
    return accepts, drop


def our_rules(table: str, chain: str) -> list[list[str]]:
    res = ipt(["-S", chain], table, check=False)
    rules = []
    for line in res.stdout.splitlines():
        words = shlex.split(line)
        if words[:2] == ["-A", chain] and "--comment" in words and words[words.index("--comment") + 1] == TAG:
            rules.append(words[2:])
    return rules


def ensure_network(mirror_ips: list[str], ports: list[int]) -> None:
    # the lab subnet must not already be in use on the runner
    for r in json.loads(run(["ip", "-j", "-4", "route", "show"], 30).stdout or "[]"):
        dst, dev = r.get("dst", ""), r.get("dev")
        if dst == "default" or dev == BRIDGE:
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(dst, strict=False).overlaps(SUBNET):
                raise LabError(f"the lab subnet {SUBNET} overlaps route {dst} on {dev}; "
                               "pick another with LAB_SUBNET=10.x.y.0/24.")
    if not link_exists(BRIDGE):
        run(["ip", "link", "add", BRIDGE, "type", "bridge"], 30)
    addrs = json.loads(run(["ip", "-j", "-4", "addr", "show", "dev", BRIDGE], 30).stdout or "[]")
    have = {f"{a['local']}/{a['prefixlen']}" for i in addrs for a in i.get("addr_info", [])}
    want = f"{GATEWAY}/{SUBNET.prefixlen}"
    if want not in have:
        run(["ip", "addr", "add", want, "dev", BRIDGE], 30)
    run(["ip", "link", "set", BRIDGE, "up"], 30)

    fwd = Path("/proc/sys/net/ipv4/ip_forward")
    if fwd.read_text().strip() != "1":
        net = {}
        with contextlib.suppress(OSError, ValueError):
            net = json.loads(NET_JSON.read_text())
        net.setdefault("ip_forward_before", fwd.read_text().strip())
        write(NET_JSON, json.dumps(net) + "\n")
        fwd.write_text("1\n")

    accepts, drop = forward_rules(mirror_ips, ports)

    def present(rule, table="filter", chain="FORWARD"):
        return ipt(["-C", chain, *rule], table, check=False).returncode == 0

    if not present(drop):  # (re)build: the ACCEPTs must sit above the DROP
        for rule in our_rules("filter", "FORWARD"):
            ipt(["-D", "FORWARD", *rule])
        ipt(["-I", "FORWARD", "1", *drop])
    for rule in accepts:  # each inserted above the DROP
        if not present(rule):
            ipt(["-I", "FORWARD", "1", *rule])
    for ip in mirror_ips:
        rule = ["-s", str(SUBNET), "-d", f"{ip}/32", "-j", "MASQUERADE", "-m", "comment", "--comment", TAG]
        if not present(rule, "nat", "POSTROUTING"):
            ipt(["-I", "POSTROUTING", "1", *rule], "nat")


def teardown_network() -> None:
    for table, chain in (("filter", "FORWARD"), ("nat", "POSTROUTING")):
        if shutil.which("iptables"):
            for rule in our_rules(table, chain):
                ipt(["-D", chain, *rule], table)
    if link_exists(BRIDGE):
        run(["ip", "link", "delete", BRIDGE], 30)
    with contextlib.suppress(OSError, ValueError):
        before = json.loads(NET_JSON.read_text()).get("ip_forward_before")
        if before in ("0", "1"):
            Path("/proc/sys/net/ipv4/ip_forward").write_text(before + "\n")
    NET_JSON.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# Hosts
# --------------------------------------------------------------------------

def nspawn_pids() -> dict[int, list[str]]:
    """Running systemd-nspawn processes whose root is one of this lab's host dirs."""
    res = {}
    prefix = str(HOSTS_DIR) + "/"
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == "systemd-nspawn" and "-D" in argv[:-1] \
                and argv[argv.index("-D") + 1].startswith(prefix) and pid_alive(int(d.name)):
            res[int(d.name)] = argv
    return res


def descendants(pid: int) -> list[int]:
    out = []
    for t in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for c in t.read_text().split():
                out += [int(c)] + descendants(int(c))
    return out


def host_running(h: dict, name: str) -> bool:
    argv = nspawn_pids().get(h.get("pid", -1))
    return bool(argv) and "-M" in argv and argv[argv.index("-M") + 1] == name


def egress_mtu(ip: str) -> int:
    """MTU of the runner's link towards ip (the hosts' packets leave through it)."""
    with contextlib.suppress(LabError, ValueError, IndexError, KeyError):
        dev = json.loads(run(["ip", "-j", "route", "get", ip], 30).stdout)[0]["dev"]
        return int(Path(f"/sys/class/net/{dev}/mtu").read_text())
    return 1500


def prepare_host(name: str, h: dict, pubkey: str, mirrors: dict[str, list[str]]) -> Path:
    """Overlay mount for one host and the per-host files written into it."""
    hdir = HOSTS_DIR / name
    remove_tree(hdir)
    upper, work, merged = hdir / "upper", hdir / "work", hdir / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    lower = Path(h["image"]) / "rootfs"
    for p in (lower, upper, work):
        if re.search(r"[,:\s]", str(p)):
            raise LabError(f"overlayfs cannot take the path {p} (comma, colon or space); move the repo or set LAB_CACHE.")
    run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", merged], 30,
        hint="overlayfs mount failed; is the `overlay` kernel module available (`modprobe overlay`)?")

    etc = merged / "etc"
    write(etc / "hostname", name + "\n")
    hosts = ["127.0.0.1\tlocalhost", f"127.0.1.1\t{name}",
             "::1\tlocalhost ip6-localhost ip6-loopback", "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters",
             "# package mirrors, as the runner resolves them (reached through the runner's NAT)"]
    hosts += [f"{addrs[0]}\t{n}" for n, addrs in sorted(mirrors.items())]
    write(etc / "hosts", "\n".join(hosts) + "\n")
    write(etc / "machine-id", uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.{REPO}").hex + "\n", 0o444)
    write(etc / "systemd/network/10-host0.network",
          f"# sorts before 80-container-host0.network (DHCP)\n[Match]\nName=host0\n\n[Network]\n"
          f"Address={h['address']}/{SUBNET.prefixlen}\nGateway={GATEWAY}\n"
          "LinkLocalAddressing=no\nIPv6AcceptRA=no\n"
          # not above the runner's uplink (1400 on some VMs): no reliance on PMTU discovery
          f"\n[Link]\nMTUBytes={min(1500, egress_mtu(next(iter(mirrors.values()))[0]))}\n")
    ssh = merged / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    write(ssh / "authorized_keys", pubkey + "\n", 0o600)

    # pip trusts the runner's CA bundle (the mirror's certificate is signed by a
    # CA the stock image lacks); the extra CAs also join the system store.
    if RUNNER_CA_BUNDLE.is_file():
        bundle = RUNNER_CA_BUNDLE.read_text(errors="replace")
        write(merged / HOST_CA_BUNDLE.lstrip("/"), bundle)
        pem = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
        system = merged / "etc/ssl/certs/ca-certificates.crt"
        stock = system.read_text(errors="replace") if system.is_file() else ""
        norm = lambda c: re.sub(r"\s", "", c)  # noqa: E731
        known = {norm(c) for c in pem.findall(stock)}
        extra = [c for c in pem.findall(bundle) if norm(c) not in known]
        for i, cert in enumerate(extra):
            write(merged / f"usr/local/share/ca-certificates/lab-runner-{i}.crt", cert + "\n")
        if extra and system.is_file():
            write(system, stock.rstrip("\n") + "\n" + "\n".join(extra) + "\n")
        pip = ["[global]", f"cert = {HOST_CA_BUNDLE}"]
    else:
        pip = ["[global]"]
    index = pip_index_url()
    if index:
        pip.append(f"index-url = {index}")
    write(etc / "pip.conf", "\n".join(pip) + "\n")
    return merged


def cgroup_roots() -> list[Path]:
    """Mount points of the hierarchies systemd-nspawn works in: cgroup2 and name=systemd.
    Empty when systemd is PID 1: it then manages the cgroups itself."""
    if Path("/run/systemd/system").is_dir():
        return []
    return [Path(m) for m, fstype, opts in mounts()
            if fstype == "cgroup2" or (fstype == "cgroup" and "name=systemd" in opts.split(","))]


def cgroup_dirs(name: str) -> list[Path]:
    """An own cgroup per host. nspawn --keep-unit puts the host in "<its cgroup>/payload":
    with no systemd on the runner every nspawn would share /payload, and the hosts'
    systemd would wait on each other's cgroups (e.g. a shutdown stalling at halt.target)."""
    return [r / CGROUP_PARENT / name for r in cgroup_roots()]


def remove_cgroups(name: str | None) -> None:
    """rmdir the (empty) cgroups of one host, or of all hosts (name None)."""
    for root in cgroup_roots():
        top = root / CGROUP_PARENT / name if name else root / CGROUP_PARENT
        if not top.is_dir():
            continue
        for d, _, _ in sorted(os.walk(top), key=lambda w: len(w[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(d)
        with contextlib.suppress(OSError):
            os.rmdir(root / CGROUP_PARENT)


def boot_host(name: str, merged: Path, append: bool = False) -> tuple[int, Path]:
    """Start systemd-nspawn on the mounted root; append: keep the console log of
    the boot before (a reboot), else start it afresh."""
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    console = LOGS_DIR / f"{name}.console.log"
    cmd = ["systemd-nspawn", "-D", str(merged), "-b", "-M", name, f"--hostname={name}",
           "--register=no", "--keep-unit", f"--network-bridge={BRIDGE}",
           "--console=read-only", "--resolv-conf=off", "--timezone=off", "--link-journal=no"]
    env = dict(os.environ)
    # A runner with hybrid cgroups (v1 controllers + cgroup2 at /sys/fs/cgroup/unified)
    # would hand the hosts cgroup v1, which systemd 257 (trixie) only runs deprecated
    # ("Tainted: cgroupsv1"). Give them the unified hierarchy a real server has.
    if any(m == "/sys/fs/cgroup/unified" and t == "cgroup2" for m, t, _ in mounts()):
        env.setdefault("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
    with open(console, "a" if append else "w") as out:
        extra = "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 " if "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY" in env else ""
        out.write(f"# {extra}{shlex.join(cmd)}\n")
        out.flush()
        cgroups = cgroup_dirs(name)
        remove_cgroups(name)
        for d in cgroups:
            d.mkdir(parents=True, exist_ok=True)

        def enter_cgroups():  # runs in the child, before exec
            for d in cgroups:
                with open(d / "cgroup.procs", "w") as f:
                    f.write("0")

        # Detached on purpose: the host outlives this command; `down` stops it.
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True, env=env, preexec_fn=enter_cgroups)
        except subprocess.SubprocessError as e:
            raise LabError(f"could not start systemd-nspawn in its own cgroup ({', '.join(map(str, cgroups))}): {e}")
    return proc.pid, console


def ssh_cmd(name: str, extra=()) -> list[str]:
    return ["ssh", "-F", str(SSH_CONFIG), *extra, name]


def wait_for_ssh(state: dict, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending:
        for name in list(pending):
            h = state["hosts"][name]
            if not pid_alive(h["pid"]):
                raise LabError(f"host {name} stopped while booting; last console lines:\n"
                               + indent(tail(Path(h["console_log"]), 30))
                               + f"\n  Full log: {h['console_log']}. Clean up with `lab.py down`.")
            try:
                with socket.create_connection((h["address"], 22), timeout=1):
                    pass
            except OSError:
                continue
            left = max(1.0, deadline - time.monotonic())
            res = run([*ssh_cmd(name, ["-o", "ConnectTimeout=3"]), "true"], min(15.0, left + 5), check=False)
            if res.returncode == 0:
                pending.remove(name)
        if pending:
            if time.monotonic() > deadline:
                details = "\n".join(f"  {n}: console {state['hosts'][n]['console_log']}:\n"
                                    + indent(tail(Path(state['hosts'][n]['console_log']), 15)) for n in pending)
                raise LabError(f"SSH did not answer within {timeout:.0f}s on: {' '.join(pending)}\n{details}\n"
                               "  Raise --timeout if the runner is slow; clean up with `lab.py down`.")
            time.sleep(0.3)


def orphan_inits() -> dict[int, str]:
    """Lab hosts' systemd (PID 1 inside) whose systemd-nspawn is gone, e.g. after it was
    SIGKILLed: {pid: host name}. Found by their root mount, our overlay."""
    res, nspawn = {}, set(nspawn_pids())
    upper = re.compile(r"upperdir=" + re.escape(str(HOSTS_DIR)) + r"/([^/,]+)/upper(,|$)")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            status = (d / "status").read_text()
            nspid = re.search(r"^NSpid:\s+(.*)$", status, re.M).group(1).split()
            ppid = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
            if len(nspid) < 2 or nspid[-1] != "1" or ppid in nspawn or not pid_alive(int(d.name)):
                continue
            for line in (d / "mountinfo").read_text().splitlines():
                pre, _, post = line.partition(" - ")
                if pre.split()[4] == "/" and post.startswith("overlay "):
                    m = upper.search(post)
                    if m:
                        res[int(d.name)] = m.group(1)
    return res


def container_init(nspawn_pid: int) -> int | None:
    """The host's systemd: the child of systemd-nspawn that is PID 1 of its namespace."""
    for pid in descendants(nspawn_pid):
        with contextlib.suppress(OSError, AttributeError):
            nspid = re.search(r"^NSpid:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(), re.M).group(1).split()
            if len(nspid) > 1 and nspid[-1] == "1":
                return pid
    return None


def stop_hosts(names: list[str] | None) -> list[str]:
    """Power off lab hosts (all if names is None): cleanly, then forced, then SIGKILL."""
    state = load_state()
    targets = {}  # pid -> {name, kind, ...}
    for pid, argv in nspawn_pids().items():
        name = argv[argv.index("-M") + 1] if "-M" in argv[:-1] else argv[argv.index("-D") + 1]
        if names is None or name in names:
            targets[pid] = {"name": name, "kind": "nspawn", "init": container_init(pid)}
    for pid, name in orphan_inits().items():
        if names is None or name in names:
            targets[pid] = {"name": name, "kind": "init", "init": pid}
    for pid, t in targets.items():
        console = LOGS_DIR / f"{t['name']}.console.log"
        t.update(phase="clean", console=console, seen=None,
                 offset=console.stat().st_size if console.is_file() else 0)
        # nspawn answers SIGTERM with SIGRTMIN+3 to the host's systemd: a clean
        # shutdown. A systemd left without its nspawn gets SIGRTMIN+4 (poweroff).
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM if t["kind"] == "nspawn" else signal.SIGRTMIN + 4)
    t0 = time.monotonic()
    final_stage = re.compile(r"(halt|poweroff)\.target")
    while any(pid_alive(p) for p in targets):
        now = time.monotonic()
        for pid, t in targets.items():
            if not pid_alive(pid):
                continue
            if t["phase"] == "clean":
                # Past halt.target nothing runs any more; a host still there 3 s
                # later is stuck (seen with trixie when hosts shared one cgroup,
                # see cgroup_dirs): force the poweroff rather than wait 30 s.
                if t["seen"] is None and t["console"].is_file():
                    with open(t["console"], errors="replace") as f:
                        f.seek(t["offset"])
                        if final_stage.search(f.read()):
                            t["seen"] = now
                stalled = t["seen"] is not None and now - t["seen"] > 3
                if stalled or now - t0 > STOP_TIMEOUT:
                    log(f"{t['name']}: " + ("shutdown stalled after all services stopped" if stalled
                                            else f"no clean poweroff within {STOP_TIMEOUT}s")
                        + "; forcing an immediate poweroff")
                    t.update(phase="forced", since=now)
                    if t["init"] and pid_alive(t["init"]):  # SIGRTMIN+14: sync, then poweroff at once
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(t["init"], signal.SIGRTMIN + 14)
            elif t["phase"] == "forced" and now - t["since"] > 5:
                log(f"{t['name']}: still running; killing it")
                t.update(phase="killed", since=now)
                # SIGKILL to the host's PID 1 ends everything in its PID namespace
                for victim in ([t["init"]] if t["init"] else []) + [pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
            elif t["phase"] == "killed" and now - t["since"] > 10:
                raise LabError(f"could not stop {t['name']} (pid {pid}); see `ps -ef | grep systemd`.")
        time.sleep(0.2)
    stopped = {t["name"] for t in targets.values()}
    gone = {n for n in state.get("hosts", {}) if names is None or n in names}
    for name in sorted(gone | stopped):
        remove_tree(HOSTS_DIR / name)
        remove_cgroups(name)
        veth = f"vb-{name}"
        if len(veth) <= 15 and link_exists(veth):
            run(["ip", "link", "delete", veth], 30, check=False)
    return sorted(gone | stopped)


def reboot_targets(state: dict, names: list[str]) -> dict[str, dict]:
    """The hosts of names, each known, running and still on its mounted overlay;
    anything else is refused before any host is touched."""
    hosts = state.get("hosts", {})
    unknown = [n for n in names if n not in hosts]
    if unknown:
        raise LabError(f"no lab host named {' '.join(unknown)}; known: {' '.join(sorted(hosts)) or 'none'} "
                       "(see `lab.py status`; `lab.py up` boots hosts).")
    stopped = [n for n in names if not host_running(hosts[n], n)]
    if stopped:
        raise LabError(f"{' '.join(stopped)}: not running (its systemd-nspawn is gone), so there is nothing to "
                       "reboot; `lab.py up` with its --release and --name boots it afresh, `lab.py down "
                       f"{' '.join(stopped)}` removes it.")
    mounted = {m for m, _, _ in mounts()}
    unmounted = [n for n in names if hosts[n].get("root") not in mounted]
    if unmounted:
        raise LabError("the root of " + ", ".join(f"{n} ({hosts[n].get('root')})" for n in unmounted)
                       + " is no longer mounted, so a reboot would lose the host's files; "
                       f"`lab.py down {' '.join(unmounted)}` and `lab.py up` again.")
    return {n: hosts[n] for n in names}


def reboot_hosts(state: dict, names: list[str], timeout: float) -> dict[str, float]:
    """A real reboot of running hosts: `systemctl reboot` inside each, then, once
    its systemd-nspawn has exited (it exits with 133 when its host reboots and
    nothing restarts it), nspawn again on the same overlay, which stays mounted
    (nspawn unmounts only inside its own mount namespace), so the host keeps
    every file. Returns the seconds each host took to go down."""
    targets = reboot_targets(state, names)
    going = {}
    for n, h in targets.items():
        console = Path(h["console_log"])
        going[n] = {"pid": h["pid"], "init": container_init(h["pid"]), "console": console,
                    "offset": console.stat().st_size if console.is_file() else 0, "seen": None, "forced": False}
        # Returns once systemd queued the reboot; the connection may drop as the host goes down (255).
        res = run([*ssh_cmd(n, ["-o", "ConnectTimeout=5"]), "systemctl", "reboot"], 30, check=False)
        going[n]["ssh"] = f"exit {res.returncode}: {(res.stderr or res.stdout).strip()}"
        if res.returncode not in (0, 255):
            raise LabError(f"`systemctl reboot` failed on {n} ({going[n]['ssh']}); see `lab.py ssh {n} -- "
                           "systemctl status`.")
    t0 = time.monotonic()
    final_stage = re.compile(r"reboot\.target")
    down = {}
    while len(down) < len(going):
        now = time.monotonic()
        for n, g in going.items():
            if n in down:
                continue
            if not pid_alive(g["pid"]):
                down[n] = now - t0
                continue
            # As in stop_hosts: past reboot.target nothing runs any more; a host
            # still there 3 s later is stuck, and gets an immediate reboot.
            if g["seen"] is None and g["console"].is_file():
                with open(g["console"], errors="replace") as f:
                    f.seek(g["offset"])
                    if final_stage.search(f.read()):
                        g["seen"] = now
            if g["seen"] is not None and now - g["seen"] > 3 and not g["forced"] and g["init"]:
                log(f"{n}: shutdown stalled after all services stopped; forcing an immediate reboot")
                g["forced"] = True
                with contextlib.suppress(ProcessLookupError):  # SIGRTMIN+15: immediate reboot
                    os.kill(g["init"], signal.SIGRTMIN + 15)
            if now - t0 > REBOOT_TIMEOUT:
                raise LabError(f"{n} did not go down within {REBOOT_TIMEOUT}s of `systemctl reboot` (ssh {g['ssh']}); "
                               f"last console lines:\n{indent(tail(g['console'], 20))}\n"
                               f"  Full log: {g['console']}. Clean up with `lab.py down {n}`.")
        time.sleep(0.2)
    for n, h in targets.items():
        with open(going[n]["console"], errors="replace") as f:
            f.seek(going[n]["offset"])
            if "reboot" not in f.read():
                log(f"{n}: its console shows no reboot (did it power off instead?); booting it again anyway")
        # nspawn's veth goes with the host's network namespace, which the kernel
        # tears down in the background: the new nspawn needs the name free.
        veth, deadline = f"vb-{n}", time.monotonic() + 5
        while link_exists(veth) and time.monotonic() < deadline:
            time.sleep(0.2)
        if link_exists(veth):
            run(["ip", "link", "delete", veth], 30, check=False)
        if h["root"] not in {m for m, _, _ in mounts()}:
            raise LabError(f"the root of {n} ({h['root']}) was unmounted while it rebooted; "
                           f"`lab.py down {n}` and `lab.py up` again.")
        pid, _ = boot_host(n, Path(h["root"]), append=True)
        h.update({"pid": pid, "started": time.time()})
        save_state(state)  # recorded before waiting, so `down` finds it after any crash
    wait_for_ssh(state, list(targets), timeout)
    return down


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------

def cmd_image(args) -> int:
    need_root()
    ensure_runner_packages()
    img, secs = ensure_image(args.release, debian_mirror())
    print(f"{args.release}: {img} " + ("(cached)" if secs is None else f"(built in {secs:.1f}s)"))
    return 0


def cmd_up(args) -> int:
    need_root()
    timings = {}
    prefix = args.name or args.release
    names = [f"{prefix}-{i}" for i in range(1, args.hosts + 1)]
    for n in names:
        if not NAME_RE.match(n):
            raise LabError(f"host name {n!r} is not usable: lower-case letters, digits and '-', starting with a "
                           "letter, at most 12 characters (the bridge-side link is vb-NAME). Use a shorter --name.")
    STATE.mkdir(exist_ok=True)
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    ensure_runner_packages()
    mirror = debian_mirror()
    img, built = ensure_image(args.release, mirror)
    timings["image"] = built
    with locked(STATE_LOCK, 600, "lab state"):
        state = load_state()
        pubkey = ensure_ssh_key()
        mirrors, ports = mirror_endpoints()
        ips = sorted({a for addrs in mirrors.values() for a in addrs})
        ensure_network(ips, ports)
        hosts = state.setdefault("hosts", {})
        for n in names:
            h = hosts.get(n)
            if h and h["release"] != args.release and host_running(h, n):
                raise LabError(f"host {n} is already up with release {h['release']}; "
                               f"use another --name or `lab.py down {n}` first.")
        keep, start = [], []
        for n in names:
            h = hosts.get(n)
            if h and h["release"] == args.release and h["image"] == str(img) and host_running(h, n):
                keep.append(n)
            else:
                start.append(n)
        if start:
            stop_hosts(start)  # leftovers of a crashed or outdated host
        used = {h["address"] for n, h in hosts.items() if n in keep or n not in names}
        free = (str(SUBNET.network_address + i) for i in range(FIRST_HOST, SUBNET.num_addresses - 1)
                if str(SUBNET.network_address + i) not in used)
        for n in start:
            address = next(free, None)
            if address is None:
                raise LabError(f"no free address left in {SUBNET}; `lab.py down` some hosts first.")
            hosts[n] = {"release": args.release, "image": str(img), "address": address,
                        "console_log": str(LOGS_DIR / f"{n}.console.log")}
        save_state(state)  # known_hosts/ssh config for the new addresses
        t1 = time.monotonic()
        for n in start:
            merged = prepare_host(n, hosts[n], pubkey, mirrors)
            pid, console = boot_host(n, merged)
            hosts[n].update({"pid": pid, "root": str(merged), "started": time.time()})
            save_state(state)  # recorded before waiting, so `down` finds it after any crash
        wait_for_ssh(state, start, args.timeout)
        timings["boot"] = time.monotonic() - t1
        save_state(state)
    img_txt = "cached" if built is None else f"built in {built:.1f}s"
    log(f"image {args.release}: {img_txt}; "
        + (f"{len(start)} host(s) booted to SSH in {timings['boot']:.1f}s" if start else "no host to boot")
        + (f"; already up: {' '.join(keep)}" if keep else ""))
    for n in names:
        print(f"{n}\t{hosts[n]['address']}\t{args.release}")
    log(f"inventory: {INVENTORY}")
    return 0


def cmd_down(args) -> int:
    need_root()
    with locked(STATE_LOCK, 600, "lab state"):
        state = load_state()
        names = args.hosts or None
        stopped = stop_hosts(names)
        hosts = state.get("hosts", {})
        for n in stopped:
            hosts.pop(n, None)
        if names is None or not hosts:
            teardown_network()
            remove_cgroups(None)
            for f in (STATE_JSON, HOSTS_JSON, INVENTORY, KNOWN_HOSTS, SSH_CONFIG):
                f.unlink(missing_ok=True)
            if HOSTS_DIR.is_dir():
                remove_tree(HOSTS_DIR)
        else:
            save_state(state)
    log("stopped: " + (" ".join(stopped) if stopped else "nothing was running")
        + ("" if names and hosts else "; bridge and NAT rules removed"))
    return 0


def cmd_status(args) -> int:
    state = load_state()
    running = nspawn_pids()
    hosts = []
    for name, h in sorted(state.get("hosts", {}).items()):
        up = h.get("pid") in running
        ssh = False
        if up:
            with contextlib.suppress(OSError), socket.create_connection((h["address"], 22), timeout=1):
                ssh = True
        hosts.append({"name": name, "release": h["release"], "address": h["address"], "pid": h.get("pid"),
                      "running": up, "ssh_port_open": ssh})
    known_pids = {h.get("pid") for h in state.get("hosts", {}).values()}
    strays = [pid for pid in running if pid not in known_pids] + sorted(orphan_inits())
    rules = {"filter": len(our_rules("filter", "FORWARD")), "nat": len(our_rules("nat", "POSTROUTING"))} \
        if shutil.which("iptables") and os.geteuid() == 0 else None
    overlays = mounts_under(HOSTS_DIR)
    images = sorted(str(p) for p in CACHE.glob("*-*") if (p / "recipe.json").is_file()) if CACHE.is_dir() else []
    info = {"hosts": hosts, "stray_nspawn_pids": strays, "bridge": BRIDGE if link_exists(BRIDGE) else None,
            "iptables_rules": rules, "overlay_mounts": overlays, "images": images,
            "inventory": str(INVENTORY) if INVENTORY.is_file() else None}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    if not hosts:
        print("no lab hosts")
    for h in hosts:
        st = "running, ssh port open" if h["ssh_port_open"] else ("running" if h["running"] else "NOT RUNNING")
        print(f"{h['name']:<14} {h['release']:<9} {h['address']:<15} pid {h['pid']!s:<8} {st}")
    print(f"bridge: {info['bridge'] or 'absent'} ({GATEWAY}/{SUBNET.prefixlen})")
    if rules is not None:
        print(f"iptables rules tagged {TAG}: {rules['filter']} filter/FORWARD, {rules['nat']} nat/POSTROUTING")
    if strays:
        print(f"lab processes not in state.json or without their nspawn (run `lab.py down`): {strays}")
    print(f"overlay mounts: {len(overlays)}")
    print("cached images: " + (", ".join(images) or "none"))
    return 0


def cmd_reboot(args) -> int:
    need_root()
    names = list(dict.fromkeys(args.hosts))
    t0 = time.monotonic()
    with locked(STATE_LOCK, 600, "lab state"):
        state = load_state()
        down = reboot_hosts(state, names, args.timeout)
    hosts = state["hosts"]
    log("rebooted: " + ", ".join(f"{n} (down in {down[n]:.1f}s)" for n in names)
        + f"; all answering SSH {time.monotonic() - t0:.1f}s after `systemctl reboot`")
    for n in names:
        print(f"{n}\t{hosts[n]['address']}\t{hosts[n]['release']}")
    return 0


def cmd_ssh(args) -> int:
    state = load_state()
    if args.host not in state.get("hosts", {}):
        raise LabError(f"no lab host named {args.host!r}; known: {' '.join(state.get('hosts', {})) or 'none'} "
                       "(see `lab.py status`).")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:  # interactive shell: hand the terminal over to ssh
        os.execvp("ssh", ssh_cmd(args.host, ["-t", "-o", "BatchMode=yes"]))
    try:
        return subprocess.run([*ssh_cmd(args.host), "--", *command], timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        raise LabError(f"command on {args.host} ran longer than {args.timeout}s (raise --timeout).")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the image if needed and boot hosts")
    up.add_argument("--release", required=True, choices=RELEASES)
    up.add_argument("--hosts", type=int, default=1, help="number of hosts (default 1)")
    up.add_argument("--name", help="host name prefix (default: the release); hosts are PREFIX-1..N")
    up.add_argument("--timeout", type=float, default=BOOT_TIMEOUT, help="seconds to wait for SSH")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop hosts; with no HOST, everything incl. bridge and NAT")
    down.add_argument("hosts", nargs="*", metavar="HOST")
    down.set_defaults(func=cmd_down)
    st = sub.add_parser("status", help="what is up")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)
    ssh = sub.add_parser("ssh", help="run a command on a host: ssh HOST -- CMD ...")
    ssh.add_argument("--timeout", type=float, default=3600)
    ssh.add_argument("host")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    ssh.set_defaults(func=cmd_ssh)
    rb = sub.add_parser("reboot", help="reboot running hosts (systemctl reboot inside), keeping their files")
    rb.add_argument("hosts", nargs="+", metavar="HOST")
    rb.add_argument("--timeout", type=float, default=BOOT_TIMEOUT, help="seconds to wait for SSH after the boot")
    rb.set_defaults(func=cmd_reboot)
    im = sub.add_parser("image", help="build (or reuse) the cached image of a release")
    im.add_argument("--release", required=True, choices=RELEASES)
    im.set_defaults(func=cmd_image)
    args = p.parse_args(argv)

    def interrupted(signum, _frame):  # CI cancelling a job sends SIGTERM: clean up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    if getattr(args, "hosts", None) is not None and isinstance(args.hosts, int) and not 1 <= args.hosts <= 50:
        p.error("--hosts must be between 1 and 50")
    try:
        return args.func(args)
    except LabError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; run `lab.py down` to clean up")
        return 130


if __name__ == "__main__":
    sys.exit(main())
