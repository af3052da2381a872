#!/usr/bin/env bash
# Live migration with a tprd on each side (label migration; docs/usage.md, docs/design.md "A
# migration's end"): a test guest (2 vCPUs) patched under mmio by the source's tprd on
# qemu:///system, `virsh migrate --live` to a second libvirtd on this machine
# (tests/migration/two-libvirtd.sh: its own mount namespace, sockets and state), where a second
# tprd, started in that namespace with an empty journal, takes the arriving guest back with the
# strategy of the intent the domain's metadata carried. Checked: the guest's own checks show no
# failure before, during or after; the target's tprd shows the guest patched, mmio, with the
# sites the source had; the source's shows it gone; a rollback on the target restores every
# site's original bytes (read through the target QEMU's monitor).
#   tprd_migration_test.sh SOURCE_DIR BUILD_DIR [test|hal]
# GUEST: `test` (the XP-like test guest, default) or `hal` (the HAL-shaped guest, seed 2,
# `regrel=off`: with its register-relative writer on, mmio stops the guest at every run of it, and
# a migration whose end lands on such a stop cannot be loaded by QEMU 7.2, as below).
# Only mmio: a cr8 guest traps at its unpatchable accesses, and a migration whose end lands on
# such a trap stop cannot be loaded by QEMU 7.2 (docs/design.md "Saves and migrations").
set -euo pipefail

src=${1:?source dir}
build=${2:?build dir}
guest=${3:-test}
case $guest in
test)
  guest_elf=tpr-test-guest.elf guest_dir=guest cmdline="late=45"
  ;;
hal)
  guest_elf=hal-guest.elf guest_dir=hal-guest cmdline="seed=2 regrel=off"
  ;;
*)
  echo "unknown guest '$guest' (test or hal)" >&2
  exit 2
  ;;
esac
[[ $(id -u) -eq 0 ]] || {
  echo "SKIP: needs root (two libvirt daemons)"
  exit 77
}

work=/var/tmp/tprd-mig-test-$$
export TPRD_MIG2_DIR=$work/d2
two=$src/tests/migration/two-libvirtd.sh
tprd=$build/daemon/tprd
tprctl=$build/cli/tprctl
domain=tprd-mig-$guest-$$
target_uri=$(bash "$two" uri)
serial=$work/serial/$domain.log
failures=0
logs=$build/tests/migration/tprd_migration_test.$guest.logs

say() { echo "migration-test: $*"; }
pass() { say "PASS: $*"; }
fail() {
  say "FAIL: $*"
  failures=$((failures + 1))
}
die() {
  say "FAIL: $*"
  exit 1
}

pids=()
cleanup() {
  local status=$?
  mkdir -p "$logs"
  cp -f "$work"/tA/log "$logs/tprd-source.log" 2>/dev/null || true
  cp -f "$work"/tB/log "$logs/tprd-target.log" 2>/dev/null || true
  cp -f "$serial" "$logs/serial.log" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  virsh -q -c qemu:///system destroy "$domain" >/dev/null 2>&1 || true
  bash "$two" down >/dev/null 2>&1 || true
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT

# Polls `condition` (a shell command) every 0.2 s for at most $2 seconds.
wait_for() {
  local what=$1 seconds=$2 deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@"; do
    ((SECONDS < deadline)) || {
      say "timed out after ${seconds}s waiting for: $what"
      return 1
    }
    sleep 0.2
  done
}

field() { # field SOCKET KEY: one field of `tprctl --json status`
  "$tprctl" --socket "$1" --json status "$domain" 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1]))' "$2" 2>/dev/null || true
}
stat_lines() { # complete STAT lines of vCPU 1 so far (grep -c prints 0 and fails on none)
  local n
  n=$(grep -ac '^STAT cpu=1 ' "$serial" 2>/dev/null) || true
  echo "${n:-0}"
}
export -f stat_lines
export serial
# The test guest counts failed checks (fail=), the HAL guest wrong reads and masking violations;
# both print their first failures as FAIL lines.
guest_failures() {
  grep -aE -e '^FAIL' -e '^STAT .*( fail| wrong_reads| mask_violations)=[1-9]' "$serial" |
    head -n 3 || true
}

# ------------------------------------------------------------------------------ the two hosts
mkdir -p "$work"/{guest,serial,tA,tB}
chmod 0755 "$work" "$work/guest"
chmod 0777 "$work/serial"
install -m 0644 "$build/tests/$guest_dir/$guest_elf" "$work/guest/"
bash "$two" up >/dev/null || die "the second libvirtd did not start"
pass "second libvirtd up: $target_uri"

# The guest, with its serial log appended to by both QEMUs (the target's must not truncate it).
sed -e "s|@KERNEL@|$work/guest/$guest_elf|" \
  -e "s|<cmdline>late=45</cmdline>|<cmdline>$cmdline</cmdline>|" \
  -e "s|<source path='@SERIAL@'/>|<source path='$serial' append='on'/>|" \
  -e "s|<name>tpr-demo</name>|<name>$domain</name>|" \
  "$src/deploy/tpr-demo.xml.in" >"$work/domain.xml"
virsh -q -c qemu:///system create "$work/domain.xml" >/dev/null || die "virsh create failed"
wait_for "the guest's first STAT line on vCPU 1" 180 bash -c '(( $(stat_lines) >= 1 ))' ||
  die "the guest did not boot"

printf 'proving_window_s = 5\nadopt_domains = %s\n' "$domain" >"$work/tA/tprd.conf"
cp "$work/tA/tprd.conf" "$work/tB/tprd.conf"
"$tprd" --socket "$work/tA/sock" --state-dir "$work/tA/state" --config "$work/tA/tprd.conf" \
  >"$work/tA/log" 2>&1 &
pids+=($!)
# The target's tprd lives in the second daemon's mount namespace, as on another host: libvirt's
# per-domain paths there are that daemon's.
nsenter -m -t "$(cat "$TPRD_MIG2_DIR/libvirtd.pid")" "$tprd" --connect "$target_uri" \
  --socket "$work/tB/sock" --state-dir "$work/tB/state" --config "$work/tB/tprd.conf" \
  >"$work/tB/log" 2>&1 &
pids+=($!)
wait_for "both tprds answering" 30 bash -c "'$tprctl' --socket '$work/tA/sock' domains >/dev/null 2>&1 && '$tprctl' --socket '$work/tB/sock' domains >/dev/null 2>&1" ||
  die "a tprd did not start: $(tail -n 3 "$work/tA/log" "$work/tB/log")"

# ------------------------------------------------------------------------------ patch, migrate
"$tprctl" --socket "$work/tA/sock" enable "$domain" --strategy mmio >"$work/enable.log" 2>&1 ||
  die "tprctl enable failed: $(tail -n 3 "$work/enable.log")"
wait_for "the source's proving window to end" 60 bash -c "[[ \$('$tprctl' --socket '$work/tA/sock' --json status '$domain' | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[\"proving_window_open\"])') == False ]]" ||
  fail "the proving window did not end"
"$tprctl" --socket "$work/tA/sock" --json sites "$domain" >"$work/sites-source.json"
applied_before=$(field "$work/tA/sock" sites_applied)
[[ $(field "$work/tA/sock" state) == patched && $(field "$work/tA/sock" strategy) == mmio ]] &&
  pass "source: patched, mmio, $applied_before sites applied" || die "source not patched: $(field "$work/tA/sock" state)"

lines=$(stat_lines)
wait_for "two STAT lines per vCPU while patched" 60 bash -c "(( \$(stat_lines) >= $lines + 2 ))" || fail "the guest stalled"
started=$SECONDS
timeout 180 virsh -c qemu:///system migrate --live "$domain" "$target_uri" \
  --migrateuri "unix://$TPRD_MIG2_DIR/mig/$domain.sock" >"$work/migrate.log" 2>&1 ||
  die "virsh migrate failed: $(cat "$work/migrate.log")"
pass "virsh migrate --live to the second libvirtd ($((SECONDS - started)) s)"

taken_back() { [[ $(field "$work/tB/sock" state) == patched && $(field "$work/tB/sock" strategy) == mmio ]]; }
if wait_for "the target's tprd to take the guest back" 30 taken_back; then
  pass "target: patched, mmio (the intent's strategy; its journal was empty), $(field "$work/tB/sock" sites_applied) sites applied"
else
  fail "target: state $(field "$work/tB/sock" state), strategy $(field "$work/tB/sock" strategy)"
fi
[[ $(field "$work/tB/sock" sites_applied) == "$applied_before" ]] && pass "target lists the $applied_before sites the source had" ||
  fail "target lists $(field "$work/tB/sock" sites_applied) applied sites, the source had $applied_before"
# The source's libvirt no longer has the domain: its tprd says gone, or that libvirt has none.
source_status=$("$tprctl" --socket "$work/tA/sock" status "$domain" 2>&1 || true)
if grep -q -e 'state: *gone' -e 'no libvirt domain' <<<"$source_status"; then
  pass "source: the guest is gone from it"
else
  fail "source still shows: $source_status"
fi

lines=$(stat_lines)
wait_for "three STAT lines per vCPU on the target" 60 bash -c "(( \$(stat_lines) >= $lines + 3 ))" ||
  fail "the guest does not run on the target"
bad=$(guest_failures)
[[ -z $bad ]] && pass "the guest's checks: no failure before, during or after the migration" ||
  fail "the guest reports: $bad"

# ------------------------------------------------------------------------------ rollback there
"$tprctl" --socket "$work/tB/sock" rollback "$domain" >"$work/rollback.log" 2>&1 ||
  fail "rollback on the target failed: $(tail -n 3 "$work/rollback.log")"
mismatched=0
while read -r address original; do
  size=$((${#original} / 2))
  bytes=$(virsh -c "$target_uri" qemu-monitor-command "$domain" --hmp "x /${size}xb $address" |
    sed -n 's/^[0-9a-f]*: //p' | tr -d ' \r\n' | sed 's/0x//g')
  [[ $bytes == "$original" ]] || {
    mismatched=$((mismatched + 1))
    say "site $address: $bytes, original $original"
  }
done < <(/usr/bin/python3 -c '
import json,sys
for s in json.load(open(sys.argv[1]))["sites"]:
    if s["state"] == "applied": print(s["address"], s["original"])' "$work/sites-source.json")
((mismatched == 0)) && pass "rollback on the target restored every site's original bytes" ||
  fail "$mismatched sites differ from their original bytes after the rollback"
lines=$(stat_lines)
wait_for "two STAT lines per vCPU after the rollback" 60 bash -c "(( \$(stat_lines) >= $lines + 2 ))" ||
  fail "the guest stalled after the rollback"
bad=$(guest_failures)
[[ -z $bad ]] && pass "the guest's checks after the rollback: no failure" || fail "the guest reports: $bad"

if ((failures > 0)); then
  say "$failures check(s) failed; logs in $logs"
  exit 1
fi
say "PASS: tprd_migration_test ($guest guest); logs in $logs"
