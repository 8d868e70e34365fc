#!/usr/bin/env python3
"""Knock on the deployment's internal ports from a host that is not one of its
Synapse hosts, and judge the answers; prints JSON {"results", "problems"}.

    probe_ports.py [--skip-host HOST] '{"firewall": {...}, "firewalled": {...},
                                        "metrics": [...], "reach": {...}}'

"firewall" is the deployment's per-host list of guarded ports (the topology's
`firewall` entry), "firewalled" says per host whether its firewall is on. Prints the results,
a one-line summary per port and the problems.
For each port: "state" is "refused" (a TCP reset), "timeout" (no answer
within 3 s) or "open"; where it is open, "answer" says what a client without
credentials gets: PostgreSQL's error code or authentication request, Redis's
reply to PING. Nothing is sent beyond that first exchange. A firewalled port
must refuse; an open PostgreSQL or Redis must refuse the missing credentials.

"metrics" (optional) are the topology's metrics targets, which must not be
reachable from this host at all: each is knocked on at its host's address in
"reach" (inventory host to the address this host reaches it at; the target's
own address otherwise) and must refuse or stay silent for 2 s. The
firewall's rules for the metrics ports are judged there, not as guarded
ports: a listener bound to loopback refuses whatever the firewall says.
Ports of --skip-host (the probing host itself, reached over loopback) are
left out. Standard library only, so it also runs on a lab host.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys

TIMEOUT = 3.0
# A metrics port must not answer: refused at once, or silent this long.
CLOSED_TIMEOUT = 2.0


def _postgres(sock):
    """PostgreSQL's first answer to a startup message without a password."""
    params = b"user\0synapse\0database\0synapse\0\0"
    sock.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
    kind = sock.recv(1)
    length = struct.unpack("!I", sock.recv(4))[0]
    body = b""
    while len(body) < length - 4:
        chunk = sock.recv(length - 4 - len(body))
        if not chunk:
            break
        body += chunk
    if kind == b"R":
        # 0: no password asked (trust), 3: cleartext, 5: md5, 10: SASL (scram).
        return f"authentication request {struct.unpack('!I', body[:4])[0]}"
    if kind == b"E":
        fields = dict((f[:1].decode(), f[1:].decode(errors="replace")) for f in body.split(b"\0") if f)
        return f"error {fields.get('C', '?')}: {fields.get('M', '')}"
    return f"unexpected message {kind!r}"


def _redis(sock):
    sock.sendall(b"PING\r\n")
    return sock.recv(200).decode(errors="replace").strip()


SPEAKERS = {"postgres": _postgres, "redis": _redis}


def probe(target, timeout=TIMEOUT):
    result = dict(target)
    try:
        sock = socket.create_connection((target["address"], int(target["port"])), timeout=timeout)
    except ConnectionRefusedError:
        result["state"] = "refused"
        return result
    except (socket.timeout, TimeoutError):
        result["state"] = "timeout"
        return result
    except OSError as error:
        result["state"] = f"error: {error}"
        return result
    result["state"] = "open"
    speaker = SPEAKERS.get(target.get("speaks"))
    if speaker is not None:
        try:
            result["answer"] = speaker(sock)
        except (OSError, struct.error) as error:
            result["answer"] = f"no answer: {error}"
    sock.close()
    return result


def judge(result, firewalled):
    """Why the answer on a guarded port is wrong, or None."""
    where = f"{result['purpose']} at {result['address']}:{result['port']}"
    if firewalled:
        if result["state"] != "refused":
            return f"{where} is firewalled but the connection was {result['state']}, not refused"
        return None
    if result["state"] != "open":
        return f"{where} has no firewall but the connection was {result['state']}"
    answer = result.get("answer", "")
    if result["speaks"] == "postgres" and not (
        answer.startswith("error 28") or (answer.startswith("authentication request") and not answer.endswith(" 0"))
    ):
        return f"{where} let a client without a password in: {answer}"
    if result["speaks"] == "redis" and not answer.startswith("-NOAUTH"):
        return f"{where} answered a client without a password: {answer}"
    return None


def judge_closed(result):
    """Why a port that must not be reachable from here is wrong, or None."""
    if result["state"] in ("refused", "timeout"):
        return None
    return (
        f"{result['purpose']} at {result['address']}:{result['port']} must not be reachable from "
        f"outside its host, but the connection was {result['state']}"
    )


def probe_metrics(targets, reach, skip_host=None):
    """Knock on every metrics target's port at its host's address; (results, problems)."""
    results, problems = [], []
    for target in targets:
        if target["host"] == skip_host:
            continue
        knock = {
            "host": target["host"],
            "purpose": f"metrics of {target['name']}",
            "address": reach.get(target["host"], target["address"]),
            "port": target["port"],
            "speaks": "metrics",
        }
        result = probe(knock, CLOSED_TIMEOUT)
        results.append(result)
        problem = judge_closed(result)
        if problem:
            problems.append(f"{target['host']}: {problem}")
    return results, problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-host", default=None)
    parser.add_argument("deployment", type=json.loads)
    args = parser.parse_args()
    results, problems = [], []
    for host, rules in sorted(args.deployment["firewall"].items()):
        if host == args.skip_host:
            continue
        firewalled = bool(args.deployment["firewalled"].get(host))
        for rule in rules:
            if rule["speaks"] == "metrics":
                continue  # judged with "metrics" below
            result = probe({**rule, "host": host, "firewalled": firewalled})
            for key in ("sources", "ipv4_sources", "ipv6_sources"):
                result.pop(key, None)
            results.append(result)
            problem = judge(result, firewalled)
            if problem:
                problems.append(f"{host}: {problem}")
    metrics_results, metrics_problems = probe_metrics(
        args.deployment.get("metrics", []), args.deployment.get("reach", {}), args.skip_host
    )
    results += metrics_results
    problems += metrics_problems
    summary = [
        f"{r['host']} {r['purpose']} {r['address']}:{r['port']} {r['state']} {r.get('answer', '')}".strip()
        for r in results
    ]
    json.dump({"results": results, "summary": summary, "problems": problems}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
