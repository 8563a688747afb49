#!/usr/bin/env bash
# Build the image the simulated fleet runs in on a plant network (the lab's
# fleet container, the site scenario's): the Debian 12 base image plus
# Debian's python3-zeroconf, with which each simulated device answers mDNS
# for <id>.local and announces its /metrics, as an ESP32 answers for its
# host name. Nothing is pulled: the base image is local
# (build-debian12-systemd.sh) and the package comes from the Debian mirror
# over plain http. The tag carries a digest of this recipe and of the base
# image, so the image is rebuilt only when either changes.
#
# usage: build-plant-fleet.sh          env: EDGEFLEET_IMAGE_REPO as for the base image
set -euo pipefail

repo=${EDGEFLEET_IMAGE_REPO:-edgefleet/debian12-systemd}
base="$repo:latest"
fleet_repo=${EDGEFLEET_FLEET_IMAGE_REPO:-edgefleet/plant-fleet}
base_id=$(docker image inspect -f '{{.Id}}' "$base")
digest=$( { cat "$0"; echo "$base_id"; } | sha256sum | cut -c1-12)
tag="$fleet_repo:$digest"

if docker image inspect "$tag" >/dev/null 2>&1; then
  docker tag "$tag" "$fleet_repo:latest"
  echo "image $tag is current; $fleet_repo:latest points at it"
  exit 0
fi

start=$(date +%s)
# the Dockerfile on stdin: the build needs no context
if ! out=$(docker build -q -t "$tag" - 2>&1 <<DOCKERFILE
FROM $base
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-zeroconf \\
 && rm -rf /var/lib/apt/lists/*
DOCKERFILE
); then
  echo "$out" | tail -n 30
  exit 1
fi
docker tag "$tag" "$fleet_repo:latest"
echo "built $tag ($fleet_repo:latest) in $(( $(date +%s) - start ))s"
