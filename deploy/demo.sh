#!/usr/bin/env bash
# README command 1: installs what is needed, builds tprd, makes libvirtd available, boots the
# bundled XP-like test guest as domain `tpr-demo` (TCG, 2 vCPUs, QEMU's vapic off), starts
# tprd, patches the guest with `tprctl enable tpr-demo`, lists the sites and shows the guest's
# own TPR cost (cycles per access, from its BENCH lines) before and after.
#   bash deploy/demo.sh            run the demo (leaves tprd and the domain running)
#   bash deploy/demo.sh --cleanup  roll back, stop the demo's tprd, remove the domain
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
state=/var/lib/tprd-demo
proving_window=10
serial=$state/serial.log
socket=/run/tprd/tprd.sock
tprctl="$root/build/cli/tprctl --socket $socket"

say() { printf '\n== %s\n' "$*"; }
die() {
  echo "demo: $*" >&2
  exit 1
}

ours_running_tprd() { [[ -f $state/tprd.pid ]] && kill -0 "$(cat "$state/tprd.pid")" 2>/dev/null; }

cleanup() {
  if [[ -S $socket ]]; then $tprctl rollback tpr-demo 2>/dev/null || true; fi
  if ours_running_tprd; then
    kill -TERM "$(cat "$state/tprd.pid")"
    for _ in $(seq 1 100); do ours_running_tprd || break; sleep 0.1; done
    rm -f "$state/tprd.pid"
  fi
  if virsh -c qemu:///system dominfo tpr-demo >/dev/null 2>&1; then
    virsh -c qemu:///system destroy tpr-demo >/dev/null 2>&1 || true
    virsh -c qemu:///system undefine tpr-demo >/dev/null
  fi
  echo "demo: cleaned up (tpr-demo removed, the demo's tprd stopped)"
}

bench_lines=3  # each figure is the median of this many BENCH lines (one about every 2 s)

# Median of BENCH field $1 (tpr_read, tpr_write, mem_read) over the first $bench_lines BENCH
# lines after line $2 of the serial log.
bench_field() {
  tail -n +"$(($2 + 1))" "$serial" | grep -a '^BENCH ' | head -n "$bench_lines" |
    sed -n "s/.*[[:space:]]$1=\([0-9]*\).*/\1/p" | sort -n | sed -n "$(((bench_lines + 1) / 2))p"
}

# Waits up to $2 seconds for $bench_lines BENCH lines after line $1 of the serial log.
wait_bench_after() {
  local from=$1 deadline=$((SECONDS + $2))
  until (($(tail -n +"$((from + 1))" "$serial" 2>/dev/null | grep -ac '^BENCH ') >= bench_lines)); do
    ((SECONDS < deadline)) || die "no $bench_lines BENCH lines from the guest within $2 s (see $serial)"
    sleep 0.5
  done
}

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and talks to qemu:///system)"
if [[ ${1:-} == --cleanup ]]; then
  cleanup
  exit 0
fi

say "installing dependencies, starting libvirtd"
bash tests/install-deps.sh
bash tests/setup-libvirt.sh

say "building tprd"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"

say "booting the test guest as domain tpr-demo"
mkdir -p "$state"
# QEMU runs as libvirt-qemu (Debian's default): it must be able to open the kernel in here, so
# others may traverse the directory (not list it). libvirt opens the serial log itself.
chmod 0711 "$state"
if virsh -c qemu:///system dominfo tpr-demo >/dev/null 2>&1; then
  virsh -c qemu:///system destroy tpr-demo >/dev/null 2>&1 || true
  virsh -c qemu:///system undefine tpr-demo >/dev/null
fi
install -m 0644 build/tests/guest/tpr-test-guest.elf "$state/tpr-test-guest.elf"
: >"$serial"
sed -e "s|@KERNEL@|$state/tpr-test-guest.elf|" -e "s|@SERIAL@|$serial|" \
  deploy/tpr-demo.xml.in >"$state/tpr-demo.xml"
virsh -c qemu:///system define "$state/tpr-demo.xml" >/dev/null
virsh -c qemu:///system start tpr-demo >/dev/null
wait_bench_after 0 120
before_line=$(wc -l <"$serial")
wait_bench_after "$before_line" 60
read_before=$(bench_field tpr_read "$before_line")
write_before=$(bench_field tpr_write "$before_line")
echo "guest running; unpatched: TPR read ${read_before} cycles, TPR write ${write_before} cycles"

say "starting tprd"
if ours_running_tprd; then
  kill -TERM "$(cat "$state/tprd.pid")"
  for _ in $(seq 1 100); do ours_running_tprd || break; sleep 0.1; done
fi
if systemctl is-active --quiet tprd.service 2>/dev/null; then
  echo "using the tprd.service that is already running"
else
  mkdir -p /run/tprd /var/lib/tprd
  # Only the demo's domain is taken back at start: tests may run their own guests here. A
  # short proving window (docs/design.md) so the "after" numbers come without its breakpoints.
  printf 'proving_window_s = %s\n' "$proving_window" >"$state/tprd.conf"
  nohup "$root/build/daemon/tprd" --socket "$socket" --state-dir /var/lib/tprd \
    --adopt-domains tpr-demo --config "$state/tprd.conf" >"$state/tprd.log" 2>&1 &
  echo $! >"$state/tprd.pid"
  deadline=$((SECONDS + 30))
  until $tprctl domains >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "tprd did not answer on $socket within 30 s (see $state/tprd.log)"
    ours_running_tprd || die "tprd exited (see $state/tprd.log)"
    sleep 0.2
  done
  echo "tprd running (pid $(cat "$state/tprd.pid"), log $state/tprd.log)"
fi

say "tprctl enable tpr-demo"
$tprctl enable tpr-demo
enabled_line=$(wc -l <"$serial")

say "tprctl sites tpr-demo"
$tprctl sites tpr-demo

say "the guest's TPR cost, before and after"
echo "(waiting for tprd's proving window (${proving_window} s) to end: then the breakpoints on sites"
echo " that never ran are removed; under TCG they slow every instruction on their page)"
deadline=$((SECONDS + proving_window + 60))
until $tprctl --json status tpr-demo 2>/dev/null | grep -q '"proving_window_open": *false'; do
  ((SECONDS < deadline)) || die "the proving window did not end (tprctl status tpr-demo)"
  sleep 0.5
done
after_line=$(wc -l <"$serial")
wait_bench_after "$after_line" 60
read_after=$(bench_field tpr_read "$after_line")
write_after=$(bench_field tpr_write "$after_line")
printf '%-12s %12s %12s\n' "" "unpatched" "patched"
printf '%-12s %12s %12s\n' "TPR read" "$read_before" "$read_after"
printf '%-12s %12s %12s\n' "TPR write" "$write_before" "$write_after"
echo "(cycles per access, medians of $bench_lines BENCH lines, measured by the guest with rdtsc under"
echo " QEMU TCG: noisy, and the unpatched read is dearer on an idle host; see docs/performance.md)"
$tprctl status tpr-demo || true
say "tprctl metrics (TPR access families, tpr-demo)"
$tprctl metrics | grep -E '^tprd_(tpr_accesses|trap_stops)[a-z_]*\{domain="tpr-demo"' || true
fails=$(grep -a '^STAT ' "$serial" | grep -cv ' fail=0' || true)
echo "guest self-checks: $(grep -ac '^STAT ' "$serial") STAT lines, $fails with failures"

cat <<TEXT

Next:
  $tprctl --json sites tpr-demo     every patched site
  $tprctl rollback tpr-demo         restore the original bytes
  bash deploy/demo.sh --cleanup     roll back, stop this tprd, remove the domain
TEXT
