#!/usr/bin/env bash
# tprd under a real systemd (issue 14): boots systemd in a container with its own root (a
# Debian 12 tree made with debootstrap, booted with systemd-nspawn), with Debian's own libvirtd
# units inside, installs this build with deploy/install.sh and checks, under that systemd:
#   - Type=notify: `systemctl start` returns once tprd sent READY=1, within TimeoutStartSec, and
#     that timeout outlasts tprd's adopt deadline (READY waits for the adopt);
#   - the hardening takes effect (capability set, no_new_privs, seccomp, own network and mount
#     namespaces, a read-only /usr) and tprd still works under it: it enables a test guest;
#   - tprd's lines reach the journal with their priorities (the "<N>" prefix consumed);
#   - `systemctl stop tprd`: tprd sends STOPPING=1, exits 0 and leaves the guest on `exact`
#     (the guest's own strategy word), the guest runs on correctly; a start adopts it again.
# usage: tprd_systemd_test.sh SOURCE_DIR BUILD_DIR      (root; ctest passes both)
# Exit: 0 pass, 1 fail, 77 skipped (something outside tprd is missing; the reason is printed).
#
# The container's tree is cached in $TPRD_SYSTEMD_TEST_CACHE (default /var/tmp/tprd-systemd-test),
# keyed by a hash of how it is made (tree_version and the package list); built only when
# missing (about 3 minutes here, needs deb.debian.org or $TPRD_SYSTEMD_TEST_MIRROR). Runs boot it
# with --volatile=overlay: the cached tree is never changed by a run.
#
# Never boot systemd over this machine's own root, even in new namespaces: its tmpfiles empty
# /tmp for every process. Only the container's own tree is booted here.
set -uo pipefail

readonly skip_code=77
# Bump when the way the tree is made changes (the package list is in the key already).
readonly tree_version=1
readonly suite=bookworm
readonly mirror=${TPRD_SYSTEMD_TEST_MIRROR:-http://deb.debian.org/debian}
readonly cache=${TPRD_SYSTEMD_TEST_CACHE:-/var/tmp/tprd-systemd-test}
readonly machine=tprd-systemd-$$
readonly domain=tprd-systemd-guest
readonly serial=/var/log/libvirt/qemu/$domain.serial
# tprd_main.cc: AdoptRunning(absl::Now() + absl::Minutes(2)) runs before READY=1.
readonly adopt_deadline_s=120
# What READY may need besides the adopt: connecting to libvirtd, the API socket.
readonly start_margin_s=30
readonly path_in_container=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "systemd-test: $*"; }
failures=0
pass() { echo "PASS: $*"; }
fail() {
  echo "FAIL: $*"
  failures=$((failures + 1))
}
# A step that later steps depend on failed: stop here (the EXIT trap cleans up).
die() {
  fail "$*"
  echo "FAIL: tprd_systemd_test ($failures failure(s)); logs in $logs"
  exit 1
}
skip() {
  echo "SKIP: tprd_systemd_test: $*"
  exit $skip_code
}

if (($# != 2)); then
  echo "usage: $0 SOURCE_DIR BUILD_DIR" >&2
  exit 2
fi
src=$(realpath "$1")
build=$(realpath "$2")
logs=${TPRD_SYSTEMD_TEST_LOGS:-$PWD/tprd_systemd_test.logs}
rm -rf "$logs"
mkdir -p "$logs"

# ------------------------------------------------------------------------------ preconditions
[[ $(id -u) -eq 0 ]] || skip "needs root (debootstrap, systemd-nspawn, nsenter)"
for tool in debootstrap systemd-nspawn nsenter flock python3 readelf; do
  command -v "$tool" >/dev/null || skip "$tool is missing: run tests/install-deps.sh"
done
tprd_bin=$build/daemon/tprd
tprctl_bin=$build/cli/tprctl
guest_elf=$build/tests/guest/tpr-test-guest.elf
blob_layout=$build/guest-rom/blob_layout.h
for f in "$tprd_bin" "$tprctl_bin" "$guest_elf" "$blob_layout" "$build/cmake_install.cmake"; do
  [[ -e $f ]] || die "$f is missing: build the tree first (cmake --build $build)"
done

# Polls COMMAND every half second until it succeeds or SECONDS pass. Prints what it waited for
# and how long it took; returns 1 on timeout.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  local start=$SECONDS
  local deadline=$((SECONDS + seconds))
  until "$@"; do
    if ((SECONDS >= deadline)); then
      say "gave up after ${seconds}s waiting for $what"
      return 1
    fi
    sleep 0.5
  done
  say "$what: after $((SECONDS - start))s"
}

# Milliseconds since the epoch, for step timings.
now_ms() { date +%s%3N; }

# ------------------------------------------------------------------------------ the tree
# Debian packages of the libraries tprd and tprctl link directly (their NEEDED entries), as
# this host resolves them; apt brings their dependencies.
runtime_packages() {
  local needed lib path pkg
  needed=$(for f in "$tprd_bin" "$tprctl_bin"; do
    readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'
  done | sort -u)
  for lib in $needed; do
    path=$(ldd "$tprd_bin" "$tprctl_bin" | awk -v lib="$lib" '$1 == lib && $3 ~ /^\// {print $3; exit}')
    [[ -n $path ]] || {
      say "cannot resolve $lib with ldd" >&2
      return 1
    }
    pkg=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$(realpath "$path")" 2>/dev/null ||
      dpkg -S "/usr$path" 2>/dev/null || dpkg -S "${path#/usr}" 2>/dev/null) || {
      say "no Debian package owns $path ($lib)" >&2
      return 1
    }
    # "pkg:arch: path" (or "pkg1, pkg2: path"): the first package.
    pkg=${pkg%%$'\n'*}
    echo "${pkg%%[:,]*}"
  done | sort -u
}

runtime=$(runtime_packages) || die "cannot list tprd's runtime packages"
mapfile -t runtime <<<"$runtime"
# systemd, dbus: the init and its bus; libvirt-daemon-system: Debian's libvirtd units, qemu.conf
# and libvirt-qemu account; cmake: deploy/install.sh runs `cmake --install`.
packages=(systemd systemd-sysv dbus libvirt-daemon-system libvirt-clients qemu-system-x86 cmake
  "${runtime[@]}")
key=$(printf '%s\n' "$tree_version" "$suite" "${packages[@]}" | sha256sum | cut -c1-12)
tree=$cache/$suite-$key

mkdir -p "$cache"
exec 9>"$cache/lock"
flock -w 1800 9 || die "another run holds $cache/lock for 30 minutes"
if [[ -f $tree/.tprd-tree-complete ]]; then
  say "container tree: $tree (cached)"
else
  say "container tree: building $tree (debootstrap $suite from $mirror, then ${#packages[@]} packages)"
  started=$(now_ms)
  rm -rf "$tree.partial"
  # No network: report what blocked the build, not a failure of tprd.
  if ! debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus "$suite" \
    "$tree.partial" "$mirror" >"$logs/debootstrap.log" 2>&1; then
    tail -n 20 "$logs/debootstrap.log"
    rm -rf "$tree.partial"
    skip "debootstrap $suite from $mirror failed (no mirror reachable?); see $logs/debootstrap.log"
  fi
  # apt inside the new tree, in a container of its own (its own /proc, /dev and /tmp; no boot):
  # no service is started, since no systemd runs in there.
  if ! systemd-nspawn -q -D "$tree.partial" --register=no --keep-unit --pipe \
    env DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get update -q && apt-get install -y -q --no-install-recommends "$@" && apt-get clean' \
    sh "${packages[@]}" >"$logs/apt.log" 2>&1; then
    tail -n 20 "$logs/apt.log"
    rm -rf "$tree.partial"
    skip "installing ${packages[*]} in the container tree failed; see $logs/apt.log"
  fi
  touch "$tree.partial/.tprd-tree-complete"
  mv "$tree.partial" "$tree"
  say "container tree built in $((($(now_ms) - started) / 1000))s"
  # Trees of older keys are not used again.
  for old in "$cache"/"$suite"-*; do
    [[ $old == "$tree" || ! -d $old ]] || rm -rf "$old"
  done
fi
flock -u 9
exec 9>&-

# A run killed by ctest's timeout (SIGKILL: no trap runs) leaves its container running, with
# its guest under TCG. Each run powers off the containers of dead runs first: machine names are
# tprd-systemd-<pid of the run>.
reap_dead_runs() {
  local pid name owner child deadline
  for pid in $(pgrep -x systemd-nspawn); do
    # The argument after -M (this script passes it so).
    name=$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -A1 -x -- -M | tail -n 1)
    [[ $name =~ ^tprd-systemd-([0-9]+)$ ]] || continue
    owner=${BASH_REMATCH[1]}
    kill -0 "$owner" 2>/dev/null && continue
    say "powering off $name, left running by dead run $owner"
    kill -TERM "$pid" 2>/dev/null
    deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      for child in $(pgrep -P "$pid"); do kill -KILL "$child" 2>/dev/null; done
      kill -KILL "$pid" 2>/dev/null
    fi
  done
}
reap_dead_runs

# ------------------------------------------------------------------------------ the container
nspawn_pid=
ctr_pid=

# Runs a command inside the container (every namespace of its PID 1), with a clean environment.
in_ctr() {
  nsenter -t "$ctr_pid" -a -- env -i PATH="$path_in_container" LC_ALL=C "$@"
}

cleanup() {
  local status=$?
  trap - EXIT
  if [[ -n $ctr_pid ]] && kill -0 "$ctr_pid" 2>/dev/null; then
    in_ctr journalctl -b --no-pager -o short-precise >"$logs/journal.txt" 2>&1
    in_ctr journalctl -b --no-pager -o json >"$logs/journal.json" 2>&1
    in_ctr journalctl -b --no-pager -u tprd -o verbose >"$logs/journal-tprd-verbose.txt" 2>&1
    in_ctr cat "$serial" >"$logs/guest-serial.log" 2>/dev/null
    # libvirt-guests would try to shut a running guest down at poweroff (and wait for it).
    timeout 30 nsenter -t "$ctr_pid" -a -- env -i PATH="$path_in_container" \
      virsh -c qemu:///system destroy "$domain" >/dev/null 2>&1
  fi
  if [[ -n $nspawn_pid ]] && kill -0 "$nspawn_pid" 2>/dev/null; then
    # SIGTERM to systemd-nspawn powers the container off in order (SIGRTMIN+3 to its systemd).
    kill -TERM "$nspawn_pid" 2>/dev/null
    local deadline=$((SECONDS + 60))
    while kill -0 "$nspawn_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    if kill -0 "$nspawn_pid" 2>/dev/null; then
      say "container did not power off within 60s: killing its PID 1 (and with it every process in it)"
      [[ -n $ctr_pid ]] && kill -KILL "$ctr_pid" 2>/dev/null
      deadline=$((SECONDS + 20))
      while kill -0 "$nspawn_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
      kill -KILL "$nspawn_pid" 2>/dev/null
    fi
    wait "$nspawn_pid" 2>/dev/null
    say "container stopped"
    # systemd-nspawn splits the cgroup it started in into supervisor/ and payload/ and, on a
    # host without systemd, leaves them behind when done: remove them where empty (rmdir fails
    # on a cgroup that still has processes).
    local hierarchy cgroup sub
    for hierarchy in unified systemd; do
      cgroup=$(awk -F: -v h="$hierarchy" '(h == "unified" && $1 == 0) || $2 == "name=systemd" && h == "systemd" {print $3}' /proc/self/cgroup)
      [[ -n $cgroup && -d /sys/fs/cgroup/$hierarchy ]] || continue
      for sub in payload supervisor; do
        [[ -d /sys/fs/cgroup/$hierarchy$cgroup/$sub ]] &&
          find "/sys/fs/cgroup/$hierarchy${cgroup%/}/$sub" -depth -type d -exec rmdir {} \; 2>/dev/null
      done
    done
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The build tree through an overlay (install.sh's `cmake --install` writes its manifest there;
# the writes land in a temporary directory nspawn removes), the sources read-only, both at
# their own paths: cmake_install.cmake names them absolutely.
# (The build's own source directory too, should it not be SOURCE_DIR.)
build_src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
mounts=(--bind-ro="$src")
if [[ -n $build_src && $build_src != "$src" && $src != "$build_src"/* ]]; then
  mounts+=(--bind-ro="$build_src")
fi
mounts+=(--overlay="$build::$build")
say "booting the container $machine"
boot_started=$(now_ms)
systemd-nspawn -D "$tree" --volatile=overlay -b --register=no --keep-unit -M "$machine" \
  --console=passive --link-journal=no --private-network "${mounts[@]}" \
  >"$logs/container-console.log" 2>&1 &
nspawn_pid=$!

find_ctr_pid() {
  local child
  kill -0 "$nspawn_pid" 2>/dev/null || return 2
  for child in $(pgrep -P "$nspawn_pid"); do
    # The container's PID 1: PID 1 in its own (second) PID namespace.
    if awk '/^NSpid:/ {exit !(NF == 3 && $3 == 1)}' "/proc/$child/status" 2>/dev/null; then
      ctr_pid=$child
      return 0
    fi
  done
  return 1
}
if ! wait_for "the container's PID 1" 30 find_ctr_pid; then
  tail -n 30 "$logs/container-console.log"
  die "systemd-nspawn started no container (console above, $logs/container-console.log)"
fi

system_state=
system_booted() {
  system_state=$(in_ctr systemctl is-system-running 2>/dev/null)
  [[ $system_state == running || $system_state == degraded ]]
}
if ! wait_for "the container's systemd to finish booting" 120 system_booted; then
  tail -n 30 "$logs/container-console.log"
  die "the container's systemd did not finish booting (state '$system_state')"
fi
say "container booted in $((($(now_ms) - boot_started) / 1000))s: $system_state, $(in_ctr systemctl --version | head -n 1)"
if [[ $system_state == degraded ]]; then
  say "failed units (not tprd's): $(in_ctr systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
fi
log_level=$(in_ctr systemctl log-level)

# ------------------------------------------------------------------------------ libvirtd and the guest
# On a host with cgroup v1 controllers (this test machine: hybrid, no systemd on the host)
# systemd-nspawn mounts them read-only in the container, and libvirtd then fails every domain
# start ("Failed to create v1 controller cpu for group: Read-only file system"); so it does with
# `cgroup_controllers = [ ]` (measured). Only then, the container's qemu.conf limits libvirt to
# the one hierarchy the container may write, name=systemd (process tracking, no resource
# controller), and libvirtd is restarted if it runs already (libvirt-guests.service starts it at
# boot). A host with writable cgroups keeps Debian's qemu.conf.
v1_cpu_controller_readonly() {
  in_ctr sh -c '[ -d /sys/fs/cgroup/cpu ] || exit 1
    mkdir /sys/fs/cgroup/cpu/tprd-probe 2>/dev/null || exit 0
    rmdir /sys/fs/cgroup/cpu/tprd-probe; exit 1'
}
if v1_cpu_controller_readonly; then
  say "the container's cgroup v1 controllers are read-only: its qemu.conf gets cgroup_controllers = [ \"name=systemd\" ]"
  in_ctr sh -c 'printf "\n# tprd_systemd_test: cgroup v1 controllers are read-only in this container\ncgroup_controllers = [ \"name=systemd\" ]\n" >> /etc/libvirt/qemu.conf'
  in_ctr systemctl try-restart libvirtd.service || die "cannot restart libvirtd in the container"
fi
libvirt_answers() { in_ctr virsh -c qemu:///system version >/dev/null 2>&1; }
if ! wait_for "libvirtd (Debian's units, socket activated) to answer" 120 libvirt_answers; then
  in_ctr systemctl status libvirtd --no-pager -l | tail -n 20
  die "libvirtd does not answer inside the container"
fi

in_ctr install -D -m 0644 "$guest_elf" /var/lib/libvirt/images/$domain.elf ||
  die "cannot copy the test guest into the container"
# As tests/support/libvirt_test_env.cc's TestDomainXml: TCG, 2 vCPUs, QEMU's own TPR patcher off,
# the serial console in a file; no disk, no NIC (the container has no network), no video.
cat >"$logs/$domain.xml" <<EOF
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$domain</name>
  <memory unit='MiB'>64</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='i686' machine='pc'>hvm</type>
    <kernel>/var/lib/libvirt/images/$domain.elf</kernel>
  </os>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <serial type='file'><source path='$serial'/><target port='0'/></serial>
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline><qemu:arg value='-global'/><qemu:arg value='apic.vapic=off'/></qemu:commandline>
</domain>
EOF
in_ctr sh -c "cat > /run/$domain.xml" <"$logs/$domain.xml"
# Without a guest (libvirtd cannot start QEMU in this container: something outside tprd) the
# test still checks what needs none (install, READY, hardening, STOPPING=1, the journal) and
# then reports SKIP with the reason, unless one of those failed.
guest_blocked=
if ! in_ctr virsh -c qemu:///system create "/run/$domain.xml" >"$logs/virsh-create.log" 2>&1; then
  cat "$logs/virsh-create.log"
  in_ctr tail -n 20 "/var/log/libvirt/qemu/$domain.log" 2>/dev/null
  guest_blocked="libvirtd in the container cannot start the QEMU test guest: $(tr '\n' ' ' <"$logs/virsh-create.log")"
  say "no guest: $guest_blocked; checking what needs none"
fi
guest_started=$(now_ms)

serial_count() { in_ctr grep -c "$1" "$serial" 2>/dev/null || echo 0; }
# Every vCPU printed `rounds` more STAT lines than `before` (an array, by cpu), all with fail=0.
stat_lines() { in_ctr grep "^STAT cpu=$1 " "$serial" 2>/dev/null; }
declare -a stat_before=(0 0)
mark_stats() { for cpu in 0 1; do stat_before[cpu]=$(stat_lines $cpu | wc -l); done; }
stats_advanced() {
  local rounds=$1 cpu
  for cpu in 0 1; do
    (($(stat_lines $cpu | wc -l) >= stat_before[cpu] + rounds)) || return 1
  done
}
check_guest_passes() {
  local when=$1
  if ! wait_for "2 more STAT lines from each vCPU ($when)" 120 stats_advanced 2; then
    fail "guest $when: no new STAT lines from every vCPU; last serial lines: $(in_ctr tail -n 5 "$serial" | tr '\n' '|')"
    return
  fi
  local bad
  bad=$(in_ctr grep -E '^FAIL |^STAT .* fail=[1-9]' "$serial")
  if [[ -n $bad ]]; then
    fail "guest $when: $(echo "$bad" | head -n 3 | tr '\n' '|')"
  else
    pass "guest $when: every vCPU's checks pass (no FAIL line, fail=0)"
  fi
}

# ------------------------------------------------------------------------------ the guest's strategy word
# Reads the blob's strategy word from guest memory with HMP `xp` (works while tprd holds the
# gdbstub, and without tprd): the blob sits page aligned in 0xC0000-0xEFFFF (as
# tests/e2e/tprd_e2e_hal_test.cc's ReadBlobState). Prints exact/mmio/cr8/unknown(N)/none.
layout() { awk -v name="$1" '$1 == "#define" && $2 == name {print $3}' "$blob_layout"; }
blob_magic=$(layout TPRD_BLOB_MAGIC)
blob_hdr_data_pa=$(layout TPRD_BLOB_HDR_DATA_PA)
blob_strategy_word=$(layout TPRD_BLOB_STRATEGY_WORD)
blob_data_offset=$(layout TPRD_BLOB_DATA_OFFSET)
[[ -n $blob_magic && -n $blob_hdr_data_pa && -n $blob_strategy_word && -n $blob_data_offset ]] ||
  die "cannot read the blob layout from $blob_layout"
strategy_word() {
  local dump
  dump=$(in_ctr virsh -c qemu:///system qemu-monitor-command "$domain" --hmp "xp /49152wx 0xc0000") ||
    {
      echo "unreadable"
      return
    }
  local blob_pa
  blob_pa=$(python3 -c '
import sys
magic = int(sys.argv[1], 0); hdr_data_pa = int(sys.argv[2], 0)
words = {}
for line in sys.stdin:
    if ":" not in line: continue
    addr, rest = line.split(":", 1)
    base = int(addr, 16)
    for i, w in enumerate(rest.split()):
        words[base + 4 * i] = int(w, 16)
for pa in range(0xC0000, 0xF0000, 0x1000):
    if words.get(pa) == magic:
        print(pa, words.get(pa + hdr_data_pa, 0)); break
' "$blob_magic" "$blob_hdr_data_pa" <<<"$dump")
  if [[ -z $blob_pa ]]; then
    echo "none"
    return
  fi
  local data_pa=${blob_pa#* }
  local word_pa=$((data_pa + blob_strategy_word - blob_data_offset))
  local out word
  out=$(in_ctr virsh -c qemu:///system qemu-monitor-command "$domain" --hmp "xp /1wx $word_pa")
  word=$(tr -d '\r' <<<"$out" | awk -F: 'NF > 1 {print $2; exit}' | awk '{print $1}')
  case $((word)) in
    $(($(layout TPRD_BLOB_STRATEGY_EXACT)))) echo exact ;;
    $(($(layout TPRD_BLOB_STRATEGY_MMIO)))) echo mmio ;;
    $(($(layout TPRD_BLOB_STRATEGY_CR8)))) echo cr8 ;;
    *) echo "unknown($word)" ;;
  esac
}

booted_guest() { (($(serial_count '^STAT cpu=1 ') >= 1)); }
# (The guest boots while tprd is installed below; this is checked before enable.)

# ------------------------------------------------------------------------------ install and start
# deploy/install.sh as an operator runs it, with --no-build: the tree is built on the host
# (the container has no compiler); it installs, runs systemd-sysusers and
# `systemctl enable --now tprd`, which returns once tprd sent READY=1 (or the start failed).
say "deploy/install.sh --no-build $build /usr"
started=$(now_ms)
if ! in_ctr sh "$src/deploy/install.sh" --no-build "$build" /usr >"$logs/install.log" 2>&1; then
  tail -n 30 "$logs/install.log"
  in_ctr systemctl status tprd --no-pager -l | tail -n 30
  die "deploy/install.sh failed (tprd did not start under systemd?); see $logs/install.log"
fi
install_ms=$(($(now_ms) - started))
pass "deploy/install.sh installed tprd and started its unit (${install_ms} ms, including cmake --install)"

# `systemctl show` properties into an associative array `unit`.
declare -A unit
show_unit() {
  unit=()
  local line
  while IFS= read -r line; do
    unit[${line%%=*}]=${line#*=}
  done < <(in_ctr systemctl show tprd.service -p ActiveState,SubState,Result,Type,NotifyAccess \
    -p TimeoutStartUSec,TimeoutStopUSec,MainPID,StatusText,ExecMainStatus,ExecMainCode \
    -p ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic,NRestarts)
}
# systemd's own timespans ("3min", "1min 30s", "90s") in seconds.
timespan_s() {
  python3 -c '
import re, sys
total = 0
units = {"ms": 0.001, "s": 1, "min": 60, "h": 3600}
for n, u in re.findall(r"([\d.]+)\s*(ms|min|s|h)", sys.argv[1]):
    total += float(n) * units[u]
print(int(total))' "$1"
}

check_started() {
  local when=$1 adopted=$2
  show_unit
  if [[ ${unit[ActiveState]} == active && ${unit[SubState]} == running ]]; then
    pass "$when: tprd.service active (running), Type=${unit[Type]}, NotifyAccess=${unit[NotifyAccess]}"
  else
    fail "$when: tprd.service is ${unit[ActiveState]} (${unit[SubState]}), result ${unit[Result]}"
    return
  fi
  local ready_ms=$(((unit[ActiveEnterTimestampMonotonic] - unit[ExecMainStartTimestampMonotonic]) / 1000))
  local timeout_s
  timeout_s=$(timespan_s "${unit[TimeoutStartUSec]}")
  say "$when: exec to READY=1 ${ready_ms} ms; TimeoutStartSec ${unit[TimeoutStartUSec]}; status '${unit[StatusText]}'"
  if ((ready_ms < timeout_s * 1000)); then
    pass "$when: READY=1 after ${ready_ms} ms, within TimeoutStartSec (${timeout_s}s)"
  else
    fail "$when: READY=1 after ${ready_ms} ms, not within TimeoutStartSec (${timeout_s}s)"
  fi
  if [[ ${unit[StatusText]} == *"; $adopted patched domain(s) adopted" ]]; then
    pass "$when: tprd's STATUS= says $adopted patched domain(s) adopted"
  else
    fail "$when: expected STATUS= '...; $adopted patched domain(s) adopted', got '${unit[StatusText]}'"
  fi
}
check_started "first start (install.sh)" 0

# The start timeout must outlast what READY legitimately waits for: the adopt of every running
# patched guest, bounded by tprd at ${adopt_deadline_s}s, plus the start around it.
timeout_s=$(timespan_s "${unit[TimeoutStartUSec]}")
if ((timeout_s >= adopt_deadline_s + start_margin_s)); then
  pass "TimeoutStartSec ${unit[TimeoutStartUSec]} >= adopt deadline ${adopt_deadline_s}s + ${start_margin_s}s"
else
  fail "TimeoutStartSec ${unit[TimeoutStartUSec]} (${timeout_s}s) < adopt deadline ${adopt_deadline_s}s + ${start_margin_s}s: systemd would kill a tprd still adopting guests"
fi

# ------------------------------------------------------------------------------ the hardening, as applied
check_hardening() {
  local pid=${unit[MainPID]} status
  status=$(in_ctr cat "/proc/$pid/status") || {
    fail "cannot read /proc/$pid/status"
    return
  }
  local capbnd capeff nnp seccomp
  capbnd=$(awk '/^CapBnd:/ {print $2}' <<<"$status")
  capeff=$(awk '/^CapEff:/ {print $2}' <<<"$status")
  nnp=$(awk '/^NoNewPrivs:/ {print $2}' <<<"$status")
  seccomp=$(awk '/^Seccomp:/ {print $2}' <<<"$status")
  # CAP_CHOWN 0, CAP_DAC_OVERRIDE 1, CAP_FOWNER 3, CAP_SYS_PTRACE 19: 0x8000b.
  if [[ $((16#$capbnd)) -eq $((0x8000b)) && $((16#$capeff)) -eq $((0x8000b)) ]]; then
    pass "hardening: capability bounding and effective sets are CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_SYS_PTRACE (0x$capbnd)"
  else
    fail "hardening: CapBnd 0x$capbnd CapEff 0x$capeff, expected 0x8000b"
  fi
  [[ $nnp == 1 ]] && pass "hardening: NoNewPrivs 1" || fail "hardening: NoNewPrivs $nnp"
  [[ $seccomp == 2 ]] && pass "hardening: seccomp filter on (Seccomp 2)" || fail "hardening: Seccomp $seccomp"
  local ns
  for ns in net mnt; do
    if [[ $(in_ctr readlink "/proc/$pid/ns/$ns") != "$(in_ctr readlink /proc/1/ns/$ns)" ]]; then
      pass "hardening: tprd has its own $ns namespace"
    else
      fail "hardening: tprd shares the $ns namespace of the container's PID 1"
    fi
  done
}
check_hardening

# ------------------------------------------------------------------------------ enable the guest
tprctl() { in_ctr tprctl "$@"; }
status_field() { tprctl --json status "$domain" | python3 -c 'import json,sys; print(json.load(sys.stdin).get(sys.argv[1]))' "$1"; }
patched_mmio() { [[ $(status_field state) == patched && $(status_field strategy) == mmio ]]; }
if [[ -z $guest_blocked ]]; then
  if ! wait_for "the test guest's first STAT line on vCPU 1" 180 booted_guest; then
    die "the test guest did not boot in the container; serial: $(in_ctr tail -n 5 "$serial" | tr '\n' '|')"
  fi
  say "guest booted $((($(now_ms) - guest_started) / 1000))s after virsh create"

  started=$(now_ms)
  if tprctl enable "$domain" --strategy mmio >"$logs/enable.log" 2>&1; then
    pass "tprctl enable $domain --strategy mmio under the unit's hardening ($(($(now_ms) - started)) ms)"
  else
    cat "$logs/enable.log"
    in_ctr journalctl -u tprd -b --no-pager -o cat | tail -n 20
    die "tprctl enable failed under systemd"
  fi
  if wait_for "tprctl status: patched, mmio" 60 patched_mmio; then
    pass "tprctl status: patched, strategy mmio"
  else
    fail "tprctl status: state $(status_field state), strategy $(status_field strategy)"
  fi
  # "before" is QEMU's APIC trace, written into the domain's libvirt directory by QEMU and
  # removed by tprd: both must work under the unit's ProtectSystem=strict.
  trace_s=$(status_field before_trace_seconds)
  if python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > 0 else 1)' "$trace_s"; then
    pass "before the first patch: QEMU's APIC trace, ${trace_s} s, $(status_field before_trace_tpr_reads) TPR reads"
  else
    fail "no APIC trace before the first patch under the unit: $(status_field before_trace_error)"
  fi
  if in_ctr sh -c 'ls /var/lib/libvirt/qemu/domain-*/tprd-apic-trace.log' >/dev/null 2>&1; then
    fail "tprd left its APIC trace file in the domain's directory"
  else
    pass "no APIC trace file left in the domain's directory"
  fi
  word=$(strategy_word)
  [[ $word == mmio ]] && pass "guest's strategy word after enable: mmio" ||
    fail "guest's strategy word after enable: $word (expected mmio)"
  mark_stats
  check_guest_passes "patched (mmio)"
fi

# ------------------------------------------------------------------------------ stop: STOPPING=1, exact
stop_and_check() {
  local when=$1 pid=${unit[MainPID]}
  local started
  # systemd logs each sd_notify message it gets at debug level ("Got notification message from
  # PID ..."): on for the stop only. (Left on, the children systemd forks for a start log at debug
  # level too, still in init.scope, and journald then files the new tprd's first lines under
  # init.scope instead of tprd.service: measured, they were missing from journalctl -u tprd.)
  in_ctr systemctl log-level debug || fail "systemctl log-level debug failed"
  started=$(now_ms)
  if in_ctr systemctl stop tprd; then
    say "$when: systemctl stop tprd returned after $(($(now_ms) - started)) ms"
  else
    fail "$when: systemctl stop tprd failed"
  fi
  in_ctr systemctl log-level "$log_level"
  show_unit
  if [[ ${unit[ActiveState]} == inactive && ${unit[Result]} == success && ${unit[ExecMainStatus]} == 0 ]]; then
    pass "$when: tprd exited 0, unit inactive, result success"
  else
    fail "$when: unit ${unit[ActiveState]}, result ${unit[Result]}, exit status ${unit[ExecMainStatus]}"
  fi
  if in_ctr journalctl -u tprd -b --no-pager -o cat |
    grep -q "Got notification message from PID $pid (STOPPING=1"; then
    pass "$when: systemd got STOPPING=1 from tprd's PID $pid"
  else
    fail "$when: no 'Got notification message from PID $pid (STOPPING=1' in journalctl -u tprd"
  fi
  [[ -z $guest_blocked ]] || return 0
  local word
  word=$(strategy_word)
  [[ $word == exact ]] && pass "$when: the guest's strategy word is exact" ||
    fail "$when: the guest's strategy word is $word (expected exact)"
  mark_stats
  check_guest_passes "$when, without tprd"
}
stop_and_check "systemctl stop"

# ------------------------------------------------------------------------------ start again: adopt before READY
started=$(now_ms)
if in_ctr systemctl start tprd; then
  say "systemctl start tprd (again, the guest running) returned after $(($(now_ms) - started)) ms"
else
  fail "systemctl start tprd (again) failed"
fi
if [[ -z $guest_blocked ]]; then
  check_started "start with a guest to adopt" 1
  patched_again() { [[ $(status_field state) == patched ]]; }
  if wait_for "tprctl status after adopt: patched" 60 patched_again; then
    pass "after adopt: tprctl status patched, strategy $(status_field strategy), guest's strategy word $(strategy_word)"
  else
    fail "after adopt: tprctl status state $(status_field state)"
  fi
else
  check_started "second start" 0
fi
stop_and_check "second systemctl stop"

# ------------------------------------------------------------------------------ a start that fails: priority 3
# A drop-in points the state directory at /usr, which ProtectSystem=strict makes read-only:
# tprd logs an error (priority 3) and exits 1 before READY=1; the start job fails.
dropin=/run/systemd/system/tprd.service.d/tprd-systemd-test.conf
in_ctr mkdir -p "$(dirname "$dropin")"
in_ctr sh -c "printf '[Service]\nExecStart=\nExecStart=/usr/sbin/tprd --config /etc/tprd/tprd.conf --state-dir /usr/lib/tprd-systemd-test\nRestart=no\n' > $dropin"
in_ctr systemctl daemon-reload
if in_ctr systemctl start tprd 2>"$logs/failing-start.log"; then
  fail "tprd started with its state directory on read-only /usr (ProtectSystem=strict not applied?)"
else
  show_unit
  pass "a start that fails before READY=1 fails the start job (unit ${unit[ActiveState]}, result ${unit[Result]}, exit ${unit[ExecMainStatus]})"
fi
in_ctr rm -f "$dropin"
in_ctr systemctl daemon-reload
in_ctr systemctl reset-failed tprd 2>/dev/null

# ------------------------------------------------------------------------------ the journal's priorities
in_ctr journalctl -u tprd -b --no-pager -o json >"$logs/journal-tprd.json" ||
  fail "journalctl -u tprd -o json failed"
python3 - "$logs/journal-tprd.json" <<'EOF' >"$logs/priorities.txt"
import json, re, sys
# Only tprd's own lines (its stderr stream), not systemd's about the unit.
lines = []
for raw in open(sys.argv[1]):
    e = json.loads(raw)
    if e.get("SYSLOG_IDENTIFIER") != "tprd":
        continue
    msg = e.get("MESSAGE")
    if isinstance(msg, list):  # non-UTF-8 messages come as byte arrays
        msg = bytes(msg).decode("utf-8", "replace")
    lines.append((int(e.get("PRIORITY", -1)), msg))
for priority, msg in lines:
    print(f"{priority} {msg}")
EOF
say "tprd's journal lines (priority message):"
sed 's/^/  /' "$logs/priorities.txt" | cut -c1-200
expect_priority() {
  local priority=$1 pattern=$2 what=$3
  if grep -Eq "^$priority $pattern" "$logs/priorities.txt"; then
    pass "journal: $what at priority $priority"
  else
    fail "journal: no priority-$priority line matching '$pattern' ($what)"
  fi
}
expect_priority 6 "serving on " "start (info)"
[[ -n $guest_blocked ]] || expect_priority 6 ".*: adopted a patched guest" "adopt (info)"
expect_priority 6 "received Terminated; leaving every patched guest on the exact strategy" "SIGTERM (info)"
expect_priority 6 "stopped$" "clean stop (info)"
expect_priority 3 "cannot create state directory /usr/lib/tprd-systemd-test: Read-only file system" "failed start (error)"
if grep -Eq '^-?[0-9]+ <[0-9]>' "$logs/priorities.txt"; then
  fail "journal: a line still carries its '<N>' prefix (journald did not parse it)"
else
  pass "journal: every line's '<N>' prefix became its priority"
fi
unexpected=$(grep -E '^[0-4] ' "$logs/priorities.txt" | grep -v 'cannot create state directory /usr/lib/tprd-systemd-test')
if [[ -n $unexpected ]]; then
  fail "journal: warnings or errors besides the provoked one: $(echo "$unexpected" | head -n 5 | tr '\n' '|')"
else
  pass "journal: no warning or error besides the provoked one"
fi

# ------------------------------------------------------------------------------ verdict
if ((failures)); then
  echo "FAIL: tprd_systemd_test ($failures failure(s)); logs in $logs"
  exit 1
fi
[[ -z $guest_blocked ]] || skip "every check without a guest passed, but $guest_blocked"
echo "PASS: tprd_systemd_test; logs in $logs"
exit 0
