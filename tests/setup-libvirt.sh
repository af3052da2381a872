#!/usr/bin/env bash
# Makes libvirtd (qemu:///system) usable for tprd's integration tests on a Debian 12 machine,
# with or without systemd. Packages come from tests/install-deps.sh. Idempotent: safe to run
# twice; starts virtlogd and libvirtd only when they are not already running.
#
# qemu.conf policy (never clobber a real host's configuration):
# - No /etc/libvirt/qemu.conf (libvirt-daemon-system not installed, the CI/container case):
#   write one with the test settings.
# - A setting the file lacks: append it (in a marked block).
# - A setting the file has with another value: replace it only in CI or a container
#   (CI=true, TPRD_CI=1, /.dockerenv, /run/.containerenv); elsewhere warn and keep it.
# Test settings: user/group "root" (tprd's gdbstub socket lives in a root-only directory) and,
# where cgroupfs is read-only or we run in a container, cgroup_controllers = [ ].
set -euo pipefail

readonly uri="qemu:///system"
readonly qemu_conf=/etc/libvirt/qemu.conf
readonly wait_seconds=${TPRD_LIBVIRT_WAIT_SECONDS:-60}

log() { echo "setup-libvirt: $*" >&2; }
die() {
  log "$*"
  exit 1
}

[[ $(id -u) -eq 0 ]] || die "must run as root (libvirtd qemu:///system)"
for tool in libvirtd virtlogd virsh; do
  command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] ||
    die "$tool missing: run tests/install-deps.sh first"
done

in_ci_or_container() {
  [[ ${CI:-} == true || ${TPRD_CI:-} == 1 || -e /.dockerenv || -e /run/.containerenv ]]
}

systemd_runs() { [[ -d /run/systemd/system ]]; }

cgroupfs_writable() {
  local probe
  for dir in /sys/fs/cgroup/cpu /sys/fs/cgroup/unified /sys/fs/cgroup; do
    [[ -d $dir ]] || continue
    probe="$dir/tprd-setup-probe-$$"
    if mkdir "$probe" 2>/dev/null; then
      rmdir "$probe"
      return 0
    fi
  done
  return 1
}

# 1. What libvirtd needs before it even reads qemu.conf (platform.md).
mkdir -p /var/log/libvirt /var/log/libvirt/qemu
if ! getent group libvirt-qemu >/dev/null; then
  log "creating group libvirt-qemu"
  groupadd --system libvirt-qemu
fi
if ! getent passwd libvirt-qemu >/dev/null; then
  log "creating user libvirt-qemu"
  useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --no-create-home \
    --shell /usr/sbin/nologin libvirt-qemu
fi

# 2. qemu.conf settings.
config_changed=0
# set_qemu_conf KEY VALUE: see the policy at the top.
set_qemu_conf() {
  local key=$1 value=$2 current
  current=$(grep -E "^[[:space:]]*${key}[[:space:]]*=" "$qemu_conf" | tail -n 1 || true)
  if [[ -z $current ]]; then
    if ! grep -q '^# tprd test host settings' "$qemu_conf"; then
      printf '\n# tprd test host settings (tests/setup-libvirt.sh)\n' >>"$qemu_conf"
    fi
    printf '%s = %s\n' "$key" "$value" >>"$qemu_conf"
    log "qemu.conf: added $key = $value"
    config_changed=1
    return
  fi
  local current_value
  current_value=$(sed -E "s/^[[:space:]]*${key}[[:space:]]*=[[:space:]]*//; s/[[:space:]]*$//" \
    <<<"$current")
  [[ $current_value == "$value" ]] && return
  if in_ci_or_container; then
    sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*$|${key} = ${value}|" "$qemu_conf"
    log "qemu.conf: replaced $key = $current_value with $value (CI/container)"
    config_changed=1
  else
    log "qemu.conf: keeping $key = $current_value (tests expect $value; not CI or a container)"
  fi
}

mkdir -p "$(dirname "$qemu_conf")"
if [[ ! -e $qemu_conf ]]; then
  log "creating $qemu_conf"
  printf '# Written by tprd tests/setup-libvirt.sh for a test host.\n' >"$qemu_conf"
  config_changed=1
fi
set_qemu_conf user '"root"'
set_qemu_conf group '"root"'
if in_ci_or_container || ! cgroupfs_writable; then
  set_qemu_conf cgroup_controllers '[ ]'
fi

# 3. Daemons: started only when not running.
daemon_running() { pgrep -x "$1" >/dev/null; }

start_daemon() {
  local name=$1
  if daemon_running "$name"; then
    return
  fi
  if systemd_runs && systemctl list-unit-files "${name}.service" >/dev/null 2>&1 &&
    systemctl list-unit-files "${name}.service" | grep -q "^${name}.service"; then
    log "starting $name via systemctl"
    systemctl start "${name}.service"
  else
    log "starting $name -d"
    "$name" -d
  fi
}

restart_libvirtd() {
  if systemd_runs && systemctl is-active --quiet libvirtd.service; then
    systemctl restart libvirtd.service
  else
    local pid
    pid=$(pgrep -x libvirtd | head -n 1)
    kill "$pid"
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "libvirtd (pid $pid) did not exit to reload qemu.conf"
    libvirtd -d
  fi
}

start_daemon virtlogd
if daemon_running libvirtd && ((config_changed)); then
  log "restarting libvirtd to load the changed qemu.conf"
  restart_libvirtd
else
  start_daemon libvirtd
fi

# 4. Bounded wait: a cold libvirtd probes QEMU capabilities for several seconds.
deadline=$((SECONDS + wait_seconds))
until virsh -c "$uri" version >/dev/null 2>&1; do
  if ((SECONDS >= deadline)); then
    virsh -c "$uri" version || true
    die "libvirtd did not answer on $uri within ${wait_seconds}s (see /var/log/libvirt)"
  fi
  daemon_running libvirtd || die "libvirtd is not running (see /var/log/libvirt)"
  sleep 0.2
done
log "libvirtd answers on $uri"
