#!/usr/bin/env bash
# End-to-end check of the lab itself: boots a Debian 12 and a Debian 13 host,
# checks SSH, apt and pip through the NAT, that nothing but the mirrors is
# reachable from a host, Ansible (when .venv has it), then `down` and checks
# that nothing is left behind. Run as root: tests/lab/smoke.sh
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
lab() { python3 "$here/lab.py" "$@"; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
fail() { echo "SMOKE FAIL: $*" >&2; exit 1; }

forward_before=$(cat /proc/sys/net/ipv4/ip_forward)
trap 'lab down || true' EXIT

for release in bookworm trixie; do
  t=$(now)
  lab up --release "$release" </dev/null
  echo "== up $release: $(took "$t")"
done


for host in bookworm-1 trixie-1; do
  echo "== $host"
  lab ssh "$host" -- '. /etc/os-release && echo "$PRETTY_NAME, $(python3 -V)"'
  state=$(lab ssh "$host" -- 'timeout 30 systemctl is-system-running --wait' || true)
  [[ "$state" == running ]] || fail "$host: systemd is $state: $(lab ssh "$host" -- systemctl --failed --no-legend)"
  echo "   systemd: $state"
  t=$(now)
  lab ssh "$host" -- 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl python3-venv >/dev/null' \
    || fail "apt-get on $host"
  echo "   apt-get update + install curl python3-venv: $(took "$t")"
  t=$(now)
  lab ssh "$host" -- 'python3 -m venv /tmp/v && /tmp/v/bin/pip install -q six && /tmp/v/bin/python -c "import six"' \
    || fail "pip install in a venv on $host"
  echo "   venv + pip install six: $(took "$t")"
done

# Egress is proven by the rules, not by probing: test traffic goes only to the
# lab hosts and the package mirrors. Every ACCEPT the lab adds names one
# address (a mirror's), and a DROP closes everything else leaving the bridge.
rules=$(iptables -w 10 -S FORWARD | grep polylith-lab)
echo "$rules" | grep -q -- '-j DROP' || fail "no DROP rule for the lab bridge"
while read -r rule; do
  [[ "$rule" == *"-j ACCEPT"* && "$rule" == *"-i plab0"* ]] || continue
  [[ "$rule" =~ -d\ [0-9.]+/32 ]] || fail "an ACCEPT rule for the lab names no single address: $rule"
done <<<"$rules"
echo "== egress: only single mirror addresses are accepted from the lab bridge"

if [[ -x "$repo/.venv/bin/ansible" ]]; then
  t=$(now)
  (cd "$repo" && .venv/bin/ansible -i .lab/inventory.yml all -m ansible.builtin.ping) || fail "ansible ping"
  echo "== ansible ping: $(took "$t")"
fi

if [[ -n "${SMOKE_KEEP:-}" ]]; then  # leave the hosts up for debugging
  trap - EXIT
  echo "SMOKE_KEEP: hosts left up; run tests/lab/lab.py down"
  exit 0
fi
t=$(now)
lab down
trap - EXIT
echo "== down: $(took "$t")"
sleep 1  # let the runner's init reap the exited nspawn processes

! ip link show plab0 >/dev/null 2>&1 || fail "bridge plab0 left"
! ip -o link | grep -q ' vb-' || fail "veth links left"
! iptables -w 10 -S | grep -q polylith-lab || fail "filter rules left"
! iptables -w 10 -t nat -S | grep -q polylith-lab || fail "nat rules left"
! grep -q " $repo/.lab" /proc/self/mountinfo || fail "mounts left under .lab"
! pgrep -f "systemd-nspawn -D $repo/.lab" >/dev/null || fail "systemd-nspawn left running"
[[ "$(python3 "$here/lab.py" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["stray_nspawn_pids"])')" == "[]" ]] \
  || fail "host processes left"
[[ "$(cat /proc/sys/net/ipv4/ip_forward)" == "$forward_before" ]] || fail "ip_forward not restored"
! ls -d /sys/fs/cgroup/*/polylith-lab /sys/fs/cgroup/polylith-lab >/dev/null 2>&1 || fail "cgroups left"
echo "SMOKE OK: nothing left (bridge, veths, iptables rules, mounts, processes, cgroups, ip_forward)"
