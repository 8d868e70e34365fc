"""Unit tests of the shared-variable checks (plugin_utils/shared_inputs.py)."""

from __future__ import annotations


import pytest

from ansible_collections.polylith.synapse.plugins.filter.synapse_topology import (
    FilterModule,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils import shared_inputs as si
from ansible_collections.polylith.synapse.plugins.plugin_utils.topology import (
    build_topology,
)

GOOD = {
    "synapse_server_name": "example.org",
    "synapse_database_password": "s3cret-pass",
    "synapse_redis_password": "redis-pass",
}
ONE_HOST = {"synapse_main": ["app1"], "synapse_workers": ["app1"], "nginx": ["app1"]}
TWO_HOSTS = {"synapse_main": ["app1"], "synapse_workers": ["app1", "app2"], "nginx": ["app1"]}


def problems(groups=None, **values):
    groups = groups or ONE_HOST
    hosts = {h for members in groups.values() for h in members}
    return si.input_problems(groups, {h: {**GOOD, **values} for h in hosts})


def one(match, **values):
    found = problems(**values)
    assert len(found) == 1, found
    assert match in found[0], found[0]
    return found[0]


def test_good_values_pass():
    assert problems() == []
    assert problems(
        synapse_public_host="matrix.example.org", synapse_max_upload_size="100M",
        synapse_database_port="5433", synapse_redis_port=6380, synapse_database_name="matrix",
        synapse_database_user="matrix_user", synapse_database_pool_max=20, synapse_jemalloc=False,
        synapse_system_user="synapse", synapse_socket_dir="/run/synapse/", synapse_media_host="app1",
        synapse_worker_preset="one-of-each", synapse_workers=[], synapse_address="10.0.0.1",
    ) == []  # fmt: skip


@pytest.mark.parametrize(
    "name",
    ["example.org", "EXAMPLE.org", "localhost", "matrix-1.example.org", "10.0.0.1", "[2001:db8::1]", "[::1]"],
)
def test_server_names_synapse_accepts(name):
    assert si.check_server_name(name) is None


@pytest.mark.parametrize(
    ("name", "match"),
    [
        (None, "is not set"),
        ("", "is empty"),
        ("exa mple.org", "not a host name Synapse accepts"),
        ("example.org.", "not a host name"),
        ("example..org", "not a host name"),
        ("example.org\n", "not a host name"),
        ("ex_ample.org", "not a host name"),
        ("example.org:8448", "carries a port"),
        ("[2001:db8::1]:8448", "carries a port"),
        ("example.org:http", "as its port"),
        ("example.org:0", "as its port"),
        ("2001:db8::1", "without brackets"),
        ("[2001:db8::1", "unmatched brackets"),
        ("[example.org]", "not an IPv6 address in brackets"),
        ("[]", "not an IPv6 address in brackets"),
        (["example.org"], "is a list"),
        (8448, "is a number, 8448"),
    ],
)
def test_server_names_refused(name, match):
    message = si.check_server_name(name)
    assert message and match in message, message
    assert message.startswith("synapse_server_name")


def test_a_port_in_the_server_name_names_the_bare_name():
    assert "set it to 'example.org'" in si.check_server_name("example.org:8448")


@pytest.mark.parametrize("host", [None, "matrix.example.org", "10.0.0.1", "[2001:db8::1]"])
def test_public_hosts_accepted(host):
    assert si.check_public_host(host) is None


@pytest.mark.parametrize(
    "host", ["", "https://matrix.example.org", "matrix.example.org/", "matrix.example.org:443", "m x", 5, "::1"]
)
def test_public_hosts_refused(host):
    message = si.check_public_host(host)
    assert message and message.startswith("synapse_public_host"), message


@pytest.mark.parametrize("size", [None, "50M", "1G", "512K", "1048576", 1048576, "0050M"])
def test_upload_sizes_both_read(size):
    assert si.check_upload_size(size) is None


@pytest.mark.parametrize(
    ("size", "match"),
    [("50m", "50M"), ("50MB", "no 'B'"), ("1T", "not a size"), ("1.5G", "not a size"), (" 50M", "not a size"),
     ("-5M", "not a size"), ("0", "no upload"), (0, "is 0"), (True, "boolean"), (1.5, "number"), ([], "list")],
)  # fmt: skip
def test_upload_sizes_refused(size, match):
    message = si.check_upload_size(size)
    assert message and match in message, message


def test_the_upload_rule_is_within_synapse_and_nginx():
    # Every accepted string is one Synapse's parse_size reads and nginx's size syntax allows.
    from synapse.config._base import Config

    for size in ("50M", "1G", "512K", "1048576"):
        assert si.check_upload_size(size) is None
        assert Config.parse_size(size) > 0
        assert size[-1].isdigit() or size[-1] in "kKmMgG"


@pytest.mark.parametrize("name", ["synapse_database_password", "synapse_redis_password"])
def test_passwords_are_named_but_never_shown(name):
    secret = "Hunter2-very-secret"
    for value, match in [
        (secret + "\n", f"control character (code 10) at position {len(secret) + 1}"),
        ("\t" + secret, "control character (code 9) at position 1"),
        (secret[:4] + "\x7f" + secret[4:], "code 127"),
        ("", "is empty"),
        (424242, "is a number, not a string"),
        ([secret], "is a list, not a string"),
    ]:
        message = si.check_secret(name, value, required=True)
        assert message and message.startswith(name) and match in message, message
        assert secret not in message and "424242" not in message and "Hunter" not in message


def test_the_redis_password_is_optional_until_redis_listens_on_tcp():
    assert si.check_secret("synapse_redis_password", "", required=False) is None
    assert si.check_secret("synapse_redis_password", None, required=False) is None
    assert problems(synapse_redis_password="") == []


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("synapse_database_port", 0, "TCP port"),
        ("synapse_database_port", "5432x", "TCP port"),
        ("synapse_redis_port", True, "TCP port"),
        ("synapse_redis_port", 65536, "TCP port"),
        ("synapse_database_name", "postgres", "PostgreSQL's own"),
        ("synapse_database_name", "1synapse", "SQL identifier"),
        ("synapse_database_user", "Synapse", "SQL identifier"),
        ("synapse_database_pool_max", -1, "whole number"),
        ("synapse_database_pool_max", "1.5", "whole number"),
        ("synapse_jemalloc", "maybe", "set it to true"),
        ("synapse_jemalloc", 1, "set it to true"),
        ("synapse_system_user", "root", "not root"),
        ("synapse_system_user", "Synapse", "lower-case"),
        ("synapse_socket_dir", "relative/dir", "absolute path"),
        ("synapse_socket_dir", "/", "not a plain absolute path"),
        ("synapse_socket_dir", "/run/../etc", "not a plain absolute path"),
        ("synapse_socket_dir", "/run/a b", "not a plain absolute path"),
        ("synapse_socket_dir", "/var/run/", "other software"),
        ("synapse_socket_dir", "/run/" + "x" * 81, "too long for UNIX sockets"),
        ("synapse_worker_preset", "nope", "use one of"),
        ("synapse_worker_preset", {"a": 1}, "use one of"),
        ("synapse_workers", "sync", "is a string"),
        ("synapse_workers", {"name": "sync"}, "is a mapping"),
        ("synapse_media_host", "app9", "one of app1"),
    ],
)
def test_shared_variables_refused(name, value, match):
    message = one(match, **{name: value})
    assert name in message


@pytest.mark.parametrize(
    "clients",
    [None, [], ["203.0.113.7"], ["192.0.2.0/24", "2001:db8::/64", "::1", "2001:DB8::/32", "::ffff:192.0.2.1"],
     ["0.0.0.0/0", "::/0"], ("10.0.0.0/8",)],
)  # fmt: skip
def test_admin_api_allow_lists_accepted(clients):
    assert si.check_allowed_clients(clients) == []
    assert problems(nginx_admin_api_allowed_clients=clients) == []


@pytest.mark.parametrize(
    ("clients", "match"),
    [
        ("10.0.0.1", "nginx_admin_api_allowed_clients is a string, '10.0.0.1'"),
        ({"10.0.0.1": 1}, "nginx_admin_api_allowed_clients is a mapping"),
        (True, "nginx_admin_api_allowed_clients is a boolean, True"),
        (["localhost"], "nginx_admin_api_allowed_clients[0] is 'localhost', not an IP address or CIDR network"),
        (["10.0.0.1", "all"], "nginx_admin_api_allowed_clients[1] is 'all', not an IP address"),
        (["default"], "is 'default', not an IP address"),
        ([""], "is '', not an IP address"),
        (["10.0.0.0/255.0.0.0"], "is '10.0.0.0/255.0.0.0', not an IP address or CIDR network"),
        (["10.0.0.0/33"], "is '10.0.0.0/33', not"),
        (["fe80::1%eth0"], "is 'fe80::1%eth0', not"),
        (["10.0.0.1 1; }"], "is '10.0.0.1 1; }', not"),
        (["10.0.0.256"], "is '10.0.0.256', not"),
        (["192.0.2.1/24"], "write the network as '192.0.2.0/24', or the one address as '192.0.2.1'"),
        (["2001:db8::1/64"], "write the network as '2001:db8::/64', or the one address as '2001:db8::1'"),
        ([10], "nginx_admin_api_allowed_clients[0] is a number, 10 (quote it in YAML)"),
        ([None], "nginx_admin_api_allowed_clients[0] is empty (null)"),
        ([["10.0.0.1"]], "nginx_admin_api_allowed_clients[0] is a list, ['10.0.0.1']"),
    ],
)
def test_admin_api_allow_lists_refused(clients, match):
    message = one(match, nginx_admin_api_allowed_clients=clients)
    assert "list IP addresses or CIDR networks" in message and "e.g. [203.0.113.7" in message, message


def test_every_bad_entry_of_the_allow_list_is_named():
    found = problems(nginx_admin_api_allowed_clients=["10.0.0.1", "nope", "10.0.0.1/8", 5])
    assert [p.split(" ")[0] for p in found] == [f"nginx_admin_api_allowed_clients[{i}]" for i in (1, 2, 3)]


@pytest.mark.parametrize("value", [True, False, "yes"])
def test_the_removed_admin_api_switch_is_refused(value):
    message = one("nginx_expose_admin_api is set", nginx_expose_admin_api=value)
    assert f"({value!r})" in message
    assert "nginx_admin_api_allowed_clients replaced it" in message
    assert "Remove nginx_expose_admin_api and set nginx_admin_api_allowed_clients" in message


def test_socket_dir_limit_is_exact():
    # 85 bytes of directory plus /main-replication.sock is the 107 bytes sun_path allows.
    assert si.check_socket_dir("/run/" + "x" * 80) is None
    assert si.check_socket_dir("/run/" + "x" * 81)


@pytest.mark.parametrize(
    ("address", "match"),
    [("0.0.0.0", "wildcard"), ("::", "wildcard"), ("app2.lan", "not an IP address"), ("2001:DB8::2", "write it as"),
     ("10.0.0.256", "not an IP address"), (10, "is a number")],
)  # fmt: skip
def test_addresses_refused(address, match):
    message = si.check_address("app2", address)
    assert message and "synapse_address of host app2" in message and match in message, message


def test_a_problem_on_some_hosts_names_them():
    hostvars = {"app1": dict(GOOD), "app2": {**GOOD, "synapse_server_name": "bad name"}}
    found = si.input_problems(TWO_HOSTS, hostvars)
    assert len(found) == 1 and found[0].startswith("on app2: synapse_server_name 'bad name'"), found
    hostvars["app1"]["synapse_server_name"] = "bad name"
    assert si.input_problems(TWO_HOSTS, hostvars)[0].startswith("synapse_server_name 'bad name'")


def test_group_sizes():
    assert "no host in group 'synapse_main'" in problems({"synapse_main": [], "nginx": ["app1"]})[0]
    assert "has 2 hosts (app1, app2)" in problems({**TWO_HOSTS, "synapse_main": ["app1", "app2"]})[0]


def _checked_deployment(groups, hostvars, workers):
    topo = build_topology(workers, groups=groups, hostvars=hostvars)
    return si.input_problems(groups, hostvars, deployment=topo)


def test_deployment_needs_a_redis_password_once_redis_listens_on_tcp():
    hostvars = {h: {**GOOD, "synapse_redis_password": "", "ansible_host": a}
                for h, a in (("app1", "10.0.0.1"), ("app2", "10.0.0.2"))}  # fmt: skip
    assert _checked_deployment(TWO_HOSTS, hostvars, [{"name": "sync", "types": ["synchrotron"]}]) == []
    found = _checked_deployment(TWO_HOSTS, hostvars, [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}])
    assert found and all("synapse_redis_password is empty" in p for p in found), found
    assert "listens on TCP and needs a password" in found[0]


def test_deployment_needs_ip_addresses_where_processes_meet_over_tcp():
    hostvars = {"app1": {**GOOD, "ansible_host": "10.0.0.1"}, "app2": {**GOOD, "ansible_host": "app2.example.org"}}
    found = _checked_deployment(TWO_HOSTS, hostvars, [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}])
    assert found == [
        "host app2 is reached over TCP at 'app2.example.org' (its ansible_host), which is not an IP address "
        "other hosts can reach: set synapse_address for app2 to its IP address, e.g. 10.0.0.2."
    ]
    hostvars["app2"]["synapse_address"] = "10.0.0.2"
    assert _checked_deployment(TWO_HOSTS, hostvars, [{"name": "sync", "types": ["synchrotron"], "hosts": ["app2"]}]) == []


def test_deployment_places_workers_only_where_synapse_worker_runs():
    groups = {"synapse_main": ["app1"], "synapse_workers": [], "nginx": ["app1", "edge"]}
    hostvars = {"app1": {"ansible_host": "10.0.0.1"}, "edge": {"ansible_host": "10.0.0.9"}}
    found = _checked_deployment(groups, hostvars, [{"name": "sync", "types": ["synchrotron"], "hosts": ["edge"]}])
    assert found and "workers sync are placed on edge" in found[0]
    assert _checked_deployment(groups, hostvars, [{"name": "sync", "types": ["synchrotron"]}]) == []


def test_deployment_socket_paths_within_the_unix_limit():
    hostvars = {"app1": {**GOOD, "synapse_socket_dir": "/run/" + "d" * 70}}
    groups = {"synapse_main": ["app1"]}
    topo = build_topology([{"name": "s" * 40, "types": ["synchrotron"]}], socket_dir="/run/" + "d" * 70,
                          groups=groups, hostvars=hostvars)  # fmt: skip
    found = si.input_problems(groups, hostvars, deployment=topo)
    assert found and "more than UNIX sockets allow (107)" in found[0] and "shorten synapse_socket_dir" in found[0]


def test_the_filter_is_exposed():
    assert FilterModule().filters()["synapse_input_problems"](ONE_HOST, {"app1": GOOD}) == []


class _Unrenderable(dict):
    """hostvars whose values other than addresses only render in their own host's context."""

    def get(self, name, default=None):
        if name in ("ansible_host", "synapse_address"):
            return super().get(name, default)
        raise AssertionError(f"{name} of another host was read")


def test_a_host_checks_its_own_values_and_reads_only_addresses_of_the_others():
    hostvars = {h: _Unrenderable(ansible_host=f"192.0.2.{i}") for i, h in enumerate(TWO_HOSTS["synapse_workers"], 1)}
    own = {**GOOD, "synapse_server_name": "bad name"}
    host = TWO_HOSTS["synapse_main"][0]
    found = si.input_problems(TWO_HOSTS, hostvars, host=host, values=own)
    assert len(found) == 1 and found[0].startswith("synapse_server_name 'bad name'")
    assert si.input_problems(TWO_HOSTS, hostvars, host=host, values=GOOD) == []


# --- the nginx role's ACME settings ------------------------------------------------

ACME = {"nginx_acme_enabled": True}


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"nginx_acme_enabled": False, "synapse_public_host": "192.0.2.1", "nginx_http_port": 0},
        {"nginx_acme_enabled": "no", "nginx_tls_certificate": "/etc/ssl/m.pem"},
        {**ACME, "synapse_server_name": "example.org"},
        {**ACME, "synapse_server_name": "10.0.0.1", "synapse_public_host": "matrix.example.org"},
        {**ACME, "synapse_server_name": "example.org", "nginx_server_name": "matrix.example.org",
         "nginx_server_aliases": ["example.org", "10.0.0.1", "[2001:db8::1]", "2001:db8::2"],
         "nginx_acme_email": "admin+matrix@example.org", "nginx_acme_ca_bundle": "/etc/ssl/pebble.minica.pem",
         "nginx_acme_directory_url": "https://127.0.0.1:14000/dir", "nginx_http_port": "8080",
         "nginx_tls_certificate": "", "nginx_tls_certificate_key": ""},
        {"nginx_acme_enabled": "Yes", "synapse_server_name": "example.org", "nginx_server_aliases": []},
    ],
)  # fmt: skip
def test_acme_settings_accepted(values):
    assert si.acme_problems(values) == []
    assert FilterModule().filters()["synapse_acme_problems"](values) == []


@pytest.mark.parametrize(
    ("values", "matches"),
    [
        ({"nginx_acme_enabled": "on"}, ["nginx_acme_enabled is 'on'; set it to true"]),
        ({"nginx_acme_enabled": 1}, ["nginx_acme_enabled is 1;"]),
        ({**ACME, "synapse_server_name": "example.org", "nginx_tls_certificate": "/etc/ssl/m.pem"},
         ["nginx_acme_enabled is on and nginx_tls_certificate is set ('/etc/ssl/m.pem')",
          "set nginx_acme_enabled to false to serve your own files"]),
        ({**ACME, "synapse_server_name": "10.0.0.1"},
         ["nginx_server_name (from synapse_server_name) is '10.0.0.1', an IP address"]),
        ({**ACME, "synapse_server_name": "[2001:db8::1]"},
         ["nginx_server_name (from synapse_server_name) is '[2001:db8::1]', an IP address"]),
        ({**ACME, "synapse_server_name": "example.org", "nginx_server_name": "localhost"},
         ["nginx_server_name is 'localhost', not a DNS name with a domain"]),
        ({**ACME, "synapse_server_name": "example.org", "nginx_server_name": 5},
         ["nginx_server_name is 5;"]),
        ({**ACME, "synapse_server_name": "example.org", "nginx_server_aliases": "example.org"},
         ["nginx_server_aliases is a string, 'example.org'; give a list"]),
        ({**ACME, "synapse_server_name": "example.org", "nginx_server_aliases": ["ok.example.org", "bad_name.org"]},
         ["nginx_server_aliases[1] is 'bad_name.org', not a DNS name"]),
        ({**ACME, "synapse_server_name": "example.org", "nginx_acme_directory_url": "acme-v02.api.letsencrypt.org"},
         ["nginx_acme_directory_url is 'acme-v02.api.letsencrypt.org'; give the ACME server's directory URL over https"]),
        ({**ACME, "synapse_server_name": "example.org", "nginx_acme_directory_url": "https://ca.example.org/dir x"},
         ["nginx_acme_directory_url is 'https://ca.example.org/dir x'"]),
        ({**ACME, "synapse_server_name": "example.org", "nginx_acme_email": "admin@localhost"},
         ["nginx_acme_email is 'admin@localhost', not an e-mail address"]),
        ({**ACME, "synapse_server_name": "example.org", "nginx_acme_email": ["admin@example.org"]},
         ["nginx_acme_email is ['admin@example.org'], not an e-mail address"]),
        ({**ACME, "synapse_server_name": "example.org", "nginx_acme_ca_bundle": "/etc/ssl/my ca.pem"},
         ["nginx_acme_ca_bundle is '/etc/ssl/my ca.pem'; give the absolute path"]),
        ({**ACME, "synapse_server_name": "example.org", "nginx_http_port": "0"},
         ["nginx_http_port is '0' (off), but nginx_acme_enabled needs nginx's plain-HTTP server"]),
    ],
)  # fmt: skip
def test_acme_settings_refused(values, matches):
    found = si.acme_problems(values)
    # One message per problem; the fragments of one problem may sit in one message.
    assert 1 <= len(found) <= len(matches), found
    for match in matches:
        assert any(match in message for message in found), (match, found)


def test_every_acme_problem_is_named():
    found = si.acme_problems(
        {**ACME, "synapse_server_name": "10.0.0.1", "nginx_tls_certificate_key": "/k", "nginx_http_port": 0}
    )
    assert len(found) == 3, found
    assert "nginx_tls_certificate_key is set ('/k')" in found[0]
    assert "'10.0.0.1', an IP address" in found[1]
    assert "nginx_http_port is 0" in found[2]


def test_acme_settings_are_checked_on_nginx_hosts_only():
    groups = {"synapse_main": ["app1"], "synapse_workers": ["app1"], "nginx": ["edge"]}
    found = problems(groups, nginx_acme_enabled=True, synapse_public_host="10.0.0.9")
    assert found == [
        "on edge: nginx_server_name (from synapse_public_host) is '10.0.0.9', an IP address, but ACME "
        "certificates (certbot's HTTP challenge) name DNS names only; set synapse_public_host (or "
        "nginx_server_name) to a DNS name that points at the nginx host, or set nginx_acme_enabled to false."
    ]
    # The same values through the first play's filter, host by host.
    host_check = FilterModule().filters()["synapse_input_problems"]
    values = {**GOOD, "nginx_acme_enabled": True, "synapse_public_host": "10.0.0.9"}
    assert host_check(groups, {}, host="app1", values=values) == []
    assert "is '10.0.0.9', an IP address" in host_check(groups, {}, host="edge", values=values)[0]
