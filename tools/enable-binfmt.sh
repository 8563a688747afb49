#!/usr/bin/env bash
# Make foreign-architecture binaries (arm64, armhf: Raspberry Pi) run under
# qemu user emulation: installs qemu-user-static and binfmt-support when
# missing, mounts binfmt_misc and enables the interpreter.
# usage: enable-binfmt.sh ARCH    (Debian architecture name: arm64, armhf)
set -euo pipefail
arch=${1:?usage: enable-binfmt.sh ARCH}
case "$arch" in
  arm64) qemu=qemu-aarch64 ;;
  armhf) qemu=qemu-arm ;;
  *) echo "enable-binfmt: unsupported architecture '$arch' (arm64 or armhf)" >&2; exit 2 ;;
esac

if ! command -v update-binfmts >/dev/null || [ ! -x "/usr/bin/$qemu-static" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support >/dev/null
fi
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable "$qemu" >/dev/null 2>&1 || true
if ! grep -q '^enabled' "/proc/sys/fs/binfmt_misc/$qemu" 2>/dev/null; then
  echo "enable-binfmt: $qemu is not registered in binfmt_misc" >&2
  exit 1
fi
