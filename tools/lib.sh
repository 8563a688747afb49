# Shared shell helpers for tools/test.sh and tools/lab.sh (sourced, not run).
# Each helper is safe to call repeatedly: it does work only when needed.

EDGEFLEET_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${EDGEFLEET_VENV:-$EDGEFLEET_ROOT/.venv}
EDGEFLEET_IMAGE=${EDGEFLEET_IMAGE:-edgefleet/debian12-systemd:latest}
export EDGEFLEET_IMAGE

log() { printf '==> %s\n' "$*"; }

apt_install() {
  # apt_install PKG...: install Debian packages that are missing.
  local missing=()
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq || return 1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
    echo "apt-get install ${missing[*]} failed" >&2
    return 1
  }
}

deb_unpack() {
  # deb_unpack PKG DIR: the files of Debian package PKG (this machine's
  # candidate version) under DIR, without installing it: no maintainer
  # script runs. For tools the tests run but this machine must not run as a
  # service: chrony's postinst would start chronyd on it and replace
  # systemd-timesyncd.
  local pkg=$1 dir=$2 version tmp
  version=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    apt-get update -qq || return 1
    version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
  fi
  [ "$(cat "$dir/.edgefleet-$pkg" 2>/dev/null)" = "$version" ] && return 0
  log "unpacking Debian package $pkg $version into $dir (not installed)"
  tmp=$(mktemp -d) || return 1
  chown _apt "$tmp" 2>/dev/null || chmod 0777 "$tmp"  # apt-get download writes as _apt
  ( cd "$tmp" && apt-get download -qq "$pkg=$version" ) || { rm -rf "$tmp"; echo "apt-get download $pkg failed" >&2; return 1; }
  rm -rf "$dir" && mkdir -p "$dir" && dpkg-deb -x "$tmp"/*.deb "$dir" && printf '%s\n' "$version" >"$dir/.edgefleet-$pkg"
  local rc=$?
  rm -rf "$tmp"
  return $rc
}

ensure_venv() {
  # The virtualenv holds the pinned controller and test tools; it is
  # re-synced only when requirements.txt changes.
  local stamp="$VENV/.requirements.sha256"
  local want
  want=$(sha256sum "$EDGEFLEET_ROOT/requirements.txt" | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ]; then
    # Debian's python3 has no venv/ensurepip until python3-venv is installed.
    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
      apt_install python3-venv || return 1
    fi
    log "creating virtualenv $VENV"
    python3 -m venv "$VENV" || { rm -rf "$VENV"; return 1; }
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing pinned Python dependencies"
    # The stamp is written only after a complete install: a failed or
    # interrupted pip run is retried next time instead of passing.
    rm -f "$stamp"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$EDGEFLEET_ROOT/requirements.txt" || return 1
    echo "$want" >"$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
  export ANSIBLE_CONFIG="$EDGEFLEET_ROOT/ansible.cfg"
}

ensure_docker() {
  # Debian's docker.io engine; started by hand when no init system runs it.
  apt_install docker.io debootstrap || return 1
  if docker info >/dev/null 2>&1; then return 0; fi
  if [ -d /run/systemd/system ]; then
    systemctl start docker || true
  fi
  if ! docker info >/dev/null 2>&1; then
    log "starting dockerd (log: /var/log/edgefleet-dockerd.log)"
    nohup /usr/sbin/dockerd >/var/log/edgefleet-dockerd.log 2>&1 &
  fi
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "dockerd did not answer within 60 s; last lines of its log:" >&2
  tail -n 30 /var/log/edgefleet-dockerd.log >&2 || true
  return 1
}

ensure_image() {
  # ensure_image [ARCH]: the debootstrap systemd base image (cached by recipe).
  bash "$EDGEFLEET_ROOT/molecule/images/build-debian12-systemd.sh" "$@"
}

ensure_fleet_image() {
  # The simulated fleet's image for a plant network (base image + python3-zeroconf).
  bash "$EDGEFLEET_ROOT/molecule/images/build-plant-fleet.sh"
}

free_port() {
  # A TCP port that nothing on 127.0.0.1 listens on right now.
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

molecule_run_env() {
  # Each run gets its own container names, published ports and Molecule
  # state directory, so two checkouts (or two runs) never touch each other's
  # instances. The checkout prefix lets a later run of this checkout clean up
  # what a killed run of it left behind.
  EDGEFLEET_CHECKOUT_ID=$(printf '%s' "$EDGEFLEET_ROOT" | sha256sum | cut -c1-8)
  EDGEFLEET_RUN_ID=${EDGEFLEET_RUN_ID:-$EDGEFLEET_CHECKOUT_ID-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')}
  EDGEFLEET_TEST_MQTT_PORT=${EDGEFLEET_TEST_MQTT_PORT:-$(free_port)}
  EDGEFLEET_TEST_MQTTS_PORT=${EDGEFLEET_TEST_MQTTS_PORT:-$(free_port)}
  EDGEFLEET_TEST_PROM_PORT=${EDGEFLEET_TEST_PROM_PORT:-$(free_port)}
  EDGEFLEET_TEST_OTA_PORT=${EDGEFLEET_TEST_OTA_PORT:-$(free_port)}
  EDGEFLEET_TEST_OTAS_PORT=${EDGEFLEET_TEST_OTAS_PORT:-$(free_port)}
  export EDGEFLEET_CHECKOUT_ID EDGEFLEET_RUN_ID EDGEFLEET_TEST_MQTT_PORT EDGEFLEET_TEST_MQTTS_PORT \
    EDGEFLEET_TEST_PROM_PORT EDGEFLEET_TEST_OTA_PORT EDGEFLEET_TEST_OTAS_PORT
}

molecule_scenario() {
  # molecule_scenario SCENARIO ARGS...: molecule with this run's own state directory.
  local scenario=$1; shift
  MOLECULE_EPHEMERAL_DIRECTORY="$(molecule_state_dir)/$scenario" \
    molecule "$@" -s "$scenario"
}

molecule_state_dir() {
  echo "${XDG_CACHE_HOME:-$HOME/.cache}/edgefleet/molecule/$EDGEFLEET_RUN_ID"
}

remove_stale_instances() {
  # Instances that an earlier, killed run of this checkout left behind;
  # other checkouts' instances are never touched.
  local ids
  ids=$(docker ps -aq --filter label=owner=molecule --filter name="^edgefleet-$EDGEFLEET_CHECKOUT_ID-")
  if [ -n "$ids" ]; then
    log "removing stale Molecule instances: $(docker inspect -f '{{.Name}}' $ids | tr -d / | tr '\n' ' ')"
    docker rm -f $ids >/dev/null
  fi
  # and their plant networks (Molecule creates one per instance)
  ids=$(docker network ls -q --filter label=owner=molecule --filter name="^edgefleet-$EDGEFLEET_CHECKOUT_ID-")
  if [ -n "$ids" ]; then
    log "removing stale Molecule networks: $(docker network inspect -f '{{.Name}}' $ids | tr '\n' ' ')"
    docker network rm $ids >/dev/null
  fi
}
