#!/usr/bin/env bash
# Makes libvirtd (qemu:///system) usable for tprd's tests, demo and bench on a Debian 12 machine,
# with or without systemd. Packages come from tests/install-deps.sh (libvirt-daemon-system: the
# distribution's own qemu.conf and libvirt-qemu account). Idempotent: safe to run twice; starts
# virtlogd and libvirtd only when they are not already running.
#
# qemu.conf policy: tprd works with the distribution's default configuration (QEMU runs as
# libvirt-qemu; docs/usage.md), so this script writes no user, group or security setting. The
# one setting it may add is `cgroup_controllers = [ ]`, and only where libvirtd is not running
# yet and cgroupfs is not writable (a container without cgroup delegation), because libvirtd
# then fails every domain start; a host with a running libvirtd is never touched. Versions of
# this script before 2026-12-06 wrote `user = "root"` and `group = "root"` in a marked block;
# those two lines are removed again (and libvirtd restarted) when found in that block.
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

# 1. What libvirtd needs before it even reads qemu.conf (shared/design/platform.md).
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

# 2. qemu.conf.
readonly marker='# tprd test host settings (tests/setup-libvirt.sh)'
config_changed=0
if [[ -f $qemu_conf ]] && grep -qxF "$marker" "$qemu_conf"; then
  # Only the lines of our own marked block (it is appended last, so it runs to the end).
  start=$(grep -nxF "$marker" "$qemu_conf" | head -n 1 | cut -d: -f1)
  if tail -n +"$start" "$qemu_conf" | grep -Eq '^(user|group) = "root"$'; then
    sed -i -E "${start},\${/^(user|group) = \"root\"$/d}" "$qemu_conf"
    log "qemu.conf: removed user/group root that an earlier version of this script wrote"
    config_changed=1
  fi
fi
if ! pgrep -x libvirtd >/dev/null && ! cgroupfs_writable; then
  mkdir -p "$(dirname "$qemu_conf")"
  touch "$qemu_conf"
  if ! grep -Eq '^[[:space:]]*cgroup_controllers[[:space:]]*=' "$qemu_conf"; then
    grep -qxF "$marker" "$qemu_conf" || printf '\n%s\n' "$marker" >>"$qemu_conf"
    # cgroupfs is read-only here (a container without delegation): libvirtd could start no
    # domain. Not a security setting; a real host has writable cgroups and never gets this.
    printf 'cgroup_controllers = [ ]\n' >>"$qemu_conf"
    log "qemu.conf: added cgroup_controllers = [ ] (cgroupfs is not writable here)"
  fi
fi

# 2b. /dev/kvm as a host's udev leaves it. Without udev (containers, this sandbox) it can be
# root:root 0600: QEMU probed as root sees KVM, the same check as libvirt-qemu does not, and
# libvirt 9 then throws its QEMU capabilities away and probes again on every domain start
# ("KVM was enabled when probing ..., but it is not available now": about 2 minutes per start
# here). Debian's udev gives it group kvm, which libvirt-qemu is in. Only where no udev runs
# and the device is still root-only; the test domains are TCG (type='qemu') and never use it.
if [[ -c /dev/kvm && ! -e /run/udev/control ]] && getent group kvm >/dev/null &&
  [[ $(stat -c %G:%a /dev/kvm) == root:600 ]]; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
  log "/dev/kvm: group kvm, mode 0660, as udev would set it (no udev runs here)"
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
