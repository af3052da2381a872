#!/usr/bin/env bash
# Installs every Debian 12 package tprd needs to build, test and run its demo. Idempotent.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config git clang libclang-rt-14-dev binutils
  libzydis-dev libabsl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev
  protobuf-compiler grpc-proto libvirt-dev libsystemd-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev zlib1g-dev
  qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  qemu-utils  # qemu-img: the qcow2 disk an internal snapshot (tprd_e2e_lifecycle_test) lives in
  libvirt-daemon-system  # what a host installs: Debian's own qemu.conf, the libvirt-qemu account
  systemd  # systemd-analyze: tprd_access_test scores deploy/tprd.service offline
  python3 python3-prometheus-client  # tprctl_test parses `tprctl metrics` with it
  python3-grpcio python3-protobuf  # tprd_e2e_python_client_test: contrib/python/tprd_client.py
  debootstrap systemd-container  # tprd_systemd_test: a Debian tree booted with systemd-nspawn
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
