#!/usr/bin/env bash
# A/B of one enable's stop (tprd's own `pause_us`) between two tprd binaries on one running
# domain, alternating, ROUNDS rounds each: start tprd on a private socket, `tprctl enable
# --strategy STRATEGY --transient`, read pause_us from its log, `tprctl rollback`, stop it.
# A benchmark, not a test (docs/performance.md). As root, with libvirtd running.
#   bench/enable-pause-ab.sh DOMAIN OLD_TPRD NEW_TPRD [ROUNDS] [STRATEGY]
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
    "$tprctl" --socket "$work/s.sock" enable "$domain" --strategy "$strategy" --transient >/dev/null
    echo "$which round $round: $(grep -o "pause_us=.*" "$work/tprd.log" | tail -1)"
    "$tprctl" --socket "$work/s.sock" rollback "$domain" >/dev/null
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
  done
done
