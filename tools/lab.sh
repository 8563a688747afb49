#!/usr/bin/env bash
# The built-in lab site: a local systemd container acting as the site
# controller, converged with site.yml through the default inventory, and the
# lab inventory's simulated fleet running beside it (a second container in
# the controller's network namespace) until `make lab-down`.
# usage: tools/lab.sh up|down|rollout
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$EDGEFLEET_ROOT"

case "${1:-}" in
  up)
    t0=$(date +%s)
    ensure_venv
    ensure_docker
    ensure_image
    ensure_fleet_image
    ansible-playbook playbooks/lab.yml -e lab_state=present
    ansible-playbook site.yml
    ansible-playbook playbooks/lab.yml -e lab_state=fleet
    ansible-playbook playbooks/lab.yml -e lab_state=info
    echo "lab up in $(( $(date +%s) - t0 ))s"
    ;;
  down)
    ensure_venv
    ansible-playbook playbooks/lab.yml -e lab_state=absent
    ;;
  rollout)
    # A config change and an app rollout on the running lab's simulated
    # fleet (the named devices of hosts.yml, which the fleet container runs),
    # while Prometheus (and Grafana's OTA dashboard where Grafana is
    # installed) shows it: docs/fleet.md, "The lab".
    ensure_venv
    if [ "$(docker inspect -f '{{.State.Running}}' edgefleet-lab-fleet 2>/dev/null)" != true ]; then
      echo "the lab's simulated fleet is not running: make lab first" >&2
      exit 1
    fi
    version="${LAB_VERSION:-$(date -u +lab-%Y%m%d-%H%M%S)}"
    bundle="secrets/lab/ota/app-$version.bundle"
    mkdir -p secrets/lab/ota
    log "building app bundle $version (the firmware app, compiled) into $bundle"
    python -c 'import sys; from firmware.image import app_files; open(sys.argv[2], "wb").write(app_files(sys.argv[1])[1])' \
      "$version" "$bundle"
    log "publishing it on the lab's OTA server"
    ansible-playbook site.yml --tags ota \
      -e "{\"ota_server_images\": [{\"src\": \"$PWD/$bundle\", \"version\": \"$version\", \"payload\": \"app\"}]}"
    log "config change: publish_interval_s ${LAB_PUBLISH_S:-10} on every device, confirmed"
    ansible-playbook playbooks/configure.yml -i inventories/lab/hosts.yml \
      -e "{\"device_config_fleet\": {\"publish_interval_s\": ${LAB_PUBLISH_S:-10}}}"
    log "rolling out app $version: canary, then waves (Prometheus: count by (fw) (edgefleet_device_info), edgefleet_ota_failed)"
    # The soak sees a hang only if it outlasts two telemetry intervals and a
    # margin (docs/fleet.md): 2 x the interval just pushed + 5 s.
    soak=$(( 2 * ${LAB_PUBLISH_S:-10} + 5 ))
    ansible-playbook playbooks/ota.yml -i inventories/lab/hosts.yml -e "ota_version=$version" \
      -e ota_manifest_url=http://127.0.0.1:18080/manifest.json \
      -e "{\"ota_canary\": 1, \"ota_waves\": [2, \"100%\"], \"ota_soak\": $soak, \"ota_abort_min_executed\": 2}"
    ;;
  *)
    echo "usage: tools/lab.sh up|down|rollout" >&2
    exit 2
    ;;
esac
