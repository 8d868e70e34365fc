"""Bad input fails in site.yml's first play, before Ansible connects to any host.

Every case runs the real playbooks/site.yml against an inventory whose hosts
cannot be reached (addresses in 192.0.2.0/24, TEST-NET-1, over ssh). A case
passes only when the run fails, names the bad value and the fix, and shows no
sign of a connection attempt; the good cases prove that such a run does reach
the connection attempt, so the absence of one means something.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from signedjson.key import encode_signing_key_base64, generate_signing_key

from conftest import COLLECTIONS, ROOT

PLAYBOOK = ROOT / "playbooks" / "site.yml"
# Signs that Ansible tried to reach a host.
CONNECTION_SIGNS = ("UNREACHABLE", "Failed to connect", "ssh:")
# The play after the checks: it must never start for a bad case.
FIRST_HOST_PLAY = "PLAY [Gather the facts the roles read, once per host]"
PARALLEL = 4

BASE_INVENTORY = {
    "all": {
        "vars": {
            "ansible_connection": "ssh",
            "ansible_user": "root",
            "ansible_ssh_common_args": "-o ConnectTimeout=3 -o BatchMode=yes -o StrictHostKeyChecking=no",
            "synapse_server_name": "example.org",
            "synapse_public_host": "matrix.example.org",
            "synapse_database_password": "db-Passw0rd",
            "synapse_redis_password": "redis-Passw0rd",
        },
        "hosts": {
            "app1": {"ansible_host": "192.0.2.1"},
            "app2": {"ansible_host": "192.0.2.2"},
        },
        "children": {
            "synapse_main": {"hosts": {"app1": {}}},
            "synapse_workers": {"hosts": {"app1": {}, "app2": {}}},
            "nginx": {"hosts": {"app1": {}}},
            "postgres": {"hosts": {"app1": {}}},
            "redis": {"hosts": {"app1": {}}},
        },
    }
}


def _unset(name):
    def change(inventory):
        del inventory["all"]["vars"][name]

    return change


def _host(host, **values):
    def change(inventory):
        inventory["all"]["hosts"].setdefault(host, {}).update(values)

    return change


def _in_group(group, host, **values):
    def change(inventory):
        inventory["all"]["hosts"].setdefault(host, {"ansible_host": "192.0.2.9"}).update(values)
        inventory["all"]["children"][group]["hosts"][host] = {}

    return change


def _worker(**entry):
    return {"synapse_workers": [{"name": "sync", "types": ["synchrotron"], **entry}]}


def _nginx_by_name_only(inventory):
    """nginx alone on a host the inventory knows by name only."""
    inventory["all"]["hosts"]["proxy1"] = {}
    inventory["all"]["children"]["nginx"]["hosts"] = {"proxy1": {}}


ON_APP2 = _worker(hosts=["app2"])
LONG_DIR = "/run/" + "d" * 80
# A signing key as Synapse writes it, and its secret part.
KEY = "ed25519 a_TeSt " + encode_signing_key_base64(generate_signing_key("a_TeSt"))
SEED = KEY.split()[2]
KEY_FORM = "give the key in the form 'ed25519 <key version> <base64 key>'"
SECRET_FIX = "remove the variable to have the role generate one once"

# (id, extra vars, inventory change or None, fragments the output must hold,
#  strings it must not hold). Each fragment names the value or the fix.
CASES = [
    # synapse_server_name, in the forms Synapse accepts (without a port)
    ("server-name-unset", {}, _unset("synapse_server_name"),
     ["synapse_server_name is not set", "part after ':' in user IDs"], []),
    ("server-name-empty", {"synapse_server_name": ""}, None,
     ["synapse_server_name is empty", "set it to the Matrix server name"], []),
    ("server-name-blank", {"synapse_server_name": "ex ample.org"}, None,
     ["synapse_server_name 'ex ample.org' is not a host name Synapse accepts", "set it to a DNS name"], []),
    ("server-name-trailing-dot", {"synapse_server_name": "example.org."}, None,
     ["synapse_server_name 'example.org.' is not a host name", "such as example.org"], []),
    ("server-name-port", {"synapse_server_name": "example.org:8448"}, None,
     ["synapse_server_name 'example.org:8448' carries a port", "set it to 'example.org'"], []),
    ("server-name-bad-port", {"synapse_server_name": "example.org:99999"}, None,
     ["'example.org:99999' has '99999' as its port", "set it to a DNS name"], []),
    ("server-name-bare-ipv6", {"synapse_server_name": "2001:db8::1"}, None,
     ["'2001:db8::1' is an IPv6 address without brackets", "write it as [2001:db8::1]"], []),
    ("server-name-bad-brackets", {"synapse_server_name": "[example.org]"}, None,
     ["'[example.org]' is not an IPv6 address in brackets", "such as [2001:db8::1]"], []),
    ("server-name-number", {"synapse_server_name": 42}, None,
     ["synapse_server_name is a number, 42", "set it to a DNS name"], []),
    ("server-name-list", {"synapse_server_name": ["example.org"]}, None,
     ["synapse_server_name is a list, ['example.org']", "set it to a DNS name"], []),
    # synapse_public_host
    ("public-host-url", {"synapse_public_host": "https://matrix.example.org/"}, None,
     ["synapse_public_host 'https://matrix.example.org/' is not a bare host name", "without scheme, port or path"], []),
    ("public-host-port", {"synapse_public_host": "matrix.example.org:8443"}, None,
     ["synapse_public_host 'matrix.example.org:8443' is not a bare host name", "without scheme, port or path"], []),
    ("public-host-underscore", {"synapse_public_host": "matrix_1.example.org"}, None,
     ["synapse_public_host 'matrix_1.example.org' is not a host name Synapse accepts", "such as matrix.example.org"], []),
    ("public-host-empty", {"synapse_public_host": ""}, None,
     ["synapse_public_host is empty", "leave it unset"], []),
    # synapse_max_upload_size, in the form both Synapse and nginx read
    ("upload-lower-case", {"synapse_max_upload_size": "50m"}, None,
     ["synapse_max_upload_size '50m'", "upper-case suffixes: 50M"], []),
    ("upload-bytes-unit", {"synapse_max_upload_size": "50MB"}, None,
     ["synapse_max_upload_size '50MB'", "no 'B': 50M"], []),
    ("upload-tebibytes", {"synapse_max_upload_size": "1T"}, None,
     ["synapse_max_upload_size '1T' is not a size both Synapse and nginx read", "K, M or G"], []),
    ("upload-zero", {"synapse_max_upload_size": 0}, None,
     ["synapse_max_upload_size is 0", "give a number of bytes"], []),
    ("upload-boolean", {"synapse_max_upload_size": True}, None,
     ["synapse_max_upload_size is a boolean, True", "e.g. 50M"], []),
    ("upload-fraction", {"synapse_max_upload_size": "1.5G"}, None,
     ["synapse_max_upload_size '1.5G'", "e.g. 50M"], []),
    # passwords: named, never shown
    ("db-password-unset", {}, _unset("synapse_database_password"),
     ["synapse_database_password is not set", "ansible.builtin.password lookup"], []),
    ("db-password-empty", {"synapse_database_password": ""}, None,
     ["synapse_database_password is empty", "printable characters"], []),
    ("db-password-newline", {"synapse_database_password": "hunter2\nxyz"}, None,
     ["synapse_database_password contains a control character (code 10) at position 8", "printable characters"],
     ["hunter2"]),
    ("db-password-number", {"synapse_database_password": 31337}, None,
     ["synapse_database_password is a number, not a string", "quote it in YAML"], ["31337"]),
    ("redis-password-delete", {"synapse_redis_password": "open\x7fsesame"}, None,
     ["synapse_redis_password contains a control character (code 127) at position 5", "printable characters"],
     ["sesame"]),
    ("redis-password-list", {"synapse_redis_password": ["abc"]}, None,
     ["synapse_redis_password is a list, not a string", "quote it in YAML"], ["abc"]),
    ("redis-password-needed", {**ON_APP2, "synapse_redis_password": ""}, None,
     ["synapse_redis_password is empty", "Redis on app1 listens on TCP and needs a password"], []),
    # addresses: IP addresses, never wildcards
    ("address-wildcard-v4", {}, _host("app2", synapse_address="0.0.0.0"),
     ["synapse_address of host app2 is '0.0.0.0', a wildcard address", "other hosts reach app2 at"], []),
    ("address-wildcard-v6", {}, _host("app2", synapse_address="::"),
     ["synapse_address of host app2 is '::', a wildcard address", "other hosts reach app2 at"], []),
    ("address-name", {}, _host("app2", synapse_address="app2.example.org"),
     ["synapse_address of host app2 is 'app2.example.org', not an IP address", "other hosts reach app2 at"], []),
    ("address-upper-case-v6", {}, _host("app2", synapse_address="2001:DB8::2"),
     ["synapse_address of host app2 is '2001:DB8::2'", "write it as '2001:db8::2'"], []),
    ("address-from-ansible-host", ON_APP2, _host("app2", ansible_host="app2.example.invalid"),
     ["host app2 is reached over TCP at 'app2.example.invalid' (its ansible_host)", "set synapse_address for app2"],
     []),
    # group sizes
    ("two-main-hosts", {}, _in_group("synapse_main", "app2"),
     ["group 'synapse_main' has 2 hosts (app1, app2)", "keep one host there"], []),
    ("two-postgres-hosts", {}, _in_group("postgres", "app2"),
     ["group 'postgres' has 2 hosts (app1, app2)", "list one host in it"], []),
    # synapse_socket_dir, and the UNIX limit on socket paths
    ("socket-dir-relative", {"synapse_socket_dir": "run/matrix-synapse"}, None,
     ["synapse_socket_dir is 'run/matrix-synapse'", "give an absolute path"], []),
    ("socket-dir-shared", {"synapse_socket_dir": "/run"}, None,
     ["synapse_socket_dir '/run' is a directory other software uses", "give Synapse its own"], []),
    ("socket-dir-blank", {"synapse_socket_dir": "/run/matrix synapse"}, None,
     ["synapse_socket_dir '/run/matrix synapse' is not a plain absolute path", "such as /run/matrix-synapse"], []),
    ("socket-dir-too-long", {"synapse_socket_dir": LONG_DIR + "/more"}, None,
     [f"synapse_socket_dir '{LONG_DIR}/more' is too long for UNIX sockets", "give a shorter directory"], []),
    ("socket-path-too-long", {"synapse_socket_dir": LONG_DIR, **_worker(name="s" * 40)}, None,
     [f"the socket {LONG_DIR}/{'s' * 40}.sock of {'s' * 40} has 131 bytes", "shorten synapse_socket_dir"], []),
    # ports, names and sizes of PostgreSQL, Redis and Synapse
    ("database-port-range", {"synapse_database_port": 70000}, None,
     ["synapse_database_port is 70000", "TCP port from 1 to 65535"], []),
    ("database-port-boolean", {"synapse_database_port": True}, None,
     ["synapse_database_port is True", "TCP port from 1 to 65535"], []),
    ("redis-port-word", {"synapse_redis_port": "six"}, None,
     ["synapse_redis_port is 'six'", "TCP port from 1 to 65535"], []),
    ("database-name-case", {"synapse_database_name": "Synapse-DB"}, None,
     ["synapse_database_name is 'Synapse-DB'", "lower-case SQL identifier"], []),
    ("database-name-reserved", {"synapse_database_name": "template1"}, None,
     ["synapse_database_name is 'template1', one of PostgreSQL's own", "name Synapse's database otherwise"], []),
    ("database-user-number", {"synapse_database_user": 7}, None,
     ["synapse_database_user is 7", "lower-case SQL identifier"], []),
    ("pool-max-zero", {"synapse_database_pool_max": 0}, None,
     ["synapse_database_pool_max is 0", "whole number of 1 or more"], []),
    ("pool-max-word", {"synapse_database_pool_max": "ten"}, None,
     ["synapse_database_pool_max is 'ten'", "whole number of 1 or more"], []),
    ("system-user-root", {"synapse_system_user": "root"}, None,
     ["synapse_system_user is 'root'", "e.g. matrix-synapse"], []),
    ("system-user-blank", {"synapse_system_user": "matrix synapse"}, None,
     ["synapse_system_user is 'matrix synapse'", "e.g. matrix-synapse"], []),
    ("media-host-unknown", {"synapse_media_host": "app9"}, None,
     ["synapse_media_host is 'app9'", "one of app1, app2"], []),
    ("media-host-list", {"synapse_media_host": ["app1"]}, None,
     ["synapse_media_host is ['app1']", "one of app1, app2"], []),
    # presets and the shape of the worker list
    ("preset-unknown", {"synapse_worker_preset": "huge"}, None,
     ["synapse_worker_preset is 'huge'", "use one of: "], []),
    ("preset-list", {"synapse_worker_preset": ["monolith"]}, None,
     ["synapse_worker_preset is ['monolith']", "use one of: "], []),
    ("workers-string", {"synapse_workers": "sync"}, None,
     ["synapse_workers is a string, 'sync'", "give a list of workers"], []),
    ("workers-mapping", {"synapse_workers": {"name": "sync"}}, None,
     ["synapse_workers is a mapping, {'name': 'sync'}", "give a list of workers"], []),
    ("workers-nested-list", {"synapse_workers": [[{"name": "sync", "types": ["synchrotron"]}]]}, None,
     ["synapse_workers[0] is a list, [{'name': 'sync', 'types': ['synchrotron']}]", "expected a mapping such as"],
     []),
    ("worker-types-nested", {"synapse_workers": [{"name": "sync", "types": [["synchrotron"]]}]}, None,
     ["worker 'sync' (synapse_workers[0]) lists ['synchrotron'], a list, among its types",
      "each type is a name such as synchrotron"], []),
    ("worker-types-mapping", {"synapse_workers": [{"name": "sync", "types": {"synchrotron": 1}}]}, None,
     ["needs 'types', a non-empty list of worker types (got {'synchrotron': 1})", "Known types:"], []),
    ("worker-type-unknown", _worker(types=["synchrotorn"]), None,
     ["worker 'sync' (synapse_workers[0]) has unknown type 'synchrotorn'", "Known types:"], []),
    ("worker-count-string", _worker(count="2"), None,
     ["worker 'sync' (synapse_workers[0]) has count '2' (a string)", "written without quotes"], []),
    ("worker-count-boolean", _worker(count=True), None,
     ["has count True (a boolean)", "whole number of 1 or more"], []),
    ("worker-count-negative", _worker(count=-1), None,
     ["has count -1 (a number)", "whole number of 1 or more"], []),
    ("worker-unknown-key", _worker(replicas=2), None,
     ["worker 'sync' (synapse_workers[0]) has unknown key(s) replicas", "the keys are name, types"], []),
    ("worker-name-number", {"synapse_workers": [{"name": 5, "types": ["synchrotron"]}]}, None,
     ["needs a name matching [a-z][a-z0-9_]* (got 5)", "rename it"], []),
    ("worker-name-reserved", _worker(name="main"), None,
     ["the name 'main' is reserved for Synapse's main process", "choose another name"], []),
    ("worker-host-unknown", _worker(hosts=["app9"]), None,
     ["is placed on 'app9', which is not in the inventory", "fix the name or add the host"], []),
    ("worker-hosts-nested", _worker(hosts=[["app1"]]), None,
     ["lists ['app1'], a list, among its hosts", "each is an inventory host name"], []),
    ("worker-hosts-mapping", _worker(hosts={"app1": 1}), None,
     ["has 'hosts' {'app1': 1}", "non-empty list of inventory hosts"], []),
    ("worker-on-proxy-host", _worker(hosts=["edge"]), _in_group("nginx", "edge"),
     ["workers sync are placed on edge, which is not in the inventory group 'synapse_workers'",
      "add edge there"], []),
    ("worker-port-string", _worker(port="8500"), None,
     ["has port '8500'", "written without quotes"], []),
    ("worker-port-range", _worker(port=65535, count=2), None,
     ["has port 65535", "TCP port from 1 to 65533"], []),
    # nginx's admin API: the removed switch, and an allow-list nginx reads
    ("admin-api-switch-removed", {"nginx_expose_admin_api": False}, None,
     ["nginx_expose_admin_api is set (False) but no longer read", "nginx_admin_api_allowed_clients replaced it",
      "Remove nginx_expose_admin_api and set nginx_admin_api_allowed_clients"], []),
    ("admin-api-switch-on-proxy-host", {}, _host("app1", nginx_expose_admin_api=True),
     ["nginx_expose_admin_api is set (True)", "set nginx_admin_api_allowed_clients to those addresses"], []),
    ("admin-clients-string", {"nginx_admin_api_allowed_clients": "192.0.2.7"}, None,
     ["nginx_admin_api_allowed_clients is a string, '192.0.2.7'", "list IP addresses or CIDR networks"], []),
    ("admin-clients-name", {"nginx_admin_api_allowed_clients": ["admin.example.org"]}, None,
     ["nginx_admin_api_allowed_clients[0] is 'admin.example.org', not an IP address or CIDR network",
      "list IP addresses or CIDR networks"], []),
    ("admin-clients-netmask", {"nginx_admin_api_allowed_clients": ["192.0.2.0/255.255.255.0"]}, None,
     ["nginx_admin_api_allowed_clients[0] is '192.0.2.0/255.255.255.0', not an IP address or CIDR network",
      "e.g. [203.0.113.7, 192.0.2.0/24"], []),
    ("admin-clients-host-bits", {"nginx_admin_api_allowed_clients": ["203.0.113.7", "2001:db8::1/64"]}, None,
     ["nginx_admin_api_allowed_clients[1] is '2001:db8::1/64'",
      "write the network as '2001:db8::/64', or the one address as '2001:db8::1'"], []),
    ("admin-clients-number", {"nginx_admin_api_allowed_clients": [10]}, None,
     ["nginx_admin_api_allowed_clients[0] is a number, 10", "quote it in YAML"], []),
    # TLS over ACME: exclusive of given files, DNS names only, a challenge on port 80
    ("acme-flag-word", {"nginx_acme_enabled": "sometimes"}, None,
     ["nginx_acme_enabled is 'sometimes'", "set it to true"], []),
    ("acme-and-own-files", {"nginx_acme_enabled": True, "nginx_tls_certificate": "/etc/ssl/m.pem",
                            "nginx_tls_certificate_key": "/etc/ssl/m.key"}, None,
     ["nginx_acme_enabled is on and nginx_tls_certificate and nginx_tls_certificate_key are set",
      "'/etc/ssl/m.pem'", "the TLS modes exclude each other",
      "Unset nginx_tls_certificate and nginx_tls_certificate_key"], []),
    ("acme-ip-server-name", {"nginx_acme_enabled": True, "synapse_public_host": "192.0.2.1"}, None,
     ["nginx_server_name (from synapse_public_host) is '192.0.2.1', an IP address",
      "set synapse_public_host (or nginx_server_name) to a DNS name"], []),
    ("acme-ip-nginx-name", {"nginx_acme_enabled": "true", "nginx_server_name": "[2001:db8::1]"}, None,
     ["nginx_server_name is '[2001:db8::1]', an IP address", "to a DNS name that points at the nginx host"], []),
    ("acme-wildcard-alias", {"nginx_acme_enabled": True, "nginx_server_aliases": ["*.example.org"]}, None,
     ["nginx_server_aliases[0] is '*.example.org', not a DNS name", "no wildcards"], []),
    ("acme-directory-http", {"nginx_acme_enabled": True, "nginx_acme_directory_url": "http://acme.example.org/dir"},
     None, ["nginx_acme_directory_url is 'http://acme.example.org/dir'", "over https",
            "https://acme-v02.api.letsencrypt.org/directory"], []),
    ("acme-email", {"nginx_acme_enabled": True, "nginx_acme_email": "admin at example.org"}, None,
     ["nginx_acme_email is 'admin at example.org', not an e-mail address", "leave it empty"], []),
    ("acme-ca-bundle-relative", {"nginx_acme_enabled": True, "nginx_acme_ca_bundle": "pebble.pem"}, None,
     ["nginx_acme_ca_bundle is 'pebble.pem'", "absolute path on the nginx host"], []),
    ("acme-no-plain-http", {"nginx_acme_enabled": True, "nginx_http_port": 0}, None,
     ["nginx_http_port is 0 (off), but nginx_acme_enabled needs", "Set nginx_http_port to 80"], []),
    # Metrics: bound to an IP address of the host, never a wildcard; an allow-list of addresses
    ("metrics-address-wildcard-v4", {}, _host("app2", synapse_metrics_address="0.0.0.0"),
     ["synapse_metrics_address of host app2 is '0.0.0.0', a wildcard address",
      "set it to 127.0.0.1 (the default: only app2 itself can scrape)", "such as its synapse_address"], []),
    ("metrics-address-wildcard-v6", {"synapse_metrics_enabled": True}, _host("app1", synapse_metrics_address="::"),
     ["synapse_metrics_address of host app1 is '::', a wildcard address", "set it to 127.0.0.1"], []),
    ("metrics-address-name", {}, _host("app2", synapse_metrics_address="app2.example.org"),
     ["synapse_metrics_address of host app2 is 'app2.example.org', not an IP address",
      "an address of app2 that Prometheus reaches"], []),
    ("metrics-address-network", {}, _host("app1", synapse_metrics_address="192.0.2.0/24"),
     ["synapse_metrics_address of host app1 is '192.0.2.0/24', not an IP address", "set it to 127.0.0.1"], []),
    ("metrics-address-list", {"synapse_metrics_address": ["192.0.2.1"]}, None,
     ["synapse_metrics_address of host app1 is a list, ['192.0.2.1']", "set it to 127.0.0.1"], []),
    ("metrics-clients-string", {"synapse_metrics_allowed_clients": "192.0.2.50"}, None,
     ["synapse_metrics_allowed_clients is a string, '192.0.2.50'",
      "list the IP addresses or CIDR networks Prometheus scrapes from"], []),
    ("metrics-clients-mapping", {"synapse_metrics_allowed_clients": {"prometheus": "192.0.2.50"}}, None,
     ["synapse_metrics_allowed_clients is a mapping, {'prometheus': '192.0.2.50'}",
      "list the IP addresses or CIDR networks Prometheus scrapes from"], []),
    ("metrics-clients-name", {"synapse_metrics_enabled": True, "synapse_metrics_allowed_clients": ["prometheus.example.org"]},
     None, ["synapse_metrics_allowed_clients[0] is 'prometheus.example.org', not an IP address or CIDR network",
            "e.g. [10.0.0.5, 2001:db8::5]"], []),
    ("metrics-clients-host-bits", {"synapse_metrics_allowed_clients": ["192.0.2.50/24"]}, None,
     ["synapse_metrics_allowed_clients[0] is '192.0.2.50/24', whose address has bits set beyond the prefix",
      "write the network as '192.0.2.0/24'"], []),
    # The firewall: a flag, and addresses nftables can match
    ("firewall-flag-word", {"synapse_firewall_enabled": "maybe"}, None,
     ["synapse_firewall_enabled of host app1 is 'maybe'", "set it to true or false"], []),
    # The signing key and secrets an operator supplies: their form, never their values
    ("signing-key-seed-only", {"synapse_main_signing_key": SEED}, None,
     ["synapse_main_signing_key has 1 field(s) separated by blanks, not 3 (its value is not shown)", KEY_FORM],
     [SEED]),
    ("signing-key-algorithm", {"synapse_main_signing_key": KEY.replace("ed25519", "ed448")}, None,
     ["synapse_main_signing_key does not start with the algorithm ed25519", KEY_FORM], [SEED]),
    ("signing-key-short", {"synapse_main_signing_key": KEY[:-8]}, None,
     ["synapse_main_signing_key has a key of 26 bytes, not 32", KEY_FORM], [SEED[:-8]]),
    ("signing-key-two-keys", {"synapse_main_signing_key": KEY + "\n" + KEY}, None,
     ["synapse_main_signing_key has 2 lines, not one key", KEY_FORM], [SEED]),
    ("signing-key-empty", {"synapse_main_signing_key": ""}, None,
     ["synapse_main_signing_key is empty", "remove the variable to have the role generate a key once"], []),
    ("signing-key-mapping", {"synapse_main_signing_key": {"key": SEED}}, None,
     ["synapse_main_signing_key is a mapping, not a string", KEY_FORM], [SEED]),
    ("secret-empty", {"synapse_main_form_secret": ""}, None,
     ["synapse_main_form_secret is empty", SECRET_FIX], []),
    ("secret-blank", {"synapse_main_worker_replication_secret": "  "}, None,
     ["synapse_main_worker_replication_secret is blank", SECRET_FIX], []),
    ("secret-newline-inside", {"synapse_main_registration_shared_secret": "open\nsesame"}, None,
     ["synapse_main_registration_shared_secret contains a control character (code 10) at position 5", SECRET_FIX],
     ["sesame"]),
    ("secret-number", {"synapse_main_macaroon_secret_key": 8675309}, None,
     ["synapse_main_macaroon_secret_key is a number, not a string", "quote it in YAML"], ["8675309"]),
    ("allow-new-key-word", {"synapse_main_allow_new_signing_key": "maybe"}, None,
     ["synapse_main_allow_new_signing_key is 'maybe'", "set it to true for the one run"], []),
    ("firewall-admits-a-name", {"synapse_firewall_enabled": True}, _nginx_by_name_only,
     ["the firewall of app1 (synapse_firewall_enabled) must admit the host reached at 'proxy1'",
      "8008 (http of main)", "give that host synapse_address (or ansible_host) with its IP address"], []),
    # Every Synapse host installs the same release
    ("release-differs-between-hosts", ON_APP2, _host("app2", synapse_main_version="1.162.0"),
     ["synapse_main_version differs between the Synapse hosts", "app1: role default", "app2: 1.162.0",
      "Set it once for all of them, e.g. in group_vars/all.yml"], []),
]

def _templated_from_other_hosts(inventory):
    """Shared values rendered from another host's variables, as the lab inventory does."""
    inventory["all"]["vars"]["synapse_server_name"] = "{{ hostvars[groups['synapse_main'][0]]['ansible_host'] }}"
    inventory["all"]["vars"]["synapse_public_host"] = "{{ synapse_server_name }}"


GOOD = [
    ("good-one-host", {}, None),
    ("good-spanning-hosts", ON_APP2, None),
    ("good-templated-from-other-hosts", ON_APP2, _templated_from_other_hosts),
    ("good-admin-api-allow-list", {"nginx_admin_api_allowed_clients": ["192.0.2.0/24", "2001:db8::/64"]}, None),
    # Metrics on each host's own address, admitted through the firewall from a Prometheus network.
    ("good-metrics-on-host-addresses", {**ON_APP2, "synapse_metrics_enabled": True, "synapse_firewall_enabled": True,
                                        "synapse_metrics_allowed_clients": ["192.0.2.50", "198.51.100.0/24"]},
     _host("app2", synapse_metrics_address="192.0.2.2")),
    ("good-supplied-secrets", {"synapse_main_signing_key": KEY + "\n", "synapse_main_allow_new_signing_key": True,
                               "synapse_main_macaroon_secret_key": "m" * 50, "synapse_main_form_secret": "f" * 50,
                               "synapse_main_registration_shared_secret": "r" * 50,
                               "synapse_main_worker_replication_secret": "w" * 50}, None),
    ("good-release-for-every-host", {**ON_APP2, "synapse_main_version": "1.163.1"}, None),
    # ACME with DNS names; the lab's address as the server name is an alias left out of the certificate.
    ("good-acme", {"nginx_acme_enabled": True, "nginx_acme_email": "admin@example.org",
                   "nginx_server_aliases": ["example.org", "192.0.2.1"]}, None),
    ("good-acme-off-with-an-address", {"nginx_acme_enabled": "false", "synapse_public_host": "192.0.2.1"}, None),
]


def _run(workdir, case_id, extra_vars, change):
    inventory = copy.deepcopy(BASE_INVENTORY)
    if change:
        change(inventory)
    case_dir = Path(workdir) / case_id
    case_dir.mkdir()
    (case_dir / "inventory.json").write_text(json.dumps(inventory))
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
    command = ["ansible-playbook", "-i", str(case_dir / "inventory.json"), str(PLAYBOOK), "-e",
               f"@{case_dir / 'extra.json'}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    output = result.stdout + result.stderr
    return result.returncode, output


@pytest.fixture(scope="module")
def results():
    """Every case's (return code, output), run a few at a time."""
    runs = [(c[0], c[1], c[2]) for c in CASES] + list(GOOD)
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(PARALLEL) as pool:
        futures = {case_id: pool.submit(_run, workdir, case_id, extra, change) for case_id, extra, change in runs}
        return {case_id: future.result() for case_id, future in futures.items()}


def _flat(text):
    """The output with line wrapping undone."""
    return re.sub(r"\s+", " ", text)


def test_there_are_enough_cases():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case_id", [g[0] for g in GOOD])
def test_a_good_inventory_reaches_the_hosts(results, case_id):
    # Proves the harness: valid input passes the first play, and the next
    # play's connection attempt shows in the output.
    returncode, output = results[case_id]
    assert returncode != 0, output
    assert FIRST_HOST_PLAY in output, output
    assert "UNREACHABLE" in output, output


@pytest.mark.parametrize(("case_id", "fragments", "secrets"), [(c[0], c[3], c[4]) for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_input_fails_before_connecting(results, case_id, fragments, secrets):
    returncode, output = results[case_id]
    flat = _flat(output)
    assert returncode != 0, output
    for fragment in fragments:
        assert fragment in flat, f"{fragment!r} missing from:\n{output}"
    for sign in CONNECTION_SIGNS:
        assert sign not in output, f"{sign!r}: Ansible tried to connect:\n{output}"
    assert FIRST_HOST_PLAY not in output, output
    assert "Traceback" not in output, output
    for secret in secrets:
        assert secret not in output, f"the secret {secret!r} shows in the output"
