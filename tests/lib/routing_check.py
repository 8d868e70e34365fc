"""Where nginx sends a request, and whether the process it reaches may serve it.

``resolve`` reads the nginx part of a topology (what ``build_topology`` returns
under ``nginx``) the way nginx reads the site that
roles/nginx/templates/matrix-synapse.conf.j2 renders from it:

* the location is chosen for the normalised URI ($uri: no query string,
  %XX decoded, slashes merged, "." and ".." segments resolved);
* ``location =`` (the .well-known answers, given as ``exact_locations``) wins
  outright; otherwise the longest prefix location is remembered, and if it is
  a ``^~`` one (the closed admin API, given as ``closed_prefixes``) it wins;
* otherwise the regex locations are tried in the order the template writes
  them, the denied patterns first and then the routes, and the first match
  wins (``~``: case-sensitive PCRE, its double-quoted argument unescaped the
  way nginx's configuration parser unescapes it);
* otherwise the longest prefix, ``location /``, sends the request to the
  default upstream;
* a route with an ``upstream_variable`` proxies to whatever the map of that
  name yields for the request's method (``$request_method``) or for one of
  its query arguments (``$arg_<name>``: the raw value of the first argument of
  that name, compared ignoring case; empty when it is missing): exact strings
  compared ignoring case, then ``~``/``~*`` regexes in order, then the
  default.

The upstream's servers are then matched to the processes of the topology by
their listener's ``upstream_server``. Every server of an upstream counts: the
balancing hash only picks one of them, and ``proxy_next_upstream`` may try
the others. What the hash is computed from is read the same way
(``hash_key``): the upstream's ``hash`` variable, through the maps that
define it, for the request.

Not emulated: the server-level ``if`` that refuses the admin API (403) to
clients outside nginx_admin_api_allowed_clients (it depends on the client's
address), ``nginx_server_extra_config``, the plain-HTTP redirect server, and
nginx's handling of malformed URIs (a ".." above the root is an error here).

``check`` judges a table of ``Sample`` requests against a topology and returns
one ``Finding`` per sample that goes astray: to a process that cannot serve
it, to main while a worker may, past the pool that takes it over (initial
syncs, room workers), or to a room-sticky upstream that hashes it by
something other than its room. The policy for where a request landed is
``judge_answered`` (nginx answered a request itself) and ``judge_reached``
(nginx forwarded it to these processes); lib/routing_log.py applies the same
two to what nginx's access log shows of real requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

# How the main process stands to a sample request (``Sample.main``).
# Main alone serves it; no worker type does.
MAIN_ONLY = "main-only"
# Main serves it, but while a process of one of the sample's types runs the
# request belongs there (docs/workers.md lists it for those workers).
MAIN_FALLBACK = "fallback"
# Main serves it only while no process of the sample's types runs: their
# stream writer or media repository takes it over and main can no longer
# answer it (a stream main no longer writes, enable_media_repo: false).
MAIN_UNTIL_DEPLOYED = "until-deployed"
# Main serves it as well as the sample's types do; either is right.
MAIN_ALSO = "also"
# nginx must answer it itself and never forward it.
NEVER_FORWARDED = "never-forwarded"

MAIN_POLICIES = (MAIN_ONLY, MAIN_FALLBACK, MAIN_UNTIL_DEPLOYED, MAIN_ALSO, NEVER_FORWARDED)

# Kinds of ``Finding``.
# The request reaches a process that cannot serve it.
MISROUTED = "misrouted"
# The request falls to main although a running worker type may serve it.
MISSED_WORKER = "missed-worker"
# nginx answers the request itself (a denied pattern) though Synapse serves it.
REFUSED = "refused"
# nginx forwards a request it must answer itself.
FORWARDED = "forwarded"
# The location proxies to an upstream or server the topology does not define.
BROKEN = "broken"
# A pool that takes the request over from its other types runs, but the
# request reaches one of those types instead.
PASSED_OVER = "passed-over"
# The upstream is sticky by room but hashes the request by something else.
NOT_STICKY = "not-sticky"


# The name processes() gives the main process (Synapse's worker names exclude it).
MAIN = "main"


@dataclass(frozen=True)
class Sample:
    """One concrete request and who may serve it, according to docs/workers.md.

    ``types`` are the worker types that may serve it (empty for main-only
    requests), ``main`` one of MAIN_POLICIES, ``doc`` where docs/workers.md
    says so. ``prefer`` lists, in order, pools among ``types`` that take the
    request over from the others while one of them runs (initial syncs, room
    workers); ``room`` is the room the request names (its ID, or an alias),
    which an upstream sticky by room must hash it by.
    """

    method: str
    path: str
    types: frozenset
    main: str
    doc: str
    prefer: tuple = ()
    room: str | None = None

    def __post_init__(self):
        if self.main not in MAIN_POLICIES:
            raise ValueError(f"{self.method} {self.path}: unknown main policy {self.main!r}")
        if bool(self.types) == (self.main in (MAIN_ONLY, NEVER_FORWARDED)):
            raise ValueError(
                f"{self.method} {self.path}: types {sorted(self.types)} contradict {self.main!r}"
            )
        if not set(self.prefer) <= self.types:
            raise ValueError(f"{self.method} {self.path}: prefers {list(self.prefer)} outside its types")

    def __str__(self):
        return f"{self.method} {self.path}"


@dataclass(frozen=True)
class Resolution:
    """The location nginx picks: it proxies to ``upstream`` or ``answers`` itself."""

    location: str
    upstream: str | None = None
    answers: str | None = None


@dataclass(frozen=True)
class Process:
    """A Synapse process behind an upstream server: main, or a worker and its types."""

    name: str
    types: tuple

    @property
    def is_main(self):
        return self.name == MAIN


@dataclass(frozen=True)
class Finding:
    """A sample gone astray: where nginx sent it (location, upstream, processes) and why it is wrong.

    Read from nginx's access log (lib/routing_log.py), ``location`` is empty
    and ``logged`` holds the line.
    """

    sample: Sample
    kind: str
    location: str
    upstream: str | None
    reached: tuple
    detail: str
    logged: str = ""

    def __str__(self):
        where = self.upstream or "nginx itself"
        reached = ", ".join(f"{p.name} ({', '.join(p.types) or 'main process'})" for p in self.reached)
        allowed = ", ".join(sorted(self.sample.types))
        if not allowed:
            allowed = "nginx alone" if self.sample.main == NEVER_FORWARDED else "main alone"
        return (
            f"{self.kind}: {self.sample} -> {where}"
            + (f" [{reached}]" if reached else "")
            + (f" via location {self.location}" if self.location else "")
            + f"; may serve it: {allowed} (main: {self.sample.main}); "
            + f"{self.detail} [docs/workers.md: {self.sample.doc}]"
            + (f"; nginx logged {self.logged}" if self.logged else "")
        )


# --- nginx ------------------------------------------------------------------


def normalise_uri(target):
    """nginx's $uri for a request target: what locations are matched against."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        raise ValueError(f"request target {target!r} does not start with /")
    path = unquote_to_bytes(path).decode("utf-8", "surrogateescape")
    path = re.sub("/{2,}", "/", path)
    segments = []
    parts = path.split("/")[1:]
    for index, segment in enumerate(parts):
        last = index == len(parts) - 1
        if segment == ".":
            if last:
                segments.append("")
            continue
        if segment == "..":
            if not segments:
                raise ValueError(f"request target {target!r} leaves the root")
            segments.pop()
            if last:
                segments.append("")
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def nginx_unquote(argument):
    """A double-quoted configuration argument as nginx's parser hands it on."""
    out = []
    index = 0
    while index < len(argument):
        char = argument[index]
        if char == '"':
            raise ValueError(f"an unescaped double quote ends the nginx argument early: {argument!r}")
        if char == "\\" and index + 1 < len(argument):
            following = argument[index + 1]
            if following in "\"'\\":
                out.append(following)
                index += 2
                continue
            if following in "trn":
                out.append({"t": "\t", "r": "\r", "n": "\n"}[following])
                index += 2
                continue
        out.append(char)
        index += 1
    return "".join(out)


def _pcre(pattern, ignore_case=False):
    """A PCRE regex of the configuration as a Python one (named groups differ)."""
    return re.compile(re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", pattern), re.IGNORECASE if ignore_case else 0)


def _regex_location(pattern):
    return _pcre(nginx_unquote(pattern))


def _map_case(chooser, value):
    """The value an nginx `map` picks for a source value, and the regex's named captures."""
    regexes = []
    for case in chooser["cases"]:
        pattern = nginx_unquote(case["pattern"])
        if pattern.startswith("~*"):
            regexes.append((_pcre(pattern[2:], ignore_case=True), case["value"]))
        elif pattern.startswith("~"):
            regexes.append((_pcre(pattern[1:]), case["value"]))
        elif pattern.lower() == value.lower():
            return case["value"], {}
    for regex, result in regexes:
        match = regex.search(value)
        if match:
            return result, match.groupdict()
    return chooser["default"], {}


def map_value(chooser, value):
    """What an nginx `map` yields for a source value (as the template renders the map)."""
    return _map_case(chooser, value)[0]


def query_argument(target, name):
    """nginx's $arg_<name>: the raw value of the first argument so named (ignoring case), else ""."""
    query = target.split("#", 1)[0].partition("?")[2]
    for argument in query.split("&"):
        key, equals, value = argument.partition("=")
        if equals and key.lower() == name.lower():
            return value
    return ""


def evaluate(nginx, variable, method, target, headers=None):
    """The value of an nginx variable for a request: a map of the site, or one of nginx's own.

    nginx's own are $uri, $request_method, $arg_<name>, $http_<name> (from
    ``headers``, empty when absent) and $remote_addr (the loopback address).
    A map's value may name a capture of its regex or another variable.
    """
    headers = {k.lower().replace("-", "_"): v for k, v in (headers or {}).items()}
    choosers = [m for m in nginx["maps"] if m["variable"] == variable]
    if len(choosers) > 1:
        raise ValueError(f"{variable} is defined by {len(choosers)} maps")
    if choosers:
        chooser = choosers[0]
        source = evaluate(nginx, chooser["source"], method, target, headers)
        result, captures = _map_case(chooser, source)

        def substitute(match):
            name = match.group(1)
            if name in captures:
                return captures[name] or ""
            return evaluate(nginx, f"${name}", method, target, headers)

        return re.sub(r"\$(\w+)", substitute, result)
    if not variable.startswith("$"):
        return variable
    name = variable[1:]
    if name == "uri":
        return normalise_uri(target)
    if name == "request_method":
        return method
    if name == "remote_addr":
        return "127.0.0.1"
    if name.startswith("arg_"):
        return query_argument(target, name[4:])
    if name.startswith("http_"):
        return headers.get(name[5:], "")
    raise ValueError(f"no map defines {variable}, and it is no variable the checker knows")


def _chooser_source_known(source):
    return source == "$request_method" or source.startswith("$arg_")


def resolve(nginx, method, target, exact_locations=(), closed_prefixes=()):
    """The location nginx picks for a request, and where it sends it."""
    uri = normalise_uri(target)
    if uri in exact_locations:
        return Resolution(f"= {uri}", answers="exact location")
    prefixes = [(prefix, True) for prefix in closed_prefixes] + [("/", False)]
    longest, closed = max(((p, c) for p, c in prefixes if uri.startswith(p)), key=lambda pc: len(pc[0]))
    if closed:
        return Resolution(f"^~ {longest}", answers="closed prefix")
    for pattern in nginx["denied_patterns"]:
        if _regex_location(pattern).search(uri):
            return Resolution(f'~ "{pattern}"', answers="denied pattern")
    for route in nginx["routes"]:
        if not _regex_location(route["pattern"]).search(uri):
            continue
        location = f'~ "{route["pattern"]}"'
        if not route.get("upstream_variable"):
            return Resolution(location, upstream=route["upstream"])
        choosers = [m for m in nginx["maps"] if m["variable"] == route["upstream_variable"]]
        if len(choosers) != 1 or not _chooser_source_known(choosers[0]["source"]):
            return Resolution(location, answers=f"no request map {route['upstream_variable']}")
        return Resolution(location, upstream=evaluate(nginx, route["upstream_variable"], method, target))
    return Resolution("/", upstream=nginx["default_upstream"])


def hash_key(nginx, upstream, method, target, headers=None):
    """What a sticky upstream hashes a request by (None for an upstream without a hash)."""
    variable = nginx["upstreams"][upstream].get("hash_key")
    if not variable:
        return None
    return evaluate(nginx, variable, method, target, headers)


# --- the processes behind the upstreams ----------------------------------------


def processes(topology):
    """{upstream server: Process} for main and every worker of a topology."""
    found = {topology["main"]["listeners"][0]["upstream_server"]: Process(MAIN, ())}
    for worker in topology["workers"]:
        found[worker["listeners"][0]["upstream_server"]] = Process(worker["name"], tuple(worker["types"]))
    return found


def deployed_types(topology):
    return {t for worker in topology["workers"] for t in worker["types"]}


def judge_answered(sample, answers):
    """The policy for a request nginx answered itself (``answers`` says how): (kind, detail) or None."""
    if answers == "closed prefix" or sample.main == NEVER_FORWARDED:
        return None
    kind = REFUSED if answers == "denied pattern" else BROKEN
    return kind, f"nginx answers it itself ({answers})"


def judge_reached(sample, running, reached):
    """The policy for a request forwarded to the processes ``reached``: (kind, detail) or None.

    ``running`` holds the worker types of the deployment: a request that may
    fall to main only while none of its types runs is judged by them.
    """
    if sample.main == NEVER_FORWARDED:
        return FORWARDED, "nginx must answer it itself"
    wrong = [p for p in reached if not p.is_main and not set(p.types) & sample.types]
    if wrong:
        names = ", ".join(p.name for p in wrong)
        return MISROUTED, f"{names} has none of the types that serve it"
    pool = next((t for t in sample.prefer if t in running), None)
    passed = [p for p in reached if not p.is_main and pool is not None and pool not in p.types]
    if passed:
        names = ", ".join(p.name for p in passed)
        return PASSED_OVER, f"{names} serves it although {pool} runs"
    if not any(p.is_main for p in reached):
        return None
    able = sorted(sample.types & running)
    if sample.main == MAIN_ONLY or sample.main == MAIN_ALSO or not able:
        return None
    if sample.main == MAIN_UNTIL_DEPLOYED:
        return MISROUTED, f"main no longer serves it once {', '.join(able)} runs"
    return MISSED_WORKER, f"main serves it although {', '.join(able)} runs"


def check(topology, samples, exact_locations=(), closed_prefixes=()):
    """Every sample that nginx, set up from the topology, sends astray: a list of Findings."""
    nginx = topology["nginx"]
    by_server = processes(topology)
    running = deployed_types(topology)
    findings = []
    for sample in samples:
        resolution = resolve(nginx, sample.method, sample.path, exact_locations, closed_prefixes)

        def finding(kind, detail, upstream=None, reached=()):
            findings.append(Finding(sample, kind, resolution.location, upstream, tuple(reached), detail))

        if resolution.answers is not None:
            verdict = judge_answered(sample, resolution.answers)
            if verdict:
                finding(*verdict)
            continue
        upstream = nginx["upstreams"].get(resolution.upstream)
        if upstream is None:
            finding(BROKEN, "no such upstream", resolution.upstream)
            continue
        unknown = [s for s in upstream["servers"] if s not in by_server]
        if unknown:
            finding(
                BROKEN, f"servers {', '.join(unknown)} are no process of the topology", resolution.upstream
            )
            continue
        reached = [by_server[s] for s in upstream["servers"]]
        verdict = judge_reached(sample, running, reached)
        if verdict:
            finding(*verdict, resolution.upstream, reached)
            continue
        if upstream.get("balance") == "room" and sample.room is not None:
            try:
                key = hash_key(nginx, resolution.upstream, sample.method, sample.path)
            except ValueError as error:
                finding(BROKEN, f"its hash key cannot be computed: {error}", resolution.upstream, reached)
                continue
            if key != sample.room:
                finding(
                    NOT_STICKY,
                    f"sticky by room, but hashed by {key!r}, not by {sample.room!r}",
                    resolution.upstream,
                    reached,
                )
    return findings
