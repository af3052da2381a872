#!/usr/bin/env bash
# A/B of one enable's stop (tprd's own `pause_us`) between two tprd binaries on one running
# domain, alternating, ROUNDS rounds each: start tprd on a private socket, `tprctl enable
# --strategy STRATEGY --transient`, read pause_us from its log, `tprctl rollback`, stop it.
# A benchmark, not a test (docs/performance.md). As root, with libvirtd running.
#   bench/enable-pause-ab.sh DOMAIN OLD_TPRD NEW_TPRD [ROUNDS] [STRATEGY]
# When the domain is the test guest booted with `gapwatch` (docs/test-guest.md) and a file serial
# log, each round also says what the guest saw: the largest step in its TSC stream in the GAP
# lines covering the enable (`guest_gap_us`) and each step of 5 ms or more, against the median of
# the five GAP lines before it (tprd started, idle).
set -euo pipefail
domain=${1:?usage: enable-pause-ab.sh DOMAIN OLD_TPRD NEW_TPRD [ROUNDS] [STRATEGY]}
old=${2:?old tprd binary}
new=${3:?new tprd binary}
rounds=${4:-3}
strategy=${5:-mmio}
tprctl=$(dirname "$(readlink -f "$new")")/../cli/tprctl
work=$(mktemp -d)
chmod 0700 "$work"
pid=
# Never leave a tprd behind: a second tprd managing the same domain takes its gdbstub away.
trap '[[ -n $pid ]] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
printf 'proving_window_s = 5\n' >"$work/tprd.conf"
serial=$(virsh -q dumpxml "$domain" | /usr/bin/python3 -c '
import sys, xml.etree.ElementTree as ET
s = ET.parse(sys.stdin).find("devices/serial[@type=\"file\"]/source")
print(s.get("path") if s is not None else "")')
gap_lines() { grep -ac '^GAP ' "$serial" 2>/dev/null || true; }
# guest_gap FROM: waits (bounded) for two GAP lines after line FROM, then prints the largest
# max_us among them and the median max_us of the five before.
guest_gap() {
  local from=$1
  for _ in $(seq 50); do
    (($(tail -n +"$((from + 1))" "$serial" | grep -ac '^GAP ') >= 2)) && break
    sleep 0.1 # polling the serial log, bounded above
  done
  /usr/bin/python3 - "$serial" "$from" <<'PY'
import re, statistics, sys
lines = open(sys.argv[1], errors="replace").read().splitlines()
start = int(sys.argv[2])
gap = lambda l: int(re.search(r"max_us=(\d+)", l).group(1))
before = [gap(l) for l in lines[:start] if l.startswith("GAP ")][-5:]
after, hits = [], []
for l in lines[start:]:
    if l.startswith("GAPHIT "):
        hits.append(re.search(r"step_us=(\d+) uptime_ms=(\d+)", l).groups())
    elif l.startswith("GAP "):
        after.append(gap(l))
        if len(after) == 2:
            break
if after:
    base = statistics.median(before) if before else "n/a"
    steps = ", ".join(f"{int(us) / 1000:.1f} ms at {ms}" for us, ms in hits) or "none"
    print(f"guest_gap_us={max(after)} (median of the 5 seconds before: {base}); steps >= 5 ms "
          f"(guest uptime ms): {steps}")
PY
}
for round in $(seq "$rounds"); do
  for which in old new; do
    bin=$new
    [[ $which == old ]] && bin=$old
    rm -rf "$work/state" "$work/tprd.log"
    "$bin" --socket "$work/s.sock" --state-dir "$work/state" --config "$work/tprd.conf" \
      --adopt-domains "$domain" >"$work/tprd.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
      "$tprctl" --socket "$work/s.sock" domains >/dev/null 2>&1 && break
      sleep 0.1 # polling tprd's socket until it answers, bounded above
    done
    if [[ -n $serial && $(gap_lines) -gt 0 ]]; then
      # Five quiet guest seconds with tprd running before the enable: the median it is held to.
      settled=$(($(gap_lines) + 5))
      for _ in $(seq 100); do
        (($(gap_lines) >= settled)) && break
        sleep 0.1 # polling the serial log, bounded above
      done
    fi
    from=$(wc -l <"$serial" 2>/dev/null || echo 0)
    "$tprctl" --socket "$work/s.sock" enable "$domain" --strategy "$strategy" --transient >/dev/null
    echo "$which round $round: $(grep -o "pause_us=.*" "$work/tprd.log" | tail -1)"
    [[ -n $serial && $(gap_lines) -gt 0 ]] && echo "  $(guest_gap "$from")"
    "$tprctl" --socket "$work/s.sock" rollback "$domain" >/dev/null
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
  done
done
