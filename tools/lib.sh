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
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {
  # The virtualenv holds the pinned controller and test tools; it is
  # re-synced only when requirements.txt changes.
  local stamp="$VENV/.requirements.sha256"
  local want
  want=$(sha256sum "$EDGEFLEET_ROOT/requirements.txt" | cut -d' ' -f1)
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    python3 -m venv "$VENV"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing pinned Python dependencies"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$EDGEFLEET_ROOT/requirements.txt"
    echo "$want" >"$stamp"
  fi
  export PATH="$VENV/bin:$PATH"
  export ANSIBLE_CONFIG="$EDGEFLEET_ROOT/ansible.cfg"
}

ensure_docker() {
  # Debian's docker.io engine; started by hand when no init system runs it.
  apt_install docker.io debootstrap
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

remove_stale_instances() {
  # Molecule keeps its state per checkout; an instance left by an earlier run
  # from another checkout (or a killed run) would be reused with old state.
  local ids
  ids=$(docker ps -aq --filter label=owner=molecule --filter name='^edgefleet-')
  if [ -n "$ids" ]; then
    log "removing stale Molecule instances: $(docker inspect -f '{{.Name}}' $ids | tr -d / | tr '\n' ' ')"
    docker rm -f $ids >/dev/null
  fi
}
