#!/usr/bin/env bash
# A second, fully separate libvirtd on this same machine, used as the target of a live
# migration out of the system daemon (qemu:///system). No KVM needed: the guest runs on TCG.
#
#   two-libvirtd.sh up                     start the second libvirtd (+ its virtlogd), print its URI
#   two-libvirtd.sh uri                    print the second daemon's URI
#   two-libvirtd.sh migrate DOMAIN [ARGS]  live-migrate DOMAIN qemu:///system -> second daemon and
#                                          check it runs there (ARGS go to `virsh migrate`)
#   two-libvirtd.sh migrate-back DOMAIN    live-migrate DOMAIN second daemon -> qemu:///system
#                                          (no --p2p: the second daemon cannot see the system's socket)
#   two-libvirtd.sh down                   destroy its domains, stop it, remove its directory
#
# Environment: TPRD_MIG2_DIR (default /var/tmp/mig-probe/d2), TPRD_MIG2_SRC_URI (default
# qemu:///system). Must run as root. See docs/design-notes/migration-two-libvirtd.md.
#
# How it stays out of the system daemon's way:
# - The second libvirtd and virtlogd run in their own mount namespace (unshare --mount) in which
#   /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are
#   bind mounts of fresh directories under $DIR: libvirtd's system-mode paths are compiled in,
#   so a namespace is the only way to give it its own state, sockets, logs and config.
# - Its client sockets are moved out of the namespace (unix_sock_dir = $DIR/sock) so that virsh
#   and the source daemon, which live in the normal namespace, can reach it.
# - Its host_uuid differs from the machine's: libvirt refuses a migration whose two ends report
#   the same host UUID ("Attempt to migrate guest to the same host <uuid>").
# - Its pid files are explicit (-p): the defaults /run/libvirtd.pid and /run/virtlogd.pid are
#   outside /run/libvirt, i.e. shared with the system daemons.
# - The system daemon is never stopped, reconfigured or signalled, and only the domain named on
#   the command line is migrated out of it.
set -euo pipefail

DIR=${TPRD_MIG2_DIR:-/var/tmp/mig-probe/d2}
SRC_URI=${TPRD_MIG2_SRC_URI:-qemu:///system}
# qemu+unix (not qemu:///system?socket=...): with --p2p the *source daemon* opens this URI, and
# only an explicit unix transport makes libvirt treat a host-less URI as another daemon.
URI="qemu+unix:///system?socket=$DIR/sock/libvirt-sock"
# The system paths that are private in the second daemon's namespace. Anything a migrated
# domain uses (kernel, disks, serial file) must live elsewhere, or the two ends see different
# files.
PRIVATE_DIRS=(/etc/libvirt /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt)
START_TIMEOUT=30 # s for the second libvirtd to answer
STOP_TIMEOUT=15  # s for each daemon to exit after SIGTERM
MIGRATE_TIMEOUT=180
STAT_TIMEOUT=20 # s for the guest to print new STAT lines after the migration

die() {
  echo "two-libvirtd: $*" >&2
  exit 1
}
# up and down rm -rf $DIR: refuse anything but a dedicated absolute directory.
[[ $DIR == /*/* && $DIR != *..* ]] || die "TPRD_MIG2_DIR must be an absolute path at least two levels deep: $DIR"
log() { echo "two-libvirtd: $*" >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
is_up() { pid_alive "$DIR/libvirtd.pid" && virsh -q -c "$URI" version >/dev/null 2>&1; }

# Sends SIGTERM to the process in pid file $1 (only that pid), waits, then SIGKILL.
stop_pidfile() {
  local pidfile=$1 pid
  pid_alive "$pidfile" || return 0
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((STOP_TIMEOUT * 10))); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "pid $pid ($pidfile) ignored SIGTERM for ${STOP_TIMEOUT}s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# Pids of the processes still living in the second daemon's mount namespace.
pids_in_namespace() {
  [[ -f $DIR/mntns ]] || return 0
  local ns p
  ns=$(cat "$DIR/mntns")
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/ns/mnt" 2>/dev/null) == "$ns" ]] && echo "${p#/proc/}"
  done
  return 0
}

cmd_up() {
  if is_up; then
    echo "$URI"
    return 0
  fi
  # A stale directory from a crashed run: no process of ours uses it any more.
  [[ -z $(pids_in_namespace) ]] || die "processes still in the old namespace: $(pids_in_namespace | xargs); run 'down'"
  rm -rf "$DIR"
  mkdir -p "$DIR"/{etc,run,lib,log,cache,sock,mig}
  # QEMU (user libvirt-qemu) of the *source* daemon connects to the migration socket in
  # $DIR/mig, so the path must be traversable by it.
  chmod 0755 "$DIR"

  # Config: a copy of the system's (same QEMU user/group, same security drivers), minus the
  # objects that would make the second daemon act on the host: no defined domains, networks
  # (an autostarted network would create virbr0 a second time) or storage pools.
  cp -a /etc/libvirt/. "$DIR/etc/"
  rm -rf "$DIR/etc/qemu" "$DIR/etc/storage"
  mkdir -p "$DIR/etc/qemu/networks/autostart"
  cat >>"$DIR/etc/libvirtd.conf" <<EOF

# --- two-libvirtd.sh: second daemon on the same host ---
# Another host UUID than the machine's, or the migration is refused as going to the same host.
host_uuid = "$(cat /proc/sys/kernel/random/uuid)"
# Client sockets outside the namespace, where virsh and the system daemon can reach them.
unix_sock_dir = "$DIR/sock"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  cat >>"$DIR/etc/qemu.conf" <<EOF

# --- two-libvirtd.sh: second daemon on the same host ---
# Both daemons would name their QEMU cgroups machine/qemu-<id>-<name>.libvirt-qemu with ids
# counted independently; a collision would let one daemon remove the other's cgroup.
cgroup_controllers = [ ]
# The kernel and serial file are shared with the system daemon, which keeps its own ownership
# records in XATTRs: the second daemon must not ref-count them too.
remember_owner = 0
# VNC autoport ranges that cannot collide with the system daemon's (5900-...).
remote_display_port_min = 5950
remote_display_port_max = 5999
EOF

  # State dirs: /var/lib/libvirt/qemu must belong to the QEMU user, as the system's does.
  mkdir -p "$DIR/lib/qemu"
  chown --reference=/var/lib/libvirt/qemu "$DIR/lib/qemu" "$DIR/mig"
  chmod --reference=/var/lib/libvirt/qemu "$DIR/lib/qemu"
  chmod 0770 "$DIR/mig"

  # The namespace lives as long as a process is in it: the two daemons (and their QEMUs).
  # --propagation private: none of these bind mounts leaks back into the host's namespace.
  # shellcheck disable=SC2016  # expanded by the inner shell, $1 is $DIR
  unshare --mount --propagation private -- bash -euc '
    dir=$1
    mount --bind "$dir/etc" /etc/libvirt
    mount --bind "$dir/run" /run/libvirt
    mount --bind "$dir/lib" /var/lib/libvirt
    mount --bind "$dir/log" /var/log/libvirt
    mount --bind "$dir/cache" /var/cache/libvirt
    readlink /proc/self/ns/mnt >"$dir/mntns"
    # Its own virtlogd: libvirtd talks to /run/libvirt/virtlogd-sock, which is private here.
    virtlogd -d -p "$dir/virtlogd.pid"
    libvirtd -d -p "$dir/libvirtd.pid"
  ' two-libvirtd-ns "$DIR"

  local deadline=$((SECONDS + START_TIMEOUT))
  until is_up; do
    ((SECONDS < deadline)) || die "second libvirtd did not answer on $URI within ${START_TIMEOUT}s (log: $DIR/log/libvirtd.log)"
    sleep 0.2
  done
  echo "$URI"
}

cmd_down() {
  if is_up; then
    # Every domain on the second daemon got there by migration from this script.
    local dom
    for dom in $(virsh -q -c "$URI" list --all --name); do
      virsh -q -c "$URI" destroy "$dom" >/dev/null 2>&1 || true
      virsh -q -c "$URI" undefine "$dom" >/dev/null 2>&1 || true
    done
  fi
  stop_pidfile "$DIR/libvirtd.pid"
  stop_pidfile "$DIR/virtlogd.pid"
  # Anything left in the namespace was started by the second daemon (a QEMU it lost track of).
  local left
  mapfile -t left < <(pids_in_namespace)
  if ((${#left[@]})); then
    log "killing leftover processes in the second daemon's namespace: ${left[*]}"
    kill -KILL "${left[@]}" 2>/dev/null || true
    sleep 0.5
  fi
  # With its last process gone the namespace and its bind mounts are gone too.
  rm -rf "$DIR"
  log "second libvirtd stopped, $DIR removed"
}

# Fails if domain $2 on $1 uses a file under one of the namespace-private directories.
check_paths() {
  local uri=$1 dom=$2 path d
  while read -r path; do
    for d in "${PRIVATE_DIRS[@]}"; do
      if [[ $path == "$d"/* ]]; then
        die "$dom uses $path, which the second daemon sees differently (private $d)"
      fi
    done
  done < <(virsh -c "$uri" dumpxml "$dom" |
    sed -n -e "s|.*<kernel>\(.*\)</kernel>.*|\1|p" -e "s|.*<initrd>\(.*\)</initrd>.*|\1|p" \
      -e "s|.*<source [^>]*\(file\|path\)='\([^']*\)'.*|\2|p")
}

# The guest's serial log, if it is a file.
serial_file() {
  virsh -c "$1" dumpxml "$2" | sed -n "/<serial type='file'>/,/<\/serial>/s|.*<source path='\([^']*\)'.*|\1|p" | head -n 1
}

# migrate FROM_URI TO_URI DOMAIN [virsh migrate args...]
do_migrate() {
  local from=$1 to=$2 dom=$3
  shift 3
  is_up || die "second libvirtd is not up (run '$0 up')"
  [[ $(virsh -c "$from" domstate "$dom" 2>/dev/null) == running ]] || die "$dom is not running on $from"
  check_paths "$from" "$dom"

  local serial size_before=0 head_before=
  serial=$(serial_file "$from" "$dom")
  if [[ -n $serial && -f $serial ]]; then
    size_before=$(stat -c %s "$serial")
    head_before=$(head -c 256 "$serial" | md5sum)
  fi

  # QEMU to QEMU over a UNIX socket (libvirt >= 6.6): the destination QEMU listens on it, the
  # source QEMU connects to it; no TCP port at all. The path is outside the private dirs so both
  # QEMUs see it; QEMU removes it when the migration ends.
  local sock="$DIR/mig/$dom.sock" t0 t1
  rm -f "$sock"
  t0=$(now_ms)
  timeout "$MIGRATE_TIMEOUT" virsh -c "$from" migrate --live "$dom" "$to" --migrateuri "unix://$sock" "$@" ||
    die "virsh migrate $dom $from -> $to failed"
  t1=$(now_ms)

  [[ $(virsh -c "$to" domstate "$dom" 2>/dev/null) == running ]] ||
    die "$dom is not running on $to after the migration: $(virsh -c "$to" domstate "$dom" 2>&1)"
  [[ $(virsh -c "$from" domstate "$dom" 2>/dev/null) != running ]] || die "$dom still running on $from"
  log "migrated $dom in $((t1 - t0)) ms (virsh migrate wall time); now running on $to"
  virsh -c "$to" domjobinfo "$dom" --completed 2>/dev/null |
    grep -E '^(Time elapsed|Total downtime|Data total|Data processed):' | sed 's/^/  /' >&2 || true

  # The guest must go on: new STAT lines after the migration, all with fail=0. Offsets are in
  # bytes: the two QEMUs write the same file one after the other.
  if [[ -z $serial ]]; then
    log "no file serial: not checking the guest's output"
    return 0
  fi
  local size_after deadline=$((SECONDS + STAT_TIMEOUT)) since_start since_mig
  size_after=$(stat -c %s "$serial")
  # Without append='on' the destination opens the file with O_TRUNC at its start, wiping the
  # guest's output so far (measured: 3463 -> 320 bytes).
  if ((size_after < size_before)) || [[ $(head -c 256 "$serial" | md5sum) != "$head_before" ]]; then
    die "$serial was truncated by the destination ($size_before -> $size_after bytes): give the domain <serial type='file'><source path='...' append='on'/>"
  fi
  until (($(tail -c +"$((size_after + 1))" "$serial" | grep -ac '^STAT ') >= 2)); do
    ((SECONDS < deadline)) || die "no new STAT lines from $dom within ${STAT_TIMEOUT}s after the migration ($serial)"
    sleep 0.5
  done
  since_start=$(tail -c +"$((size_before + 1))" "$serial")
  since_mig=$(tail -c +"$((size_after + 1))" "$serial")
  # fail=[1-9], not "not fail=0": the last line may still be half written.
  if grep -aqE -e '^STAT .*fail=[1-9]' -e '^FAIL' <<<"$since_start"; then
    die "guest reports failures around the migration: $(grep -a -e '^FAIL' -e 'fail=[1-9]' <<<"$since_start" | head -n 3)"
  fi
  log "guest runs on: $(grep -a '^STAT ' <<<"$since_mig" | tail -n 1)"
}

[[ $(id -u) -eq 0 ]] || die "run as root"
case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  uri) echo "$URI" ;;
  migrate)
    [[ -n ${2:-} ]] || die "usage: $0 migrate DOMAIN [virsh migrate args]"
    do_migrate "$SRC_URI" "$URI" "${@:2}"
    ;;
  migrate-back)
    [[ -n ${2:-} ]] || die "usage: $0 migrate-back DOMAIN [virsh migrate args]"
    # With --p2p the second daemon would have to reach the system daemon's socket, which is
    # hidden behind its private /run/libvirt (and it reads qemu:///system as itself).
    for arg in "${@:3}"; do [[ $arg != --p2p ]] || die "migrate-back does not support --p2p"; done
    do_migrate "$URI" "$SRC_URI" "${@:2}"
    ;;
  *) die "usage: $0 up|down|uri|migrate DOMAIN|migrate-back DOMAIN" ;;
esac
