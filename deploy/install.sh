#!/bin/sh
# Installs tprd from a build tree and, where systemd runs, enables and starts its unit.
# usage: deploy/install.sh [--no-build] [BUILD_DIR] [PREFIX]   (defaults: build, /usr)
# --no-build installs the tree as it is built, without `cmake --build` first: for a tree built
# elsewhere (e.g. on a build machine, or the host of a container that has no compiler).
set -eu
build=yes
if [ "${1:-}" = --no-build ]; then
  build=no
  shift
fi
build_dir=${1:-build}
prefix=${2:-/usr}

if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  echo "install.sh: $build_dir is not a configured build tree; run cmake -S . -B $build_dir first" >&2
  exit 2
fi
if [ "$build" = yes ]; then
  cmake --build "$build_dir"
fi
cmake --install "$build_dir" --prefix "$prefix"

# The group that may use tprctl, the config, the directories.
if command -v systemd-sysusers >/dev/null 2>&1; then
  systemd-sysusers tprd.conf
elif ! getent group tprd >/dev/null; then
  groupadd --system tprd
fi
install -d -m 0755 /etc/tprd
if [ ! -f /etc/tprd/tprd.conf ]; then
  install -m 0644 "$(dirname "$0")/tprd.conf.example" /etc/tprd/tprd.conf
fi

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now tprd.service
  echo "tprd installed and started: systemctl status tprd"
else
  # No systemd (containers, CI): the directories the unit would create, then start by hand.
  install -d -m 0750 -g tprd /run/tprd
  install -d -m 0750 /var/lib/tprd
  echo "tprd installed; systemd is not running here: start it with"
  echo "  $prefix/sbin/tprd --config /etc/tprd/tprd.conf &"
fi
