#!/usr/bin/env python3
"""What workers buy on one lab host, and how long Ansible takes: figures only.

Run as root on the test machine, through its entry point:
    tests/bench/run [--release bookworm|trixie] [--phase-seconds 30] [--layouts a,b] [--skip-ansible]

It boots one lab host (tests/lab/lab.py), deploys playbooks/site.yml onto it
and measures, on that same host in one sitting:

- Ansible: the cold deploy, a no-op rerun (time, changed count) with and
  without SSH pipelining (ansible.cfg turns it on), and no-op reruns with 4,
  16 and 40 workers, the last with the task profiler's slowest tasks;
- Synapse: for each layout, a bounded load through nginx with matrix-nio
  (tests/bench/matrix_load.py): flood rate into one busy room, quiet users'
  message-to-sync latency idle, under the flood and at a fixed offered rate,
  errors, the lab host's CPU use and its Synapse processes' memory.

It prints the figures, writes them to docs/benchmark.md (the table) and
.lab/bench/results.json, judges nothing and exits 0 once every measurement
ran; 1 if one could not be taken. Every step is bounded in time; the lab host
is torn down at the end (--keep leaves it up).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / ".lab"
OUT = LAB / "bench"
HOST = "bench-1"


def ratio(a, b):
    """a/b to two places; None when either is missing or b is 0."""
    if a is None or b in (None, 0):
        return None
    return round(a / b, 2)

# The tuning the collection offers, off by default (the lab's inventory turns
# it on for the scenarios; the bench measures the defaults unless a layout
# asks): jemalloc with the cache budget, PostgreSQL's memory sized from RAM.
TUNING_OFF = {"synapse_jemalloc": False, "postgres_memory_from_ram": False}
TUNED = {"synapse_jemalloc": True, "postgres_memory_from_ram": True}

# The layouts compared, by name: a preset, or a worker list of the bench's own.
LAYOUTS = {
    "monolith": {"synapse_workers": []},
    "sync": {"synapse_workers": [{"name": "sync", "types": ["synchrotron"]}]},
    "sync+persister": {
        "synapse_workers": [
            {"name": "sync", "types": ["synchrotron"]},
            {"name": "persister", "types": ["event_persister"]},
        ]
    },
    "seed002": {"synapse_worker_preset": "seed002", "synapse_workers": None},
    # The monolith with the tuning on.
    "monolith-tuned": {"synapse_workers": [], **TUNED},
}
DEFAULT_LAYOUTS = ["monolith", "monolith-tuned", "sync", "sync+persister", "seed002"]
WORKER_COUNTS = (4, 16, 40)

# What the load needs of Synapse beyond the lab's settings: its senders and
# new users must not be rate-limited, or the figures measure the limiter.
BENCH_CONFIG = {
    **TUNING_OFF,
    "synapse_main_extra_config": {
        "rc_message": {"per_second": 10000, "burst_count": 10000},
        "rc_joins": {"local": {"per_second": 1000, "burst_count": 1000}},
        "rc_login": {
            "address": {"per_second": 100, "burst_count": 1000},
            "account": {"per_second": 100, "burst_count": 1000},
            "failed_attempts": {"per_second": 100, "burst_count": 1000},
        },
        "rc_registration": {"per_second": 100, "burst_count": 1000},
    }
}

# Bounds of the steps, in seconds.
DEPLOY_TIMEOUT = 1800
LOAD_SETUP_MARGIN = 300


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def lab(*args: str, timeout: int = 900) -> str:
    return subprocess.run(
        [sys.executable, str(ROOT / "tests" / "lab" / "lab.py"), *args],
        check=True, capture_output=True, text=True, timeout=timeout,
    ).stdout


def on_host(command: str, timeout: int = 120) -> str:
    return subprocess.run(
        ["ssh", "-F", str(LAB / "ssh" / "config"), HOST, command],
        check=True, capture_output=True, text=True, timeout=timeout,
    ).stdout


RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)
PROFILE = re.compile(r"^(.+?) -+ (\d+\.\d+)s$", re.M)


def deploy(layout: dict, name: str, *, pipelining: bool | None = None, profile: bool = False) -> dict:
    """Runs site.yml with the layout; returns seconds, tasks, changed, and the slowest tasks."""
    extra = {**BENCH_CONFIG, **{k: v for k, v in layout.items() if v is not None}}
    extra_file = OUT / "extra-vars.json"
    extra_file.write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    if pipelining is not None:  # otherwise ansible.cfg's
        env["ANSIBLE_PIPELINING"] = str(pipelining)
    if profile:
        env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
        env["PROFILE_TASKS_TASK_OUTPUT_LIMIT"] = "8"
    if "synapse_worker_preset" in layout:
        env["LAB_PRESET"] = layout["synapse_worker_preset"]
    command = [
        "ansible-playbook", "-i", str(LAB / "inventory.yml"), "-i", str(LAB / "target.yml"),
        "-i", str(ROOT / "tests" / "lab" / "inventory"), str(ROOT / "playbooks" / "site.yml"),
        "-e", f"@{extra_file}",
    ]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=DEPLOY_TIMEOUT, cwd=ROOT)
    seconds = time.monotonic() - started
    (OUT / f"ansible-{name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"site.yml failed for {name} (exit {result.returncode}); see {OUT}/ansible-{name}.log")
    recap = RECAP.findall(result.stdout)
    slowest = []
    if profile:
        tail = result.stdout.split("PLAY RECAP", 1)[-1]
        slowest = [(task.strip(), float(sec)) for task, sec in PROFILE.findall(tail)][:8]
    figures = {
        "seconds": round(seconds, 1),
        "tasks": sum(int(r[1]) for r in recap),
        "changed": sum(int(r[2]) for r in recap),
        "slowest_tasks": slowest,
    }
    log(f"{name}: {figures['seconds']} s, {figures['tasks']} tasks ok, {figures['changed']} changed")
    return figures


# --- the lab host's CPU, sampled while the load runs -------------------------------

SAMPLER = r"""
import os, sys, time
# Every process's user+system ticks in this host's PID namespace, once a second.
for _ in range(int(sys.argv[1])):
    ticks = 0
    for pid in os.listdir('/proc'):
        if pid.isdigit():
            try:
                fields = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):
                pass
    print(f'{time.time():.3f} {ticks}', flush=True)
    time.sleep(1)
"""


class CpuSampler:
    """Samples the lab host's CPU ticks in the background for at most ``seconds``."""

    def __init__(self, seconds: int):
        self.samples: list[tuple[float, int]] = []
        self.process = subprocess.Popen(
            ["ssh", "-F", str(LAB / "ssh" / "config"), HOST, f"python3 -c {shlex.quote(SAMPLER)} {seconds}"],
            stdout=subprocess.PIPE, text=True,
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.process.stdout:
            stamp, ticks = line.split()
            self.samples.append((float(stamp), int(ticks)))

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.thread.join(timeout=5)

    def busy(self, start: float, end: float, cores: int, hertz: int = 100) -> float | None:
        """The host's CPU use between two wall-clock times, as a share of all its cores."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        if t1 <= t0 or c1 < c0:
            return None
        return round(100 * (c1 - c0) / hertz / ((t1 - t0) * cores), 1)


def synapse_memory_mib() -> dict:
    """Resident memory of each Synapse process on the host, in MiB."""
    out = on_host("ps -C python3,python -o rss=,args= | grep -E 'synapse\\.app' || true")
    sizes = {}
    for line in out.splitlines():
        rss, args = line.strip().split(None, 1)
        match = re.search(r"(?:-c\s+\S*/workers?/|--config-path=\S*/workers/)?(\S+?)\.yaml\s*$", args)
        name = match.group(1) if match else args[-40:]
        sizes[name] = round(int(rss) / 1024)
    return sizes


def load(layout_name: str, address: str, cores: int, args) -> dict:
    phase_total = 3 * args.phase_seconds
    sampler = CpuSampler(phase_total + LOAD_SETUP_MARGIN)
    out_file = OUT / f"load-{layout_name}.json"
    command = [
        sys.executable, str(ROOT / "tests" / "bench" / "matrix_load.py"),
        "--url", f"https://{address}", "--ca-cert", str(OUT / "ca.crt"), "--server-name", address,
        "--address", address, "--phase-seconds", str(args.phase_seconds), "--fixed-rate", str(args.fixed_rate),
        "--timeout", str(phase_total + LOAD_SETUP_MARGIN), "--json", str(out_file),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=phase_total + LOAD_SETUP_MARGIN + 60)
    finally:
        sampler.stop()
    (OUT / f"load-{layout_name}.log").write_text(result.stderr)
    if result.returncode != 0 or not out_file.exists():
        raise RuntimeError(f"the load failed on {layout_name} (exit {result.returncode}); see {OUT}/load-{layout_name}.log")
    figures = json.loads(out_file.read_text())
    for phase in figures["phases"].values():
        phase["host_cpu_percent"] = sampler.busy(phase["started"], phase["ended"], cores)
    figures["memory_mib"] = synapse_memory_mib()
    return figures


# --- the report ---------------------------------------------------------------------


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    memory = next(int(line.split()[1]) // 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_mib": memory, "kernel": platform.release()}


def fmt(value, unit="") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def goal(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**missed**")


def report(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark: what workers buy on one small host",
        "",
        "Written by `tests/bench/run`; figures, not verdicts. Rerun it to measure your own machine.",
        "",
        f"- Measured {results['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_mib']} MiB, "
        f"Linux {m['kernel']}; the lab host is a systemd-nspawn container on that machine "
        f"(Debian {results['release']}, Synapse {results.get('synapse_version', '?')}), "
        "and the load generator shares its cores.",
        f"- Load: {results['load_params']}.",
        *[f"- {note}" for note in results.get("notes", [])],
        *(["- Every layout runs with the collection's defaults except monolith-tuned, which turns on the "
           "tuning the collection offers: jemalloc with Synapse's caches budgeted from the host's RAM "
           "(synapse_jemalloc) and PostgreSQL's memory sized from RAM (postgres_memory_from_ram)."]
          if "monolith-tuned" in results.get("loads", {}) else []),
        "",
    ]
    loads = results.get("loads", {})
    if loads:
        base = loads.get("monolith")
        lines += [
            "## Synapse under load (one lab host, through nginx and TLS)",
            "",
            "| layout | processes | flood msg/s | vs monolith | quiet p50/p95 idle | quiet p50/p95 busy | "
            f"p95 busy/idle | at {results['fixed_rate']} msg/s: p95 fixed/idle | errors | host CPU busy | Synapse RSS |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, fig in loads.items():
            p = fig["phases"]
            idle, busy, fixed = p["idle"]["quiet_latency_ms"], p["busy"]["quiet_latency_ms"], p["fixed"]["quiet_latency_ms"]
            rate = p["busy"]["flood_rate"]
            versus = ratio(rate, base["phases"]["busy"]["flood_rate"]) if base else None
            memory = fig.get("memory_mib", {})
            lines.append(
                f"| {name} | {fig['processes']} | {rate} | {fmt(versus, 'x')} | {idle['p50']}/{idle['p95']} ms | "
                f"{busy['p50']}/{busy['p95']} ms | {fmt(ratio(busy['p95'], idle['p95']))} | "
                f"{fmt(ratio(fixed['p95'], idle['p95']))} ({p['fixed']['achieved_rate']} msg/s) | "
                f"{fig['errors_total']} | {fmt(p['busy'].get('host_cpu_percent'), '%')} | "
                f"{sum(memory.values())} MiB ({max(memory.values()) if memory else 0} max) |"
            )
        lines.append("")
    ansible = results.get("ansible", {})
    if ansible:
        lines += ["## Ansible (playbooks/site.yml against the lab host)", "", "| run | seconds | tasks | changed |",
                  "|---|---|---|---|"]
        for name, fig in ansible.items():
            lines.append(f"| {name} | {fig['seconds']} | {fig['tasks']} | {fig['changed']} |")
        slow = next((fig["slowest_tasks"] for fig in ansible.values() if fig.get("slowest_tasks")), [])
        if slow:
            lines += ["", "Slowest tasks of the profiled rerun:", ""]
            lines += [f"- {sec:.1f} s: {task}" for task, sec in slow]
        lines.append("")
    lines += ["## Goals", "", "| goal | figure | |", "|---|---|---|"]
    for text, figure, met in results["goals"]:
        lines.append(f"| {text} | {figure} | {goal(met)} |")
    lines.append("")
    return "\n".join(lines)


def goals(results: dict, default_layout: str) -> list:
    out = []
    loads, ansible = results.get("loads", {}), results.get("ansible", {})
    if "monolith" in loads and default_layout in loads:
        r = ratio(loads[default_layout]["phases"]["busy"]["flood_rate"], loads["monolith"]["phases"]["busy"]["flood_rate"])
        out.append((f"the 2-core default ({default_layout}) never slower than the monolith", f"{r}x", r is not None and r >= 1.0))
        out.append(("... and aims at 1.2x its flood rate", f"{r}x", r is not None and r >= 1.2))
    for name, fig in loads.items():
        p = fig["phases"]
        r = ratio(p["fixed"]["quiet_latency_ms"]["p95"], p["idle"]["quiet_latency_ms"]["p95"])
        out.append((f"{name}: quiet p95 at {results['fixed_rate']} msg/s within 1.2x of idle", f"{r}", r is not None and r <= 1.2))
        out.append((f"{name}: zero errors", str(fig["errors_total"]), fig["errors_total"] == 0))
    if "no-op rerun" in ansible:
        fig = ansible["no-op rerun"]
        out.append(("no-op rerun within 30 s, 0 changed", f"{fig['seconds']} s, {fig['changed']} changed",
                    fig["seconds"] <= 30 and fig["changed"] == 0))
    if "no-op rerun, 4 workers" in ansible and "no-op rerun, 40 workers" in ansible:
        r = ratio(ansible["no-op rerun, 40 workers"]["seconds"], ansible["no-op rerun, 4 workers"]["seconds"])
        out.append(("no-op rerun with 40 workers within 1.5x of 4", f"{r}x", r is not None and r <= 1.5))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--release", default="bookworm", choices=["bookworm", "trixie"])
    parser.add_argument("--layouts", default=",".join(DEFAULT_LAYOUTS),
                        help=f"comma-separated, of: {', '.join(LAYOUTS)}")
    parser.add_argument("--default-layout", default="monolith",
                        help="the layout the 2-core goals judge (the collection's default)")
    parser.add_argument("--phase-seconds", type=int, default=30)
    parser.add_argument("--fixed-rate", type=float, default=10.0)
    parser.add_argument("--skip-ansible", action="store_true", help="only the load")
    parser.add_argument("--skip-load", action="store_true", help="only Ansible")
    parser.add_argument("--keep", action="store_true", help="leave the lab host up")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmark.md"))
    args = parser.parse_args(argv)
    layouts = [name for name in args.layouts.split(",") if name]
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        parser.error(f"unknown layout(s) {', '.join(unknown)}; use: {', '.join(LAYOUTS)}")
    if not 5 <= args.phase_seconds <= 300:
        parser.error("--phase-seconds must be between 5 and 300")

    OUT.mkdir(parents=True, exist_ok=True)
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "release": args.release, "machine": machine(),
        "fixed_rate": args.fixed_rate, "ansible": {}, "loads": {},
        "load_params": f"4 senders flooding one room, 2 readers syncing it, 8 quiet users in pairs; "
                       f"{args.phase_seconds} s per phase (idle, flood, fixed {args.fixed_rate} msg/s)",
    }
    failed = False
    try:
        log(f"booting {HOST} (Debian {args.release})")
        lab("up", "--release", args.release, "--name", "bench", "--hosts", "1")
        subprocess.run([str(ROOT / "tests" / "lab" / "target"), HOST], check=True)
        address = json.loads((LAB / "hosts.json").read_text())[HOST]["address"]
        cores = int(on_host("nproc").strip())
        first = layouts[0] if layouts else "monolith"
        results["ansible"]["cold deploy"] = deploy(LAYOUTS[first], "cold")
        (OUT / "ca.crt").write_text(on_host("cat /etc/nginx/polylith-tls/ca.crt"))
        results["synapse_version"] = on_host(
            "/opt/matrix-synapse/venv/bin/python -c 'import synapse; print(synapse.__version__)' 2>/dev/null || true").strip() or "?"
        if not args.skip_ansible:
            results["ansible"]["no-op rerun"] = deploy(LAYOUTS[first], "rerun")
            results["ansible"]["no-op rerun, without pipelining"] = deploy(
                LAYOUTS[first], "rerun-no-pipelining", pipelining=False)
        if not args.skip_load:
            for name in layouts:
                if name != first or results["loads"]:
                    deploy(LAYOUTS[name], f"layout-{name}")
                log(f"load on {name}")
                fig = load(name, address, cores, args)
                fig["processes"] = 1 + int(on_host(
                    "systemctl list-units 'matrix-synapse-worker@*' --state=running --no-legend | wc -l").strip())
                results["loads"][name] = fig
                log(f"{name}: flood {fig['phases']['busy']['flood_rate']} msg/s, errors {fig['errors_total']}")
        if not args.skip_ansible:
            for count in WORKER_COUNTS:
                layout = {"synapse_workers": [{"name": "reader", "types": ["client_reader"], "count": count}]}
                deploy(layout, f"workers-{count}")
                results["ansible"][f"no-op rerun, {count} workers"] = deploy(
                    layout, f"rerun-{count}", profile=count == WORKER_COUNTS[-1])
    except (RuntimeError, subprocess.SubprocessError, OSError, KeyError, ValueError) as exc:
        log(f"stopped: {exc}")
        failed = True
    finally:
        if not args.keep:
            try:
                lab("down")
            except subprocess.SubprocessError as exc:
                log(f"tearing the lab down failed: {exc}")
    results["goals"] = goals(results, args.default_layout)
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    text = report(results)
    print(text)
    if not failed:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        log(f"wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
