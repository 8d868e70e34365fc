# -*- coding: utf-8 -*-
# Copyright: (c) polylith.synapse contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Check the collection's shared inventory variables before any host changes.

``input_problems`` reads every host's shared variables (synapse_server_name,
synapse_database_password, synapse_address, ...) from the inventory's
``groups`` and ``hostvars`` and returns one message per problem, each naming
the variable, the bad value and the fix. A password's value is never part of
a message: it says the password is empty, not a string, or where a control
character sits. The nginx role's input that nginx would misread or that the
collection no longer reads (the admin API's allow-list, removed variables) is
checked here too, so it fails before any host changes rather than in the last
play, and so are the synapse_main role's signing key and secrets when the
operator supplies them (their form, never their values), and, on nginx hosts,
its ACME settings (``acme_problems``, which the nginx role's preflight also
runs as the filter synapse_acme_problems). Given the derived deployment as well, it also checks what the
deployment asks of those variables (a Redis password once Redis listens on
TCP, IP addresses where processes meet over TCP, socket paths within the
UNIX limit, workers only on hosts the playbooks deploy them to).

It is plain Python over plain data, so the unit tests call it directly; the
role polylith.synapse._deployment runs it in the first play, on the
controller.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from ansible_collections.polylith.synapse.plugins.plugin_utils.signing_key import (
    SECRET_INPUTS,
    secret_problems,
)
from ansible_collections.polylith.synapse.plugins.plugin_utils.worker_presets import (
    PRESETS,
)

# The inventory groups the playbooks use, and the one that must hold one host.
GROUPS = ("synapse_main", "synapse_workers", "nginx", "postgres", "redis")
MAIN_GROUP = "synapse_main"
WORKERS_GROUP = "synapse_workers"

# Synapse's own approximation of RFC 1035 (synapse/util/stringutils.py).
SYNAPSE_HOST_RE = re.compile(r"\A[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*\Z")
# A size both Synapse (parse_size: K, M, G, T) and nginx (k, m, g in either
# case) read: digits with an optional upper-case K, M or G.
SIZE_RE = re.compile(r"\A[0-9]+[KMG]?\Z")
# Lower-case SQL identifiers that need no quoting (as the topology checks).
SQL_IDENTIFIER_RE = re.compile(r"\A[a-z_][a-z0-9_]{0,62}\Z")
# Debian's useradd accepts these names (NAME_REGEX), at most 32 characters.
USER_RE = re.compile(r"\A[a-z_][a-z0-9_-]{0,31}\Z")
# Characters a socket directory may hold: it is written into tmpfiles.d and
# systemd units, where blanks and quotes would split or change it.
PATH_RE = re.compile(r"\A(/[A-Za-z0-9._-]+)+\Z")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

# sun_path holds 108 bytes, the last one the terminating NUL.
UNIX_PATH_MAX = 107
# The longest socket name the main process uses in the socket directory.
MAIN_SOCKET_NAME = "/main-replication.sock"
# Directories other software owns: the role makes the socket directory its
# user's (tmpfiles.d), so it must be Synapse's own.
SHARED_DIRECTORIES = frozenset(
    {
        "/run", "/var/run", "/tmp", "/var/tmp", "/run/user", "/run/lock", "/run/systemd",
        "/var", "/var/lib", "/var/log", "/var/cache", "/etc", "/usr", "/usr/local",
        "/opt", "/srv", "/home", "/root", "/dev", "/proc", "/sys", "/boot", "/bin",
        "/sbin", "/lib", "/lib64", "/mnt", "/media", "/run/postgresql",
        "/var/run/postgresql", "/run/redis", "/var/run/redis", "/var/lib/postgresql",
    }
)  # fmt: skip

# Variables the collection no longer reads, each with what replaces it: a run
# that still sets one is refused, so no setting is silently ignored.
REMOVED_VARIABLES = {
    "nginx_expose_admin_api": (
        "nginx_admin_api_allowed_clients replaced it: the admin API is closed at nginx unless "
        "that list names the client addresses allowed to reach it. Remove nginx_expose_admin_api "
        "and set nginx_admin_api_allowed_clients to those addresses or networks, e.g. "
        "[203.0.113.7, 192.0.2.0/24, 2001:db8::/64], or leave it unset to keep the admin API closed."
    ),
}
ALLOWED_CLIENTS = "nginx_admin_api_allowed_clients"
ALLOWED_CLIENTS_FIX = (
    "list IP addresses or CIDR networks, IPv4 or IPv6, e.g. [203.0.113.7, 192.0.2.0/24, "
    "2001:db8::/64] ([] keeps the admin API closed)"
)
# What an address or network may be written with: nginx's geo and nftables
# read nothing else (no netmasks, no zone index such as %eth0).
CLIENT_RE = re.compile(r"\A[0-9A-Fa-f.:]+(?:/[0-9]{1,3})?\Z")

# Synapse's metrics listeners: where each host binds them (per host, loopback
# unless the operator names an address of the host Prometheus reaches), and
# who the optional firewall admits to their ports.
METRICS_ADDRESS = "synapse_metrics_address"
DEFAULT_METRICS_ADDRESS = "127.0.0.1"
METRICS_CLIENTS = "synapse_metrics_allowed_clients"
METRICS_CLIENTS_FIX = (
    "list the IP addresses or CIDR networks Prometheus scrapes from, IPv4 or IPv6, e.g. "
    "[10.0.0.5, 2001:db8::5] ([] admits no other host: only the host itself)"
)

# ACME (the nginx role's nginx_acme_* variables): Let's Encrypt's directory,
# named in messages, and what a contact address and a path on the host may be.
ACME_DEFAULT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
ACME_STAGING_DIRECTORY = "https://acme-staging-v02.api.letsencrypt.org/directory"
EMAIL_RE = re.compile(r"\A[^@\s\"',;]+@[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)+\Z")
URL_RE = re.compile(r"\Ahttps://[^/\s\"'?#]+(?:/[^\s\"'#]*)?\Z")
HOST_PATH_RE = re.compile(r"\A(/[A-Za-z0-9._+-]+)+\Z")
# What YAML and --extra-vars give for a switch.
TRUE_WORDS = ("true", "yes")
FALSE_WORDS = ("false", "no")

SERVER_NAME_FIX = (
    "set it to a DNS name such as example.org, an IPv4 address, or an IPv6 "
    "address in brackets such as [2001:db8::1]"
)


def kind(value) -> str:
    """A value's type in the operator's words (YAML's, not Python's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple, set)):
        return "list"
    return type(value).__name__


def _plain(value):
    """The value as plain Python data, for messages."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    return str(value)


def show(value) -> str:
    """A value as a message quotes it: repr of its plain form."""
    return repr(_plain(value))


def _whole_number(value):
    """An int from an int or a string of digits; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _ip(value):
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _host_problem(name, value, what):
    """Why ``value`` is not a host Synapse accepts (a name, IPv4 or [IPv6]), or None."""
    if value.startswith("[") or value.endswith("]"):
        inner = value[1:-1] if value.startswith("[") and value.endswith("]") else None
        if inner is None:
            return f"{name} {show(value)} has unmatched brackets; {what}."
        address = _ip(inner)
        if not isinstance(address, ipaddress.IPv6Address):
            return f"{name} {show(value)} is not an IPv6 address in brackets; {what}."
        return None
    if _ip(value) is not None and ":" in value:
        return f"{name} {show(value)} is an IPv6 address without brackets; write it as [{value}]."
    if not SYNAPSE_HOST_RE.match(value):
        return (
            f"{name} {show(value)} is not a host name Synapse accepts (letters, digits, "
            f"'-' and dots between labels, nothing else); {what}."
        )
    return None


def check_server_name(value):
    """synapse_server_name: required, Synapse's forms, without a port."""
    name = "synapse_server_name"
    if value is None or value == "":
        return (
            f"{name} is {'empty' if value == '' else 'not set'}; set it to the Matrix server "
            "name, the part after ':' in user IDs (e.g. example.org)."
        )
    if not isinstance(value, str):
        return f"{name} is a {kind(value)}, {show(value)}; {SERVER_NAME_FIX}."
    host, port = value, None
    if not value.endswith("]") and ":" in value and _ip(value) is None:
        host, port = value.rsplit(":", 1)
    problem = _host_problem(name, host, SERVER_NAME_FIX)
    if problem:
        return problem if port is None else problem.replace(show(host), show(value), 1)
    if port is not None:
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            return f"{name} {show(value)} has {show(port)} as its port, not a TCP port; {SERVER_NAME_FIX}."
        return (
            f"{name} {show(value)} carries a port. Synapse accepts that, but this collection "
            "serves the server name through nginx and announces the federation port in "
            f"/.well-known/matrix/server: set it to {show(host)} (nginx_https_port and "
            "nginx_federation_port choose the ports)."
        )
    return None


def check_public_host(value):
    """synapse_public_host: optional, a host without scheme, port or path."""
    name = "synapse_public_host"
    fix = (
        "set it to the host name clients use, such as matrix.example.org, without "
        "scheme, port or path (or leave it unset to use synapse_server_name)"
    )
    if value is None:
        return None
    if not isinstance(value, str) or value == "":
        return f"{name} is {'empty' if value == '' else 'a ' + kind(value) + ', ' + show(value)}; {fix}."
    if "/" in value or (":" in value and not value.startswith("[") and _ip(value) is None):
        return f"{name} {show(value)} is not a bare host name; {fix}."
    return _host_problem(name, value, fix)


def check_upload_size(value):
    """synapse_max_upload_size: a size Synapse and nginx both read."""
    name = "synapse_max_upload_size"
    fix = (
        "give a number of bytes, or a number with K, M or G (upper case, which both Synapse "
        "and nginx read), e.g. 50M"
    )
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return f"{name} is a {kind(value)}, {show(value)}; {fix}."
    if isinstance(value, int):
        return None if value >= 1 else f"{name} is {value}; {fix}."
    if not SIZE_RE.match(value):
        hint = ""
        if re.match(r"\A[0-9]+[kmg]\Z", value):
            hint = f" (Synapse reads only upper-case suffixes: {value.upper()})"
        elif re.match(r"\A[0-9]+[KMGkmg][Bb]\Z", value):
            hint = f" (no 'B': {value[:-1].upper()})"
        return f"{name} {show(value)} is not a size both Synapse and nginx read{hint}; {fix}."
    if int(re.sub(r"[KMG]\Z", "", value)) < 1:
        return f"{name} {show(value)} allows no upload at all; {fix}."
    return None


def check_secret(name, value, required):
    """A password: a non-empty string without control characters; its value never shown."""
    fix = "set it to a string of printable characters"
    if value is None or value == "":
        if not required:
            return None
        state = "empty" if value == "" else "not set"
        return f"{name} is {state}; {fix}, e.g. generated with the ansible.builtin.password lookup."
    if not isinstance(value, str):
        return (
            f"{name} is a {kind(value)}, not a string (its value is not shown); quote it in "
            f"YAML, or {fix}."
        )
    match = CONTROL_RE.search(value)
    if match:
        return (
            f"{name} contains a control character (code {ord(match.group())}) at position "
            f"{match.start() + 1} (its value is not shown); {fix}."
        )
    return None


def check_port(name, value, default):
    if value is None:
        return None
    port = _whole_number(value)
    if port is None or not 1 <= port <= 65535:
        return f"{name} is {show(value)}; give a TCP port from 1 to 65535 (default {default})."
    return None


def check_identifier(name, value):
    if value is None:
        return None
    if not isinstance(value, str) or not SQL_IDENTIFIER_RE.match(value):
        return (
            f"{name} is {show(value)}; give a lower-case SQL identifier (letters, digits and _, "
            "not starting with a digit, at most 63 characters), e.g. synapse."
        )
    if name == "synapse_database_name" and value in ("postgres", "template0", "template1"):
        return f"{name} is {show(value)}, one of PostgreSQL's own databases; name Synapse's database otherwise, e.g. synapse."
    return None


def check_pool_max(value):
    if value is None:
        return None
    number = _whole_number(value)
    if number is None or number < 1:
        return (
            f"synapse_database_pool_max is {show(value)}; give a whole number of 1 or more "
            "(the connections one Synapse process may hold, default 10)."
        )
    return None


def check_jemalloc(value):
    if value is None or _switch(value) is not None:
        return None
    return (
        f"synapse_jemalloc is {show(value)}; set it to true (every Synapse process runs with "
        "jemalloc, the default) or false."
    )


def check_system_user(value):
    if value is None:
        return None
    if not isinstance(value, str) or not USER_RE.match(value) or value == "root":
        return (
            f"synapse_system_user is {show(value)}; give a system user name of lower-case "
            "letters, digits, _ and - (at most 32 characters, not root), e.g. matrix-synapse."
        )
    return None


def check_socket_dir(value):
    name = "synapse_socket_dir"
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        return f"{name} is {show(value)}; give an absolute path such as /run/matrix-synapse."
    path = value.rstrip("/") or "/"
    if path == "/" or not PATH_RE.match(path) or any(p in (".", "..") for p in path.split("/")):
        return (
            f"{name} {show(value)} is not a plain absolute path (letters, digits, '.', '_' and "
            "'-' between slashes, no '.' or '..' parts); give one such as /run/matrix-synapse."
        )
    if path in SHARED_DIRECTORIES:
        return (
            f"{name} {show(value)} is a directory other software uses, and the role gives it "
            "to Synapse's user; give Synapse its own, such as /run/matrix-synapse."
        )
    longest = len((path + MAIN_SOCKET_NAME).encode())
    if longest > UNIX_PATH_MAX:
        return (
            f"{name} {show(value)} is too long for UNIX sockets: {path}{MAIN_SOCKET_NAME} has "
            f"{longest} bytes, the limit is {UNIX_PATH_MAX}; give a shorter directory such as "
            "/run/matrix-synapse."
        )
    return None


def check_preset(value):
    if value is None:
        return None
    if not isinstance(value, str) or value not in PRESETS:
        return (
            f"synapse_worker_preset is {show(value)}; use one of: {', '.join(sorted(PRESETS))}, "
            "or set synapse_workers to your own list."
        )
    return None


def check_workers_type(value):
    if value is None or isinstance(value, (list, tuple)):
        return None
    return (
        f"synapse_workers is a {kind(value)}, {show(value)}; give a list of workers such as "
        "[{name: sync, types: [synchrotron]}], or leave it unset to use synapse_worker_preset "
        "(see the README's 'Describing workers')."
    )


def check_media_host(value, hosts):
    if value is None:
        return None
    if not isinstance(value, str) or value not in hosts:
        return (
            f"synapse_media_host is {show(value)}; name the inventory host that holds the media "
            f"store, one of {', '.join(sorted(hosts))}, or leave it unset (the main host)."
        )
    return None


def check_address(host, value):
    """synapse_address of one host: an IP address in canonical form, not a wildcard."""
    if value is None or value == "":
        return None
    name = f"synapse_address of host {host}"
    fix = f"set it to the IP address other hosts reach {host} at, e.g. 10.0.0.2"
    if not isinstance(value, str):
        return f"{name} is a {kind(value)}, {show(value)}; {fix}."
    address = _ip(value)
    if address is None:
        return f"{name} is {show(value)}, not an IP address; {fix}."
    if address.is_unspecified:
        return f"{name} is {show(value)}, a wildcard address, which no host can be reached at; {fix}."
    if str(address) != value:
        return f"{name} is {show(value)}; write it as {str(address)!r} (the form the hosts report)."
    return None


def check_removed(name, value):
    """A variable the collection no longer reads: refused whenever it is set."""
    if value is None:
        return None
    return f"{name} is set ({show(value)}) but no longer read; {REMOVED_VARIABLES[name]}"


def _client_problem(entry):
    """Why one entry of the admin API's allow-list is not an address or network nginx reads, or None."""
    if entry is None:
        return "is empty (null)"
    if not isinstance(entry, str):
        quote = " (quote it in YAML)" if isinstance(entry, (int, float)) and not isinstance(entry, bool) else ""
        return f"is a {kind(entry)}, {show(entry)}{quote}"
    if not CLIENT_RE.match(entry):
        return f"is {show(entry)}, not an IP address or CIDR network"
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return f"is {show(entry)}, not an IP address or CIDR network"
    if "/" in entry and network.network_address != ipaddress.ip_address(entry.split("/")[0]):
        return (
            f"is {show(entry)}, whose address has bits set beyond the prefix: write the network as "
            f"{str(network)!r}, or the one address as {entry.split('/')[0]!r}"
        )
    return None


def check_allowed_clients(value, name=ALLOWED_CLIENTS, fix=ALLOWED_CLIENTS_FIX):
    """A list of IP addresses or CIDR networks (one message per bad entry).

    By default nginx_admin_api_allowed_clients; ``name`` and ``fix`` name
    another such list (synapse_metrics_allowed_clients).
    """
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        return [f"{name} is a {kind(value)}, {show(value)}; {fix}."]
    problems = []
    for index, entry in enumerate(value):
        problem = _client_problem(entry)
        if problem:
            problems.append(f"{name}[{index}] {problem}; {fix}.")
    return problems


def check_metrics_clients(value):
    """synapse_metrics_allowed_clients: who the firewall admits to the metrics ports."""
    return check_allowed_clients(value, METRICS_CLIENTS, METRICS_CLIENTS_FIX)


def check_metrics_address(host, value):
    """synapse_metrics_address of one host: an IP address in canonical form, never a wildcard."""
    if value is None or value == "":
        return None
    name = f"{METRICS_ADDRESS} of host {host}"
    fix = (
        f"set it to {DEFAULT_METRICS_ADDRESS} (the default: only {host} itself can scrape), or to "
        f"an address of {host} that Prometheus reaches, such as its synapse_address, e.g. 10.0.0.2"
    )
    if not isinstance(value, str):
        return f"{name} is a {kind(value)}, {show(value)}; {fix}."
    address = _ip(value)
    if address is None:
        return f"{name} is {show(value)}, not an IP address; {fix}."
    if address.is_unspecified:
        return (
            f"{name} is {show(value)}, a wildcard address, which would answer every network "
            f"{host} is on; {fix}."
        )
    if address.is_multicast:
        return f"{name} is {show(value)}, a multicast address, which no listener binds to; {fix}."
    if str(address) != value:
        return f"{name} is {show(value)}; write it as {str(address)!r} (the form the hosts report)."
    return None


def _switch(value):
    """True or False from a boolean or its word (as --extra-vars gives it); None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    return None


def _given(value):
    return value is not None and value != ""


def acme_problems(values):
    """The nginx role's ACME settings of one nginx host, as messages; empty when all is well.

    ``values`` holds the host's nginx_acme_enabled, nginx_acme_email,
    nginx_acme_directory_url, nginx_acme_ca_bundle, nginx_tls_certificate,
    nginx_tls_certificate_key, nginx_http_port, nginx_server_name and
    nginx_server_aliases, each None when unset; nginx_server_name falls back
    to synapse_public_host, then synapse_server_name, and
    nginx_server_aliases to [synapse_server_name], as the role's defaults do.
    Nothing but nginx_acme_enabled is checked unless it is on.
    """
    name = "nginx_acme_enabled"
    enabled = _get(values, name)
    if enabled is None:
        return []
    switch = _switch(enabled)
    if switch is None:
        return [
            f"{name} is {show(enabled)}; set it to true (certbot obtains a publicly trusted "
            "certificate from an ACME server) or false."
        ]
    if not switch:
        return []

    problems = []
    given = [v for v in ("nginx_tls_certificate", "nginx_tls_certificate_key") if _given(_get(values, v))]
    if given:
        problems.append(
            f"{name} is on and {' and '.join(given)} {'is' if len(given) == 1 else 'are'} set "
            f"({', '.join(show(_get(values, v)) for v in given)}): the TLS modes exclude each other. "
            "Unset nginx_tls_certificate and nginx_tls_certificate_key to have certbot obtain the "
            f"certificate, or set {name} to false to serve your own files."
        )

    server_name = _get(values, "nginx_server_name")
    source = "nginx_server_name"
    if not _given(server_name):
        source, server_name = "synapse_public_host", _get(values, "synapse_public_host")
    if not _given(server_name):
        source, server_name = "synapse_server_name", _get(values, "synapse_server_name")
    label = "nginx_server_name" if source == "nginx_server_name" else f"nginx_server_name (from {source})"
    fix = (
        "set synapse_public_host (or nginx_server_name) to a DNS name that points at the nginx "
        f"host, or set {name} to false"
    )
    if isinstance(server_name, str) and server_name:
        bare = server_name[1:-1] if server_name.startswith("[") and server_name.endswith("]") else server_name
        if _ip(bare) is not None:
            problems.append(
                f"{label} is {show(server_name)}, an IP address, but ACME certificates (certbot's "
                f"HTTP challenge) name DNS names only; {fix}."
            )
        elif not SYNAPSE_HOST_RE.match(server_name) or "." not in server_name:
            problems.append(
                f"{label} is {show(server_name)}, not a DNS name with a domain an ACME server can "
                f"validate (such as matrix.example.org); {fix}."
            )
    elif server_name is not None:
        problems.append(f"{label} is {show(server_name)}; {fix}.")

    aliases = _get(values, "nginx_server_aliases")
    if aliases is None:
        aliases = [_get(values, "synapse_server_name")]
    if not isinstance(aliases, (list, tuple)):
        problems.append(
            f"nginx_server_aliases is a {kind(aliases)}, {show(aliases)}; give a list of host "
            "names ([] for none)."
        )
        aliases = []
    for index, alias in enumerate(aliases):
        if alias is None or (isinstance(alias, str) and (_ip(alias) is not None or alias.startswith("["))):
            continue  # an address: served, but left out of the certificate
        if not isinstance(alias, str) or not SYNAPSE_HOST_RE.match(alias) or "." not in alias:
            problems.append(
                f"nginx_server_aliases[{index}] is {show(alias)}, not a DNS name an ACME server can "
                "validate over HTTP (no wildcards); give DNS names that point at the nginx host, or "
                "remove it."
            )

    url = _get(values, "nginx_acme_directory_url")
    if url is not None and (not isinstance(url, str) or not URL_RE.match(url)):
        problems.append(
            f"nginx_acme_directory_url is {show(url)}; give the ACME server's directory URL over "
            f"https, e.g. {ACME_DEFAULT_DIRECTORY} (Let's Encrypt, the default) or "
            f"{ACME_STAGING_DIRECTORY} (its staging server)."
        )

    email = _get(values, "nginx_acme_email")
    if _given(email) and (not isinstance(email, str) or not EMAIL_RE.match(email)):
        problems.append(
            f"nginx_acme_email is {show(email)}, not an e-mail address; give the address the CA "
            "may write to about this account (e.g. admin@example.org), or leave it empty to "
            "register without one."
        )

    bundle = _get(values, "nginx_acme_ca_bundle")
    if _given(bundle) and (not isinstance(bundle, str) or not HOST_PATH_RE.match(bundle)):
        problems.append(
            f"nginx_acme_ca_bundle is {show(bundle)}; give the absolute path on the nginx host of "
            "a PEM file with the CA certificate(s) of a private ACME server's HTTPS, e.g. "
            "/etc/ssl/private-acme-ca.pem, or leave it empty for a public one."
        )

    http_port = _get(values, "nginx_http_port")
    if http_port is not None and _whole_number(http_port) == 0:
        problems.append(
            f"nginx_http_port is {show(http_port)} (off), but {name} needs nginx's plain-HTTP "
            "server: the ACME server fetches its challenge from http://<name>/ (port 80). Set "
            "nginx_http_port to 80 (or to the port that port 80 is forwarded to)."
        )
    return problems


# What a host may read of another host's variables: its addresses, which
# inventories give as plain values. Anything else may be a template that only
# renders in that host's own task context.
ADDRESS_VARIABLES = ("ansible_host", "synapse_address")


class _OwnView(Mapping):
    """``hostvars`` as one host sees it: its own values, the others' addresses."""

    def __init__(self, hostvars, host, values):
        self._hostvars, self._host, self._values = hostvars, host, values

    def __getitem__(self, name):
        other = _host_values(self._hostvars, name)
        addresses = {key: _get(other, key) for key in ADDRESS_VARIABLES if _get(other, key) is not None}
        if name == self._host:
            return {**addresses, **{k: v for k, v in self._values.items() if v is not None}}
        return addresses

    def __iter__(self):
        return iter(self._hostvars)

    def __len__(self):
        return len(self._hostvars)

    def __contains__(self, name):
        return name == self._host or name in self._hostvars


def _host_values(hostvars, host):
    values = hostvars[host] if host in hostvars else {}
    return values if isinstance(values, Mapping) else {}


def _get(values, name):
    try:
        return values.get(name)
    except KeyError:
        return None


def _groups(groups):
    """Each of the five groups' hosts, as plain lists."""
    groups = groups if isinstance(groups, Mapping) else {}
    return {g: [str(h) for h in (groups.get(g) or [])] for g in GROUPS}


def _inventory_hosts(groups):
    names = []
    for group in GROUPS:
        for host in groups[group]:
            if host not in names:
                names.append(host)
    return names


def _shared_problems(values, synapse_hosts, main_host, nginx_host=False):
    checks = [
        check_server_name(_get(values, "synapse_server_name")),
        check_public_host(_get(values, "synapse_public_host")),
        check_upload_size(_get(values, "synapse_max_upload_size")),
        check_secret("synapse_database_password", _get(values, "synapse_database_password"), True),
        check_secret("synapse_redis_password", _get(values, "synapse_redis_password"), False),
        check_port("synapse_database_port", _get(values, "synapse_database_port"), 5432),
        check_port("synapse_redis_port", _get(values, "synapse_redis_port"), 6379),
        check_identifier("synapse_database_name", _get(values, "synapse_database_name")),
        check_identifier("synapse_database_user", _get(values, "synapse_database_user")),
        check_pool_max(_get(values, "synapse_database_pool_max")),
        check_jemalloc(_get(values, "synapse_jemalloc")),
        check_system_user(_get(values, "synapse_system_user")),
        check_socket_dir(_get(values, "synapse_socket_dir")),
        check_preset(_get(values, "synapse_worker_preset")),
        check_workers_type(_get(values, "synapse_workers")),
        check_media_host(_get(values, "synapse_media_host"), synapse_hosts),
        *(check_removed(name, _get(values, name)) for name in REMOVED_VARIABLES),
        *check_allowed_clients(_get(values, ALLOWED_CLIENTS)),
        *check_metrics_clients(_get(values, METRICS_CLIENTS)),
        # The synapse_main role's signing key, secrets and switch: read on the
        # main host only (other Synapse hosts get copies from it).
        *(secret_problems({name: _get(values, name) for name in SECRET_INPUTS}) if main_host else []),
        *(acme_problems(values) if nginx_host else []),
    ]
    return [problem for problem in checks if problem]


def _merge(per_host):
    """One message per problem, naming the hosts when not every host has it."""
    hosts_of = {}
    for host, problems in per_host.items():
        for problem in problems:
            hosts_of.setdefault(problem, []).append(host)
    merged = []
    for problem, hosts in hosts_of.items():
        if len(hosts) < len(per_host):
            problem = f"on {', '.join(hosts)}: {problem}"
        merged.append(problem)
    return merged


def _group_problems(groups):
    main = groups[MAIN_GROUP]
    if not main:
        return [
            f"the inventory has no host in group {MAIN_GROUP!r}; add the one host that runs "
            "Synapse's main process to it."
        ]
    if len(main) > 1:
        return [
            f"the inventory group {MAIN_GROUP!r} has {len(main)} hosts ({', '.join(main)}); "
            "Synapse has one main process: keep one host there and put the others in "
            f"{WORKERS_GROUP!r}."
        ]
    return []


def _firewall_problems(deployment, hostvars, only):
    """synapse_firewall_enabled of each host, and addresses its rules can match."""
    problems = []
    for host, rules in deployment.get("firewall", {}).items():
        if only is not None and host != only:
            continue
        enabled = _get(_host_values(hostvars, host), "synapse_firewall_enabled")
        if enabled is None:
            continue
        if isinstance(enabled, str) and enabled.lower() in ("true", "yes", "false", "no"):
            enabled = enabled.lower() in ("true", "yes")  # as given with --extra-vars
        if not isinstance(enabled, bool):
            problems.append(
                f"synapse_firewall_enabled of host {host} is {show(enabled)}; set it to true or false."
            )
            continue
        if not enabled:
            continue
        named = {}
        for rule in rules:
            if rule["speaks"] == "metrics":
                continue  # synapse_metrics_allowed_clients, checked with the shared variables
            for source in rule["sources"]:
                if _ip(source) is None:
                    named.setdefault(source, []).append(f"{rule['port']} ({rule['purpose']})")
        for source, ports in named.items():
            problems.append(
                f"the firewall of {host} (synapse_firewall_enabled) must admit the host reached at "
                f"{show(source)} to ports {', '.join(ports)}, but nftables matches IP addresses "
                "only: give that host synapse_address (or ansible_host) with its IP address, "
                "e.g. 10.0.0.2."
            )
    return problems


def _deployment_problems(deployment, groups, hostvars, only=None):
    """What the derived deployment asks of the shared variables (of host ``only`` alone, if given)."""
    problems = []
    main_host = deployment["main"]["host"]
    values = _host_values(hostvars, main_host)

    for host, names in deployment["hosts"].items():
        if names and host != main_host and host not in groups[WORKERS_GROUP]:
            problems.append(
                f"workers {', '.join(names)} are placed on {host}, which is not in the inventory "
                f"group {WORKERS_GROUP!r}: add {host} there so the synapse_worker role deploys "
                "them, or place them elsewhere."
            )

    redis = deployment["backends"]["redis"]
    if redis["listen_tcp"]:
        for host in dict.fromkeys([redis["host"], *redis["client_hosts"]]):
            if only is not None and host != only:
                continue
            problem = check_secret("synapse_redis_password", _get(_host_values(hostvars, host), "synapse_redis_password"), True)
            if problem:
                problems.append(
                    f"{problem[:-1]} (needed on {host}): Synapse runs on several hosts, so Redis "
                    f"on {redis['host']} listens on TCP and needs a password."
                )

    # Where processes meet over TCP, each host's address is bound to or
    # admitted (listeners, PostgreSQL, Redis, pg_hba.conf): an IP address.
    tcp_hosts = {}
    for process in [deployment["main"], *deployment["workers"]]:
        for listener in process["listeners"]:
            if "address" in listener:
                tcp_hosts.setdefault(process["host"], listener["address"])
    for backend in deployment["backends"].values():
        if backend["listen_tcp"]:
            tcp_hosts.setdefault(backend["host"], backend["address"])
            for client, connection in backend["connections"].items():
                if "host" in connection and not connection["host"].startswith("/"):
                    tcp_hosts.setdefault(client, None)
    for host in tcp_hosts:
        host_values = _host_values(hostvars, host)
        source = "synapse_address"
        address = _get(host_values, "synapse_address")
        if not address:
            source, address = "ansible_host", _get(host_values, "ansible_host")
        if not address:
            source, address = "inventory name", host
        if source == "synapse_address":
            continue  # checked with the shared variables
        ip = _ip(address) if isinstance(address, str) else None
        if ip is None or ip.is_unspecified or str(ip) != address:
            problems.append(
                f"host {host} is reached over TCP at {show(address)} (its {source}), which is not "
                "an IP address other hosts can reach: set synapse_address for "
                f"{host} to its IP address, e.g. 10.0.0.2."
            )

    problems.extend(_firewall_problems(deployment, hostvars, only))

    for process in [deployment["main"], *deployment["workers"]]:
        for listener in process["listeners"]:
            path = listener.get("path")
            if path and len(path.encode()) > UNIX_PATH_MAX:
                problems.append(
                    f"the socket {path} of {process['name']} has {len(path.encode())} bytes, more "
                    f"than UNIX sockets allow ({UNIX_PATH_MAX}): shorten synapse_socket_dir "
                    f"({show(_get(values, 'synapse_socket_dir') or deployment['socket_dir'])}) "
                    "or the worker's name."
                )
    return problems


def input_problems(groups, hostvars, deployment=None, host=None, values=None):
    """Every problem with the shared variables, as messages; empty when all is well.

    ``groups`` and ``hostvars`` are the inventory's (any mappings: host name to
    that host's variables). Without ``deployment`` it checks the variables
    themselves and the group sizes; with it (the synapse_topology result), what
    that deployment asks of them.
    """
    groups = _groups(groups)
    hostvars = hostvars if isinstance(hostvars, Mapping) else {}
    if host is not None:
        hostvars = _OwnView(hostvars, str(host), values if isinstance(values, Mapping) else {})
    if deployment is not None:
        return _deployment_problems(deployment, groups, hostvars, only=None if host is None else str(host))
    problems = _group_problems(groups)
    names = _inventory_hosts(groups)
    if host is not None:
        names = [name for name in names if name == str(host)]
    synapse_hosts = list(dict.fromkeys(h for g in (MAIN_GROUP, WORKERS_GROUP) for h in groups[g]))
    per_host = {}
    main = groups[MAIN_GROUP][:1]
    for host in names:
        values = _host_values(hostvars, host)
        per_host[host] = _shared_problems(values, synapse_hosts, host in main, nginx_host=host in groups["nginx"])
    problems.extend(_merge(per_host))
    for host in names:
        host_values = _host_values(hostvars, host)
        for problem in (
            check_address(host, _get(host_values, "synapse_address")),
            check_metrics_address(host, _get(host_values, METRICS_ADDRESS)),
        ):
            if problem:
                problems.append(problem)
    return problems
