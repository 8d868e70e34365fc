"""The nginx role's site template, rendered by Ansible's own templating from topologies the real filter builds.

Each layout (one host with UNIX sockets, nginx on its own host over TCP, every
preset) is rendered with the role's defaults and vars, then checked: maps,
upstreams with their servers and balancing, the denied patterns as the first
regex locations, every route after them in the topology's order, TLS listeners,
.well-known answers, the admin API (closed, or open to an allow-list) and the
access log. Where nginx is installed (Debian's
`nginx`/`nginx-light`), nginx itself judges the rendered file with `nginx -t`,
and the role's validate wrapper is run against a scratch /etc/nginx layout.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar, trust_as_template

from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_catalogue import (
    WORKER_TYPES,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_presets import (
    PRESETS,
)
from conftest import ROOT

ROLE = ROOT / "roles" / "nginx"
SITE_TEMPLATE = ROLE / "templates" / "matrix-synapse.conf.j2"
CHECK_TEMPLATE = ROLE / "templates" / "polylith-nginx-check.sh.j2"

init_plugin_loader()

# The worker list of /tmp/topology_example.json: shared sync and federation
# inbound workers (sticky hashes), one stream writer, media, a sender; and
# the pools: initial syncs (a map on $arg_since) and room workers.
WORKERS = [
    {"name": "sync", "types": ["synchrotron"], "count": 2},
    {"name": "initial_sync", "types": ["initial_synchrotron"]},
    {"name": "rooms", "types": ["room_worker"], "count": 2},
    {
        "name": "stream_writer",
        "types": ["typing", "to_device", "account_data", "receipts", "presence", "push_rules"],
    },
    {"name": "media", "types": ["media_repository"]},
    {"name": "sender", "types": ["federation_sender"]},
    {"name": "inbound", "types": ["federation_inbound"], "count": 2},
    {"name": "client", "types": ["client_reader", "event_creator"], "count": 2},
]

SINGLE_HOST = {
    "groups": {"synapse_main": ["lab1"], "synapse_workers": ["lab1"], "nginx": ["lab1"]},
    "hostvars": {"lab1": {"ansible_host": "10.0.0.1"}},
}
MULTI_HOST = {
    "groups": {"synapse_main": ["app1"], "synapse_workers": ["app2", "app3"], "nginx": ["web1"]},
    "hostvars": {
        "app1": {"ansible_host": "10.0.0.1"},
        "app2": {"ansible_host": "10.0.0.2"},
        "app3": {"ansible_host": "10.0.0.3"},
        "web1": {"ansible_host": "10.0.0.9"},
    },
}
MULTI_HOST_WORKERS = [
    {"name": "sync", "types": ["synchrotron"], "count": 3, "hosts": ["app2", "app3"]},
    {"name": "typing", "types": ["typing"], "hosts": ["app2"]},
    {"name": "inbound", "types": ["federation_inbound"], "count": 2, "hosts": ["app3"]},
]

INVENTORY = {"synapse_server_name": "example.org", "synapse_public_host": "matrix.example.org"}


def topology(workers, layout, **options):
    return build_topology(workers, groups=layout["groups"], hostvars=layout["hostvars"], **options)


def render(template, topo=None, distro="Debian-12", **overrides):
    """Render a role template the way the template module does, with the role's defaults and vars."""
    loader = DataLoader()
    variables = {}
    for path in ("defaults/main.yml", "vars/main.yml", f"vars/{distro}.yml"):
        variables.update(loader.load_from_file(str(ROLE / path), trusted_as_template=True))
    variables.update(INVENTORY)
    variables["ansible_managed"] = "Ansible managed: polylith.synapse test"
    if topo is not None:
        variables["polylith_synapse_deployment"] = topo
    variables.update(overrides)
    templar = Templar(loader=loader, variables=variables)
    return templar.template(trust_as_template(template.read_text()))


# --- a small reader for the rendered file -----------------------------------


def blocks(text, keyword):
    """{header: body} of every top-level `keyword ... { ... }` block, in order."""
    found = []
    for match in re.finditer(rf"^{keyword}\b([^{{\n]*)\{{\n(.*?)^\}}", text, re.M | re.S):
        found.append((match.group(1).strip(), match.group(2)))
    return found


def servers(text):
    return [body for _, body in blocks(text, "server")]


def tls_servers(text):
    return [body for body in servers(text) if re.search(r"^\s*listen \S+ ssl", body, re.M)]


def locations(server_body):
    """[(modifier, argument, body)] of the server's locations, in file order."""
    return [
        (m.group(1) or "", m.group(2), m.group(3))
        for m in re.finditer(
            r"^    location (?:(~|=|\^~) )?(\"(?:[^\"\\]|\\.)*\"|\S+) \{\n(.*?)^    \}", server_body, re.M | re.S
        )
    ]


def unquote(token):
    """What nginx reads from a double-quoted token (ngx_conf_read_token's unescaping)."""
    assert token.startswith('"') and token.endswith('"'), token
    inner, out, i = token[1:-1], [], 0
    while i < len(inner):
        if inner[i] == "\\" and i + 1 < len(inner):
            nxt = inner[i + 1]
            if nxt in "\"'\\":
                out.append(nxt)
                i += 2
                continue
            if nxt in "trn":
                out.append({"t": "\t", "r": "\r", "n": "\n"}[nxt])
                i += 2
                continue
        out.append(inner[i])
        i += 1
    return "".join(out)


# --- layouts ------------------------------------------------------------------

LAYOUTS = {
    "single-host": lambda: topology(WORKERS, SINGLE_HOST),
    "multi-host": lambda: topology(MULTI_HOST_WORKERS, MULTI_HOST),
    "monolith": lambda: topology([], SINGLE_HOST),
    **{f"preset-{name}": (lambda name=name: topology(None, SINGLE_HOST, preset=name)) for name in PRESETS},
}


@pytest.fixture(params=["single-host", "multi-host"])
def layout(request):
    topo = LAYOUTS[request.param]()
    return request.param, topo, render(SITE_TEMPLATE, topo)


def test_layouts_are_what_they_claim():
    single = LAYOUTS["single-host"]()["nginx"]
    multi = LAYOUTS["multi-host"]()["nginx"]
    assert all(s.startswith("unix:") for u in single["upstreams"].values() for s in u["servers"])
    assert all(not s.startswith("unix:") for u in multi["upstreams"].values() for s in u["servers"])
    for nginx in (single, multi):
        assert {u["balance"] for u in nginx["upstreams"].values()} >= {"user", "least_conn"}
        assert nginx["maps"] and nginx["routes"] and nginx["denied_patterns"]
    # The single-host layout renders a method-limited route and one limited
    # to requests without `since` (and their maps).
    assert any(route["upstream_variable"] and route["methods"] for route in single["routes"])
    assert any(route["upstream_variable"] and route["without_arg"] for route in single["routes"])
    assert {m["source"] for m in single["maps"]} >= {"$request_method", "$arg_since"}


def test_header_is_ansible_managed(layout):
    _, _, text = layout
    assert text.splitlines()[:3] == ["#", "# Ansible managed: polylith.synapse test", "#"]


def test_maps_rendered_in_order(layout):
    _, topo, text = layout
    rendered = blocks(text, "map")
    assert [header for header, _ in rendered] == [f"{m['source']} {m['variable']}" for m in topo["nginx"]["maps"]]
    for (_, body), expected in zip(rendered, topo["nginx"]["maps"]):
        lines = [line.strip() for line in body.strip().splitlines()]
        assert lines[0] == f"default {expected['default']};"
        assert lines[1:] == [f"\"{case['pattern']}\" {case['value']};" for case in expected["cases"]]
        for line, case in zip(lines[1:], expected["cases"]):
            assert unquote(line.rsplit(" ", 1)[0]) == case["pattern"]
    assert '    "" $synapse_balance_user_from_query;' in text


def test_every_upstream_with_servers_and_balancing(layout):
    _, topo, text = layout
    rendered = dict(blocks(text, "upstream"))
    assert list(rendered) == list(topo["nginx"]["upstreams"])
    for name, upstream in topo["nginx"]["upstreams"].items():
        lines = [line.strip() for line in rendered[name].strip().splitlines()]
        expected = []
        if upstream["hash_key"]:
            expected.append(f"hash {upstream['hash_key']} consistent;")
        elif upstream["balance"] == "least_conn":
            expected.append("least_conn;")
        # Passive health where there is another server to fall back to.
        health = " max_fails=1 fail_timeout=30s" if len(upstream["servers"]) > 1 else ""
        expected += [f"server {server}{health};" for server in upstream["servers"]]
        # Kept connections only where every server is a UNIX socket on this host.
        if all(server.startswith("unix:") for server in upstream["servers"]):
            expected.append("keepalive 32;")
        assert lines == expected, name


def test_failed_servers_leave_rotation_and_requests_move_on(layout):
    _, topo, text = layout
    assert "    proxy_next_upstream error timeout;" in text
    assert "    proxy_connect_timeout 3s;" in text
    tuned = render(SITE_TEMPLATE, topo, nginx_upstream_max_fails=3, nginx_upstream_fail_timeout="5s")
    for name, body in blocks(tuned, "upstream"):
        servers = [line.strip() for line in body.splitlines() if line.strip().startswith("server ")]
        if len(servers) > 1:
            assert all(line.endswith(" max_fails=3 fail_timeout=5s;") for line in servers), name


def test_keepalive_is_overridable(layout):
    _, topo, _ = layout
    local = {name for name, upstream in topo["nginx"]["upstreams"].items()
             if all(server.startswith("unix:") for server in upstream["servers"])}
    for name, body in blocks(render(SITE_TEMPLATE, topo, nginx_upstream_keepalive=8), "upstream"):
        assert ("keepalive 8;" in body) == (name in local), name
    assert not re.search(r"^\s*keepalive ", render(SITE_TEMPLATE, topo, nginx_upstream_keepalive=0), re.M)


def test_routes_follow_the_denied_patterns_in_order(layout):
    _, topo, text = layout
    nginx = topo["nginx"]
    bodies = tls_servers(text)
    assert len(bodies) == 2
    for body in bodies:
        regex = [(unquote(arg), inner) for modifier, arg, inner in locations(body) if modifier == "~"]
        denied = regex[: len(nginx["denied_patterns"])]
        routes = regex[len(nginx["denied_patterns"]):]
        assert [pattern for pattern, _ in denied] == nginx["denied_patterns"]
        for _, inner in denied:
            assert "return 404;" in inner and "proxy_pass" not in inner
        assert [pattern for pattern, _ in routes] == [route["pattern"] for route in nginx["routes"]]
        for (_, inner), route in zip(routes, nginx["routes"]):
            if route["upstream_variable"]:
                # Limited (methods, a missing query argument): the location
                # proxies to its map's choice.
                assert f"set $synapse_upstream {route['upstream_variable']};" in inner
                assert "proxy_pass http://$synapse_upstream;" in inner
                assert (
                    f"# {route['condition']}: {route['upstream']}; other requests: {route['fallback_upstream']}."
                ) in inner
            else:
                assert f"set $synapse_upstream {route['upstream']};" in inner
                assert f"proxy_pass http://{route['upstream']};" in inner
        default = [inner for modifier, arg, inner in locations(body) if modifier == "" and arg == "/"]
        assert len(default) == 1
        assert f"proxy_pass http://{nginx['default_upstream']};" in default[0]
        assert f"set $synapse_upstream {nginx['default_upstream']};" in default[0]


def test_replication_and_metrics_denied(layout):
    _, topo, text = layout
    denied = topo["nginx"]["denied_patterns"]
    assert "^/_synapse/replication/" in denied and "^/_synapse/metrics" in denied
    for body in tls_servers(text):
        regex = [unquote(arg) for modifier, arg, _ in locations(body) if modifier == "~"]
        assert regex[: len(denied)] == denied


ALLOWED = ["192.0.2.0/24", "203.0.113.7", "2001:db8::/64"]
REFUSED_MAP = (
    'map "$polylith_synapse_admin_api_client:$uri" $polylith_synapse_admin_api_refused {\n'
    "    default 0;\n"
    '    "~^0:/_synapse/admin" 1;\n'
    "}\n"
)
REFUSED_IF = (
    "    if ($polylith_synapse_admin_api_refused) {\n"
    '        set $synapse_upstream "denied";\n'
    "        return 403;\n"
    "    }\n"
)


def admin_locations(body):
    return [inner for modifier, arg, inner in locations(body) if modifier == "^~" and arg == "/_synapse/admin"]


def test_admin_api_closed_by_default(layout):
    _, _, text = layout
    assert "geo " not in text and "polylith_synapse_admin_api" not in text
    for body in tls_servers(text):
        (admin,) = admin_locations(body)
        assert 'set $synapse_upstream "denied";' in admin and "return 404;" in admin
        # Before every regex location; `^~` keeps them from matching under the prefix.
        modifiers = [modifier for modifier, _, _ in locations(body)]
        assert modifiers.index("^~") < modifiers.index("~")
    assert render(SITE_TEMPLATE, layout[1], nginx_admin_api_allowed_clients=None) == text


def test_admin_api_open_to_the_allowed_clients_only(layout):
    _, topo, _ = layout
    text = render(SITE_TEMPLATE, topo, nginx_admin_api_allowed_clients=[*ALLOWED, ALLOWED[0]])
    (geo,) = blocks(text, "geo")
    assert geo[0] == "$remote_addr $polylith_synapse_admin_api_client"
    assert [line.strip() for line in geo[1].strip().splitlines()] == ["default 0;", *(f"{c} 1;" for c in ALLOWED)]
    assert REFUSED_MAP in text
    for body in tls_servers(text):
        assert not admin_locations(body)
        # After the server's own `set`, so the log names the refusal.
        assert '    set $synapse_upstream "-";\n\n    # The admin API' in body
        assert body.count(REFUSED_IF) == 1
    # The plain-HTTP server only redirects.
    assert sum(body.count(REFUSED_IF) for body in servers(text)) == len(tls_servers(text))


@pytest.mark.parametrize(
    ("clients", "defaults"),
    [(["0.0.0.0/0"], ["::/0 0;"]), (["::/0", "10.0.0.1"], ["0.0.0.0/0 0;"]), (["0.0.0.0/0", "::/0"], [])],
)
def test_admin_api_open_to_a_whole_address_family(clients, defaults):
    # A listed /0 network replaces geo's default for its family, which nginx
    # would otherwise report as a network given twice.
    text = render(SITE_TEMPLATE, LAYOUTS["single-host"](), nginx_admin_api_allowed_clients=clients)
    ((_, geo),) = blocks(text, "geo")
    assert [line.strip() for line in geo.strip().splitlines()] == [*defaults, *(f"{c} 1;" for c in clients)]


def test_listeners_tls_and_redirect(layout):
    _, _, text = layout
    client, federation = tls_servers(text)
    assert "    listen 443 ssl http2;\n    listen [::]:443 ssl http2;\n" in client
    assert "    listen 8448 ssl;\n    listen [::]:8448 ssl;\n" in federation
    for body in (client, federation):
        assert "server_name matrix.example.org example.org;" in body
        assert "ssl_certificate /etc/nginx/polylith-tls/server.crt;" in body
        assert "ssl_certificate_key /etc/nginx/polylith-tls/server.key;" in body
        assert "client_max_body_size 50M;" in body
        for directive in (
            "proxy_http_version 1.1;",
            'proxy_set_header Connection "";',
            "proxy_set_header Host $host;",
            "proxy_set_header X-Forwarded-For $remote_addr;",
            "proxy_set_header X-Forwarded-Proto $scheme;",
            "proxy_read_timeout 600s;",
        ):
            assert directive in body
    plain = [body for body in servers(text) if "listen 80;" in body]
    assert len(plain) == 1 and "return 301 https://$host$request_uri;" in plain[0]


def test_ports_tls_and_limits_are_overridable(layout):
    _, topo, _ = layout
    text = render(
        SITE_TEMPLATE,
        topo,
        nginx_https_port=8443,
        nginx_federation_port=0,
        nginx_http_port=8080,
        nginx_listen_ipv6=False,
        nginx_tls_certificate="/etc/ssl/matrix.pem",
        nginx_tls_certificate_key="/etc/ssl/private/matrix.key",
        synapse_max_upload_size="100M",
    )
    (only,) = tls_servers(text)
    assert "    listen 8443 ssl http2;\n    server_name" in only
    assert "ssl_certificate /etc/ssl/matrix.pem;" in only
    assert "ssl_certificate_key /etc/ssl/private/matrix.key;" in only
    assert "client_max_body_size 100M;" in only
    assert "return 301 https://$host:8443$request_uri;" in text
    assert "8448" not in text
    assert '"base_url": "https://matrix.example.org:8443"' in text
    assert "listen 80" not in render(SITE_TEMPLATE, topo, nginx_http_port=0)


def test_http2_directive_on_debian_13(layout):
    _, topo, _ = layout
    client, federation = tls_servers(render(SITE_TEMPLATE, topo, distro="Debian-13"))
    assert "    listen 443 ssl;\n" in client and "    http2 on;\n" in client
    assert "http2" not in federation


def test_well_known_answers(layout):
    _, _, text = layout
    for body in tls_servers(text):
        found = {arg: inner for modifier, arg, inner in locations(body) if modifier == "="}
        answers = {}
        for path in ("/.well-known/matrix/server", "/.well-known/matrix/client"):
            inner = found[path]
            assert "default_type application/json;" in inner
            assert "add_header Access-Control-Allow-Origin * always;" in inner
            answers[path] = json.loads(re.search(r"return 200 '(.*)';", inner).group(1))
        assert answers["/.well-known/matrix/server"] == {"m.server": "matrix.example.org:443"}
        assert answers["/.well-known/matrix/client"] == {"m.homeserver": {"base_url": "https://matrix.example.org"}}
    off = render(SITE_TEMPLATE, layout[1], nginx_well_known_server={}, nginx_well_known_client={})
    assert ".well-known" not in off


def test_access_log_names_the_upstream(layout):
    _, _, text = layout
    log_format = re.search(r"^log_format polylith_synapse (.*?);$", text, re.M | re.S).group(1)
    for variable in ("$upstream_addr", "$synapse_upstream", "$status", "$request_time", "$request_method $uri"):
        assert variable in log_format
    for body in servers(text):
        assert "access_log /var/log/nginx/matrix-synapse.access.log polylith_synapse;" in body
        # Every server defines the variable the log format reads.
        assert 'set $synapse_upstream "-";' in body


def test_template_knows_no_worker_type_or_endpoint():
    source = SITE_TEMPLATE.read_text()
    for name in WORKER_TYPES:
        assert not re.search(rf"\b{re.escape(name)}\b", source), name
    assert "_matrix" not in source
    assert not re.search(r"location ~ \"\^", source)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_pattern_survives_double_quotes(name):
    """The role's preflight refuses patterns that nginx would read differently inside "..."."""
    nginx = LAYOUTS[name]()["nginx"]
    patterns = [r["pattern"] for r in nginx["routes"]] + nginx["denied_patterns"]
    patterns += [c["pattern"] for m in nginx["maps"] for c in m["cases"]]
    for pattern in patterns:
        assert '"' not in pattern and "\\\\" not in pattern, pattern
        assert unquote(f'"{pattern}"') == pattern.replace("\\t", "\t").replace("\\r", "\r").replace("\\n", "\n")


# --- nginx judges the output --------------------------------------------------

# tests/run installs nginx-light: nginx itself must judge the output, so a
# missing nginx fails these tests rather than skipping them.
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def needs_nginx(test):
    def run(*args, **kwargs):
        assert NGINX is not None, "nginx is not installed: tests/run installs nginx-light"
        return test(*args, **kwargs)

    return functools.wraps(test)(run)


def nginx_version():
    out = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr
    return tuple(int(part) for part in re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", out).groups())


def installed_distro():
    """Which vars file matches the installed nginx: `http2 on;` exists from 1.25.1."""
    return "Debian-13" if nginx_version() >= (1, 25, 1) else "Debian-12"


def self_signed(directory: Path):
    cert, key = directory / "server.crt", directory / "server.key"
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is needed to make a throwaway certificate"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=matrix.example.org"],
        check=True, capture_output=True,
    )
    return cert, key


def scratch_main_conf(directory: Path, include: str) -> str:
    """A main nginx.conf whose every writable path is inside `directory`."""
    return "\n".join([
        f"pid {directory}/nginx.pid;",
        f"error_log {directory}/error.log;",
        "events {}",
        "http {",
        "    include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").exists() else "",
        f"    access_log {directory}/access.log;",
        *(f"    {kind}_temp_path {directory}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
        f"    include {include};",
        "}",
        "",
    ])


def render_for_nginx(directory: Path, topo, **overrides):
    cert, key = self_signed(directory)
    return render(
        SITE_TEMPLATE,
        topo,
        distro=installed_distro(),
        nginx_tls_certificate=str(cert),
        nginx_tls_certificate_key=str(key),
        nginx_access_log=str(directory / "matrix-synapse.access.log"),
        nginx_error_log=str(directory / "matrix-synapse.error.log"),
        **overrides,
    )


def nginx_test(directory: Path, conf: Path):
    return subprocess.run(
        [NGINX, "-t", "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(conf)],
        capture_output=True, text=True, timeout=60,
    )


@needs_nginx
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_nginx_accepts_the_rendered_site(tmp_path, name):
    site = tmp_path / "matrix-synapse.conf"
    site.write_text(render_for_nginx(tmp_path, LAYOUTS[name]()))
    conf = tmp_path / "nginx.conf"
    conf.write_text(scratch_main_conf(tmp_path, str(site)))
    result = nginx_test(tmp_path, conf)
    assert result.returncode == 0, result.stderr + "\n" + site.read_text()
    assert "test is successful" in result.stderr


@needs_nginx
def test_nginx_accepts_the_variants(tmp_path):
    site = tmp_path / "matrix-synapse.conf"
    site.write_text(render_for_nginx(
        tmp_path, LAYOUTS["single-host"](), nginx_admin_api_allowed_clients=ALLOWED, nginx_federation_port=0,
        nginx_upstream_keepalive=0, nginx_https_port=8443, nginx_listen_ipv6=False,
        nginx_server_extra_config="add_header X-Test yes;\nkeepalive_timeout 30s;",
    ))
    conf = tmp_path / "nginx.conf"
    conf.write_text(scratch_main_conf(tmp_path, str(site)))
    result = nginx_test(tmp_path, conf)
    assert result.returncode == 0, result.stderr + "\n" + site.read_text()


@needs_nginx
@pytest.mark.parametrize("clients", [ALLOWED, ["127.0.0.1", "::1"], ["0.0.0.0/0"], ["0.0.0.0/0", "::/0"]],
                         ids=["networks", "loopback", "every-ipv4", "everyone"])  # fmt: skip
@pytest.mark.parametrize("name", ["single-host", "multi-host", "preset-one-of-each"])
def test_nginx_accepts_the_admin_api_allow_list(tmp_path, name, clients):
    site = tmp_path / "matrix-synapse.conf"
    site.write_text(render_for_nginx(tmp_path, LAYOUTS[name](), nginx_admin_api_allowed_clients=clients))
    conf = tmp_path / "nginx.conf"
    conf.write_text(scratch_main_conf(tmp_path, str(site)))
    result = nginx_test(tmp_path, conf)
    assert result.returncode == 0, result.stderr + "\n" + site.read_text()
    # Not even a warning (such as a network given twice).
    assert "[warn]" not in result.stderr, result.stderr


@needs_nginx
def test_nginx_rejects_a_broken_site(tmp_path):
    site = tmp_path / "matrix-synapse.conf"
    site.write_text(render_for_nginx(tmp_path, LAYOUTS["single-host"]()).replace("least_conn;", "least_conn", 1))
    conf = tmp_path / "nginx.conf"
    conf.write_text(scratch_main_conf(tmp_path, str(site)))
    assert nginx_test(tmp_path, conf).returncode != 0


# --- the validate wrapper -----------------------------------------------------


@pytest.fixture
def etc_nginx(tmp_path):
    """A scratch /etc/nginx: a main config including sites-enabled/*, another site, and the live Synapse site."""
    etc = tmp_path / "etc"
    (etc / "sites-available").mkdir(parents=True)
    (etc / "sites-enabled").mkdir()
    main = etc / "nginx.conf"
    main.write_text(scratch_main_conf(tmp_path, f"{etc}/sites-enabled/*"))
    (etc / "sites-enabled" / "other").write_text("server {\n    listen 8081;\n    server_name other.test;\n}\n")
    site = etc / "sites-available" / "matrix-synapse.conf"
    # The live site defines the same upstreams and maps as any candidate: the
    # wrapper must leave it out or nginx reports duplicates.
    site.write_text(render_for_nginx(tmp_path, LAYOUTS["single-host"]()))
    (etc / "sites-enabled" / "matrix-synapse.conf").symlink_to(site)
    script = tmp_path / "polylith-nginx-check"
    script.write_text(render(
        CHECK_TEMPLATE, __nginx_main_conf=str(main), __nginx_sites_enabled_dir=f"{etc}/sites-enabled"
    ))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return tmp_path, etc, site, script


def run_check(tmp_path, script, site, candidate):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PATH": f"{Path(NGINX).parent}:{os.environ.get('PATH', '')}"}
    return subprocess.run([str(script), str(site), str(candidate)], capture_output=True, text=True, env=env, timeout=60)


def needs_root_nginx(test):
    def run(*args, **kwargs):
        assert NGINX is not None, "nginx is not installed: tests/run installs nginx-light"
        assert os.geteuid() == 0, "the validate wrapper runs nginx -t as root, as on the nginx host"
        return test(*args, **kwargs)

    return functools.wraps(test)(run)


@needs_root_nginx
def test_check_accepts_a_good_candidate_in_place_of_the_live_site(etc_nginx):
    tmp_path, etc, site, script = etc_nginx
    live = site.read_text()
    candidate = tmp_path / "candidate"
    candidate.write_text(render_for_nginx(tmp_path, LAYOUTS["multi-host"]()))
    result = run_check(tmp_path, script, site, candidate)
    assert result.returncode == 0, result.stderr
    assert site.read_text() == live
    assert not [p for p in etc.iterdir() if p.name.startswith(".polylith-nginx-check")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("polylith-nginx-check.")]


@needs_root_nginx
def test_check_rejects_a_broken_candidate_and_a_clash_with_other_sites(etc_nginx):
    tmp_path, etc, site, script = etc_nginx
    candidate = tmp_path / "candidate"
    candidate.write_text("this is not nginx;\n")
    result = run_check(tmp_path, script, site, candidate)
    assert result.returncode != 0 and "unknown directive" in result.stderr
    # Another enabled site that already defines one of our upstreams.
    (etc / "sites-enabled" / "clash").write_text("upstream synapse_main {\n    server 127.0.0.1:1;\n}\n")
    candidate.write_text(site.read_text())
    result = run_check(tmp_path, script, site, candidate)
    assert result.returncode != 0 and "duplicate upstream" in result.stderr
    assert not [p for p in etc.iterdir() if p.name.startswith(".polylith-nginx-check")]
