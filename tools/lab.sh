#!/usr/bin/env bash
# The built-in lab site: a local systemd container acting as the site
# controller, converged with site.yml through the default inventory, and the
# lab inventory's simulated fleet running beside it (a second container in
# the controller's network namespace) until `make lab-down`.
# usage: tools/lab.sh up|down
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$EDGEFLEET_ROOT"

case "${1:-}" in
  up)
    t0=$(date +%s)
    ensure_venv
    ensure_docker
    ensure_image
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
  *)
    echo "usage: tools/lab.sh up|down" >&2
    exit 2
    ;;
esac
