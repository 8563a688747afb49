#!/usr/bin/env bash
# Build the local Debian 12 (bookworm) systemd base image used by every
# Molecule scenario and by the lab controller. Nothing is pulled from a
# registry: the root filesystem comes from debootstrap against the Debian
# mirror and is turned into an image with `docker import`.
#
# The image tag carries a digest of this recipe, so the image is rebuilt only
# when the recipe changes (or the architecture differs). The moving tag
# (`latest` for the native architecture, `<arch>` otherwise) always points at
# the newest build.
#
# usage: build-debian12-systemd.sh [ARCH]      ARCH defaults to dpkg's answer
# env:   EDGEFLEET_DEBIAN_MIRROR   mirror for debootstrap and for apt inside
#        EDGEFLEET_IMAGE_REPO      image repository (edgefleet/debian12-systemd)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
native_arch=$(dpkg --print-architecture)
arch=${1:-$native_arch}
mirror=${EDGEFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
repo=${EDGEFLEET_IMAGE_REPO:-edgefleet/debian12-systemd}
suite=bookworm
packages=python3,systemd,systemd-sysv,dbus,iproute2,procps,ca-certificates,gnupg,sudo

recipe_digest=$( { cat "$0"; echo "$arch $mirror $packages"; } | sha256sum | cut -c1-12)
tag="$repo:$arch-$recipe_digest"
if [ "$arch" = "$native_arch" ]; then moving="$repo:latest"; else moving="$repo:$arch"; fi

if docker image inspect "$tag" >/dev/null 2>&1; then
  docker tag "$tag" "$moving"
  echo "image $tag is current (recipe unchanged); $moving points at it"
  exit 0
fi

if [ "$arch" != "$native_arch" ]; then
  "$here/../../tools/enable-binfmt.sh" "$arch"
fi

work=$(mktemp -d /var/tmp/edgefleet-rootfs.XXXXXX)
cleanup() { rm -rf --one-file-system "$work"; }
trap cleanup EXIT
rootfs="$work/rootfs"

echo "debootstrap $suite ($arch) from $mirror ..."
start=$(date +%s)
debootstrap --arch="$arch" --variant=minbase --include="$packages" \
  "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 40 "$work/debootstrap.log"; exit 1; }

# apt inside the container uses the same mirror, over plain http.
rm -f "$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb

# A container has no consoles, udev or kernel modules to load; these units
# only fail or spin there. Everything else stays as on a real host.
for unit in getty.target console-getty.service systemd-udevd.service \
  systemd-udev-trigger.service systemd-modules-load.service \
  sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
  systemd-remount-fs.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$unit"
done
: >"$rootfs/etc/machine-id"
rm -f "$rootfs/etc/hostname"

tar -C "$rootfs" -c . | docker import \
  -c 'CMD ["/lib/systemd/systemd"]' \
  -c 'ENV container=docker' \
  --platform "linux/$arch" \
  - "$tag" >/dev/null
docker tag "$tag" "$moving"
echo "built $tag ($moving) in $(( $(date +%s) - start ))s"
