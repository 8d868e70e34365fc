"""The nginx role's ACME path on this machine, against Debian's ACME test server.

Pebble (with pebble-challtestsrv answering its DNS queries with 127.0.0.1)
validates every HTTP challenge for real: it fetches
http://NAME:PORT/.well-known/acme-challenge/TOKEN from an nginx on loopback
serving the role's site rendered in ACME mode, from the directory certbot
writes to. What runs is the role's own: its TLS tasks (tasks/tls.yml, through
files/acme_tls_play.yml) decide whether to ask certbot and what nginx loads,
certbot runs the command line the role builds, and certbot's renewal runs the
deploy hook the role installs, which reloads nginx (fake `systemctl` and
`nginx -t` on its PATH stand in for systemd and point at the test's nginx).
Only the paths differ (a scratch directory) and the port (the lab and
production use 80).

tests/run installs pebble, certbot, nginx-light and openssl: a missing one
fails these tests rather than skipping them.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from cryptography import x509

from conftest import COLLECTIONS, ROOT

ROLE = ROOT / "roles" / "nginx"
PLAY = Path(__file__).parent / "files" / "acme_tls_play.yml"
HOOK_TEMPLATE = ROLE / "templates" / "polylith-nginx-reload.sh.j2"
TOOLS = {name: shutil.which(name) for name in ("pebble", "pebble-challtestsrv", "certbot", "openssl")}
NAME, ALIAS = "matrix.example.org", "example.org"
# Everything a step waits for is bounded.
STEP_TIMEOUT = 120
# What the deploy hook runs when nginx is up: a check, then a reload.
RELOAD = ["systemctl is-active --quiet nginx.service", "nginx -t -q", "systemctl reload nginx.service"]


def _template_tests():
    """The site template tests' renderer and scratch nginx layout."""
    spec = importlib.util.spec_from_file_location(
        "polylith_nginx_template_tests_acme", ROOT / "tests" / "unit" / "roles" / "test_nginx_template.py"
    )
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        spec.loader.exec_module(module)
    return module


SITE = _template_tests()


def _needs(*names):
    missing = [name for name in names if TOOLS[name] is None] + (["nginx"] if SITE.NGINX is None else [])
    assert not missing, f"not installed: {missing}; tests/run installs pebble, certbot, nginx-light and openssl"


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port, process, what):
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert process.poll() is None, f"{what} exited ({process.returncode})"
            assert time.monotonic() < deadline, f"{what} did not listen on {port}"
            time.sleep(0.1)


# --- the deploy hook alone ------------------------------------------------------


def _render_hook(tmp_path):
    hook = tmp_path / "polylith-nginx-reload"
    hook.write_text(SITE.render(HOOK_TEMPLATE))
    hook.chmod(0o755)
    return hook


def _fake_tools(directory: Path, calls: Path, active: bool, config_ok: bool):
    directory.mkdir(exist_ok=True)
    for name, body in (
        ("systemctl", f'case "$1" in is-active) exit {0 if active else 3};; reload) exit 0;; esac; exit 1'),
        ("nginx", f"exit {0 if config_ok else 1}"),
    ):
        tool = directory / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >>{calls}\n{body}\n')
        tool.chmod(0o755)


@pytest.mark.parametrize(
    ("active", "config_ok", "returncode", "expected"),
    [
        (True, True, 0, RELOAD),
        (True, False, 1, ["systemctl is-active --quiet nginx.service", "nginx -t -q"]),
        (False, True, 0, ["systemctl is-active --quiet nginx.service"]),
    ],
    ids=["reloads", "refuses-a-broken-config", "leaves-a-stopped-nginx"],
)
def test_the_deploy_hook_checks_then_reloads_never_restarts(tmp_path, active, config_ok, returncode, expected):
    hook = _render_hook(tmp_path)
    assert hook.read_text().startswith("#!/bin/sh\n#\n# Ansible managed")
    calls = tmp_path / "calls"
    _fake_tools(tmp_path / "bin", calls, active, config_ok)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    result = subprocess.run([str(hook)], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == returncode, result.stderr
    assert calls.read_text().splitlines() == expected
    commands = [line for line in hook.read_text().splitlines() if line and not line.startswith("#")]
    assert not [line for line in commands if "restart" in line], commands


# --- the site in ACME mode --------------------------------------------------------


def _acme_site(directory: Path, topo, http_port=80, https_port=443, **overrides):
    return SITE.render(
        SITE.SITE_TEMPLATE,
        topo,
        distro=SITE.installed_distro() if SITE.NGINX else "Debian-12",
        nginx_acme_enabled=True,
        nginx_http_port=http_port,
        nginx_https_port=https_port,
        nginx_tls_dir=str(directory / "tls"),
        __nginx_acme_webroot=str(directory / "webroot"),
        nginx_access_log=str(directory / "access.log"),
        nginx_error_log=str(directory / "error.log"),
        **overrides,
    )


def test_the_plain_http_server_answers_the_challenge_and_redirects_the_rest(tmp_path):
    text = _acme_site(tmp_path, SITE.LAYOUTS["single-host"]())
    (plain,) = [body for body in SITE.servers(text) if "listen 80;" in body]
    found = {(modifier, arg): inner for modifier, arg, inner in SITE.locations(plain)}
    challenge = found[("^~", "/.well-known/acme-challenge/")]
    assert f"root {tmp_path / 'webroot'};" in challenge and "try_files $uri =404;" in challenge
    assert "return 301 https://$host$request_uri;" in found[("", "/")]
    # No server-level return: it would answer before any location.
    assert not re.search(r"^    return ", plain, re.M)
    for body in SITE.tls_servers(text):
        assert f"ssl_certificate {tmp_path / 'tls' / 'acme.crt'};" in body
        assert f"ssl_certificate_key {tmp_path / 'tls' / 'acme.key'};" in body
        assert "acme-challenge" not in body
    # Without ACME the redirect stays as it was.
    assert "acme-challenge" not in SITE.render(SITE.SITE_TEMPLATE, SITE.LAYOUTS["single-host"]())


@pytest.mark.parametrize("name", ["single-host", "multi-host", "preset-one-of-each"])
def test_nginx_accepts_the_acme_site(tmp_path, name):
    _needs("openssl")
    cert, key = SITE.self_signed(tmp_path)
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "acme.crt").symlink_to(cert)
    (tmp_path / "tls" / "acme.key").symlink_to(key)
    site = tmp_path / "matrix-synapse.conf"
    site.write_text(_acme_site(tmp_path, SITE.LAYOUTS[name](), nginx_listen_ipv6=False))
    conf = tmp_path / "nginx.conf"
    conf.write_text(SITE.scratch_main_conf(tmp_path, str(site)))
    result = SITE.nginx_test(tmp_path, conf)
    assert result.returncode == 0, result.stderr + "\n" + site.read_text()
    assert "[warn]" not in result.stderr, result.stderr


# --- the whole path: the role's tasks, certbot, Pebble and nginx --------------------


class Lab:
    """Pebble, its DNS, an nginx serving the role's site, and the role's TLS tasks, in one scratch directory."""

    def __init__(self, root: Path):
        self.root = root
        self.ports = {k: _free_port() for k in ("acme", "management", "dns", "dns_management", "http", "https", "alpn")}
        self.processes = []
        self.calls = root / "hook-calls"
        for sub in ("tls", "webroot", "letsencrypt", "work", "logs", "bin", "fakebin", "play"):
            (root / sub).mkdir()

    # Pebble ------------------------------------------------------------------
    def start_pebble(self):
        tls_cert, tls_key = self.root / "pebble-tls.crt", self.root / "pebble-tls.key"
        subprocess.run(
            [TOOLS["openssl"], "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(tls_key), "-out", str(tls_cert), "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.pebble_tls = tls_cert
        config = self.root / "pebble.json"
        config.write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.ports['acme']}",
            "managementListenAddress": f"127.0.0.1:{self.ports['management']}",
            "certificate": str(tls_cert), "privateKey": str(tls_key),
            # The HTTP challenge goes to nginx's plain-HTTP port.
            "httpPort": self.ports["http"], "tlsPort": self.ports["alpn"],
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}))  # fmt: skip
        dns = self._start(
            [TOOLS["pebble-challtestsrv"], "-management", f"127.0.0.1:{self.ports['dns_management']}",
             "-dns01", f"127.0.0.1:{self.ports['dns']}", "-http01", "", "-https01", "", "-tlsalpn01", "",
             "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
            {},
            log="challtestsrv.log",
        )  # fmt: skip
        _wait_for_port(self.ports["dns_management"], dns, "pebble-challtestsrv")
        # Every order validated for real, at once, and no nonce refused.
        pebble = self._start(
            [TOOLS["pebble"], "-config", str(config), "-dnsserver", f"127.0.0.1:{self.ports['dns']}"],
            {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"},
            log="pebble.log",
        )
        _wait_for_port(self.ports["acme"], pebble, "pebble")
        _wait_for_port(self.ports["management"], pebble, "pebble's management interface")
        self.directory = f"https://127.0.0.1:{self.ports['acme']}/dir"

    def pebble_root(self) -> bytes:
        context = ssl.create_default_context(cafile=str(self.pebble_tls))
        connection = http.client.HTTPSConnection("127.0.0.1", self.ports["management"], context=context, timeout=30)
        connection.request("GET", "/roots/0")
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200, body
        return body

    # nginx -------------------------------------------------------------------
    def start_nginx(self, topo):
        site = self.root / "matrix-synapse.conf"
        site.write_text(_acme_site(self.root, topo, http_port=self.ports["http"], https_port=self.ports["https"],
                                   nginx_federation_port=0, nginx_listen_ipv6=False))  # fmt: skip
        self.nginx_conf = self.root / "nginx.conf"
        # A master process (reloads keep its PID) whose workers read the scratch files.
        self.nginx_conf.write_text("user root;\ndaemon off;\n" + SITE.scratch_main_conf(self.root, str(site)))
        nginx = self._start(
            [SITE.NGINX, "-p", str(self.root), "-e", str(self.root / "error.log"), "-c", str(self.nginx_conf)], {}
        )
        _wait_for_port(self.ports["http"], nginx, "nginx")
        _wait_for_port(self.ports["https"], nginx, "nginx")
        self.nginx = nginx
        # What the deploy hook calls: systemctl and nginx -t, aimed at this nginx.
        for name, body in (
            ("systemctl", f'case "$1" in is-active) exit 0;; reload) kill -HUP {nginx.pid};; *) exit 1;; esac'),
            ("nginx", f'exec {SITE.NGINX} -p {self.root} -e {self.root / "error.log"} -c {self.nginx_conf} "$@"'),
        ):
            tool = self.root / "fakebin" / name
            tool.write_text(f'#!/bin/sh\necho "{name} $*" >>{self.calls}\n{body}\n')
            tool.chmod(0o755)

    def reload_nginx(self):
        """What the role's `reload nginx` handler does to the master process."""
        os.kill(self.nginx.pid, signal.SIGHUP)

    def http_get(self, path):
        connection = http.client.HTTPConnection("127.0.0.1", self.ports["http"], timeout=10)
        connection.request("GET", path, headers={"Host": NAME})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Location")

    def served(self, name=NAME, cadata=None):
        """The certificate nginx serves for `name`, verified against `cadata` when given."""
        if cadata is None:
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cadata=cadata.decode())
        with socket.create_connection(("127.0.0.1", self.ports["https"]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))

    def served_changes_from(self, serial):
        """The certificate nginx serves once a reload has replaced `serial` for good.

        Until the old workers have closed their listeners, a new connection may
        still reach one of them: wait for five answers in a row with the same
        new certificate.
        """
        deadline = time.monotonic() + 30
        seen = []
        while len(seen) < 5:
            assert time.monotonic() < deadline, f"nginx still serves the old certificate ({len(seen)} new answers)"
            certificate = self.served()
            if certificate.serial_number == serial or (seen and certificate.serial_number != seen[0].serial_number):
                seen = []
                time.sleep(0.2)
            else:
                seen.append(certificate)
        return seen[-1]

    # the role ----------------------------------------------------------------
    def run_role(self, check=False, **overrides):
        """The role's TLS tasks; returns (what they decided, how many tasks changed)."""
        play = self.root / "play" / PLAY.name
        shutil.copy(PLAY, play)
        templates = self.root / "play" / "templates"
        if not templates.exists():
            templates.symlink_to(ROLE / "templates")
        result = self.root / "play" / "result.json"
        result.unlink(missing_ok=True)
        extra = {
            "ansible_python_interpreter": sys.executable,
            "acme_test_role": str(ROLE),
            "acme_test_result_file": str(result),
            "nginx_acme_enabled": True,
            "synapse_server_name": ALIAS,
            "nginx_server_name": NAME,
            # An address among the aliases is served but left out of the certificate.
            "nginx_server_aliases": [ALIAS, "127.0.0.1"],
            "nginx_acme_directory_url": self.directory,
            "nginx_acme_ca_bundle": str(self.pebble_tls),
            "nginx_tls_dir": str(self.root / "tls"),
            "__nginx_acme_config_dir": str(self.root / "letsencrypt"),
            "__nginx_acme_webroot": str(self.root / "webroot"),
            "__nginx_acme_deploy_hook": str(self.root / "bin" / "polylith-nginx-reload"),
            "__nginx_acme_timer_dropin": str(self.root / "systemd" / "certbot.service.d" / "polylith-acme-ca.conf"),
            **overrides,
        }
        (self.root / "play" / "extra.json").write_text(json.dumps(extra))
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
               "ANSIBLE_LOCAL_TEMP": str(self.root / "play" / "tmp")}  # fmt: skip
        command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
                   "-e", f"@{self.root / 'play' / 'extra.json'}", str(play)] + (["--check"] if check else [])
        run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        changed = int(re.search(r"^localhost +: ok=\d+ +changed=(\d+) ", run.stdout, re.M).group(1))
        decided = json.loads(result.read_text()) if result.exists() else None
        return decided, changed

    def certbot(self, argv, environment):
        """certbot as the role runs it, its state in the scratch directory."""
        env = {**os.environ, **environment, "PATH": f"{self.root / 'fakebin'}:{os.environ['PATH']}"}
        dirs = ["--config-dir", str(self.root / "letsencrypt"), "--work-dir", str(self.root / "work"),
                "--logs-dir", str(self.root / "logs")]  # fmt: skip
        run = subprocess.run(argv + dirs, capture_output=True, text=True, env=env, timeout=STEP_TIMEOUT)
        assert run.returncode == 0, run.stdout + run.stderr + self.pebble_log()
        return run

    def live(self):
        path = self.root / "letsencrypt" / "live" / NAME / "fullchain.pem"
        return x509.load_pem_x509_certificate(path.read_bytes()) if path.exists() else None

    def hook_calls(self):
        return self.calls.read_text().splitlines() if self.calls.exists() else []

    def pebble_log(self):
        return "\n--- pebble:\n" + "".join((self.root / "pebble.log").read_text().splitlines(True)[-30:])

    # -------------------------------------------------------------------------
    def _start(self, argv, env, log=None):
        output = open(self.root / log, "w") if log else subprocess.DEVNULL  # closed in stop()
        process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT)
        self.processes.append((process, output))
        return process

    def stop(self):
        for process, _ in reversed(self.processes):
            process.terminate()
        for process, output in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
            if output is not subprocess.DEVNULL:
                output.close()


def _names(certificate):
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return sorted(names.get_values_for_type(x509.DNSName))


@pytest.fixture
def lab(tmp_path):
    _needs("pebble", "pebble-challtestsrv", "certbot", "openssl")
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.stop()


def test_certbot_obtains_and_renews_through_the_role_and_nginx_reloads(lab):
    lab.start_pebble()

    # Check mode on a fresh host writes nothing.
    decided, _ = lab.run_role(check=True)
    assert decided["issue"] is True, decided
    assert not any((lab.root / "tls").iterdir()), list((lab.root / "tls").iterdir())

    # First run: no certificate yet, so certbot must be asked; nginx loads a
    # self-signed placeholder meanwhile, and the names leave the address out.
    decided, changed = lab.run_role()
    assert (decided["issue"], decided["reissue"]) == (True, False)
    assert decided["names"] == [NAME, ALIAS]
    assert decided["certificate"] == str(lab.root / "tls" / "acme.crt")
    assert os.readlink(lab.root / "tls" / "acme.crt") == str(lab.root / "tls" / "acme-placeholder.crt")
    assert os.readlink(lab.root / "tls" / "acme.key") == str(lab.root / "tls" / "acme-placeholder.key")
    assert decided["environment"] == {"REQUESTS_CA_BUNDLE": str(lab.pebble_tls)}
    # The links changed (nginx reloads), the CA drop-in for certbot.timer appeared (systemd reloads).
    assert sorted(decided["reloads"]) == ["nginx", "systemd"]
    hook = lab.root / "bin" / "polylith-nginx-reload"
    assert os.access(hook, os.X_OK) and "systemctl reload nginx.service" in hook.read_text()
    dropin = lab.root / "systemd" / "certbot.service.d" / "polylith-acme-ca.conf"
    assert f"Environment=REQUESTS_CA_BUNDLE={lab.pebble_tls}\n" in dropin.read_text()

    # nginx starts on the placeholder and answers the challenge's path from
    # the webroot, redirecting everything else.
    lab.start_nginx(SITE.LAYOUTS["single-host"]())
    placeholder = lab.served()
    assert _names(placeholder) == sorted([NAME, ALIAS])
    assert lab.http_get("/.well-known/acme-challenge/none")[0] == 404
    status, _, location = lab.http_get("/_matrix/client/versions")
    assert status == 301 and location == f"https://{NAME}:{lab.ports['https']}/_matrix/client/versions"

    # certbot, with the role's command line: Pebble validates over HTTP
    # through nginx and issues; the deploy hook checks and reloads nginx.
    argv = decided["argv"]
    assert argv[:2] == ["certbot", "certonly"] and "--keep-until-expiring" in argv
    lab.certbot(argv, decided["environment"])
    issued = lab.live()
    assert issued is not None and _names(issued) == sorted([NAME, ALIAS])
    assert lab.hook_calls() == RELOAD
    renewal = (lab.root / "letsencrypt" / "renewal" / f"{NAME}.conf").read_text()
    assert f"server = {lab.directory}" in renewal
    assert f"renew_hook = {hook}" in renewal
    assert "authenticator = webroot" in renewal and str(lab.root / "webroot") in renewal

    # The next run points nginx at certbot's files and asks certbot nothing.
    decided, changed = lab.run_role()
    assert (decided["issue"], decided["reissue"]) == (False, False)
    assert os.readlink(lab.root / "tls" / "acme.crt") == str(lab.root / "letsencrypt" / "live" / NAME / "fullchain.pem")
    assert changed > 0 and "nginx" in decided["reloads"]
    lab.reload_nginx()
    served = lab.served_changes_from(placeholder.serial_number)
    assert served.serial_number == issued.serial_number
    # Trusting only Pebble's root (fetched after issuance: Pebble makes it at start).
    root = lab.pebble_root()
    assert lab.served(NAME, cadata=root).serial_number == issued.serial_number
    assert lab.served(ALIAS, cadata=root).serial_number == issued.serial_number
    with pytest.raises(ssl.SSLCertVerificationError):
        lab.served("other.example.org", cadata=root)

    # A rerun changes nothing; certbot, if asked anyway, keeps the certificate.
    decided, changed = lab.run_role()
    assert changed == 0 and decided["issue"] is False and decided["reloads"] == []
    calls = len(lab.hook_calls())
    lab.certbot(argv, decided["environment"])
    assert lab.live().serial_number == issued.serial_number and len(lab.hook_calls()) == calls

    # A forced renewal (what certbot.timer does near expiry) runs the stored
    # deploy hook: nginx reloads, its master process stays, the new certificate is served.
    master = lab.nginx.pid
    lab.certbot(["certbot", "renew", "--force-renewal", "--no-random-sleep-on-renew"], decided["environment"])
    renewed = lab.live()
    assert renewed.serial_number != issued.serial_number
    assert lab.hook_calls()[calls:] == RELOAD
    assert lab.served_changes_from(issued.serial_number).serial_number == renewed.serial_number
    assert lab.nginx.pid == master and lab.nginx.poll() is None

    # Another name: certbot must be asked, and re-issues the lineage with it.
    decided, _ = lab.run_role(nginx_server_aliases=[ALIAS, f"www.{ALIAS}"])
    assert (decided["issue"], decided["reissue"]) == (True, False)
    lab.certbot(decided["argv"], decided["environment"])
    assert _names(lab.live()) == sorted([NAME, ALIAS, f"www.{ALIAS}"])

    # Another ACME server: a new certificate from it, whatever the old one's age.
    decided, _ = lab.run_role(
        nginx_server_aliases=[ALIAS, f"www.{ALIAS}"], nginx_acme_directory_url=lab.directory + "?other"
    )
    assert (decided["issue"], decided["reissue"]) == (True, True)
    assert "--force-renewal" in decided["argv"] and "--keep-until-expiring" not in decided["argv"]

    # A certificate within the renewal window: certbot must be asked.
    decided, _ = lab.run_role(nginx_server_aliases=[ALIAS, f"www.{ALIAS}"], __nginx_acme_renew_before="+3650d")
    assert (decided["issue"], decided["reissue"]) == (True, False)
