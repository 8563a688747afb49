#!/usr/bin/env bash
# The whole test suite, from a fresh clone on a fresh machine:
# tools, container engine, base image, then every check; a summary at the end
# and a non-zero exit when anything failed.
#
# usage: tools/test.sh [--arm64 | --slow]
#   --arm64   instead of the suite: converge the mosquitto scenario on an
#             arm64 (Raspberry Pi) container under qemu emulation.
#   --slow    instead of the suite: the tests marked slow (pytest -m slow),
#             minutes-long load and outage tests kept out of the suite so
#             that it stays under 30 minutes on a 2-core machine.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
cd "$EDGEFLEET_ROOT"
# Plain logs when nobody watches a terminal (CI).
if [ ! -t 1 ]; then
  export NO_COLOR=1 PY_COLORS=0 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
fi

suite_start=$(date +%s)
results=()
failed=0
passed=0

stage() {
  # stage NAME CMD...: run one check, record its result and duration.
  local name=$1; shift
  local t0 rc
  t0=$(date +%s)
  log "$name"
  "$@"
  rc=$?
  record "$name" "$rc" "$(( $(date +%s) - t0 ))"
  return $rc
}

record() {
  # record NAME RC SECONDS
  if [ "$2" -eq 0 ]; then
    results+=("PASS  ${3}s  $1"); passed=$((passed + 1))
  else
    results+=("FAIL  ${3}s  $1 (exit $2)"); failed=$((failed + 1))
  fi
}

stage_beside() {
  # stage_beside NAME CMD...: run one check in the background while the
  # next stages run in the foreground; stage_collect prints its output (kept
  # in a file so the two logs do not interleave) and records it.
  bg_name=$1; shift
  bg_log=$(mktemp)
  log "$bg_name (beside the next stage; its output follows when both are done)"
  ( t0=$(date +%s); "$@" >"$bg_log" 2>&1; rc=$?; echo "$rc $(( $(date +%s) - t0 ))" >"$bg_log.rc" ) &
  bg_pid=$!
}

stage_collect() {
  wait "$bg_pid"
  log "$bg_name: output"
  cat "$bg_log"
  local rc dt
  read -r rc dt <"$bg_log.rc" || { rc=1; dt=0; }
  record "$bg_name" "$rc" "$dt"
  rm -f "$bg_log" "$bg_log.rc"
}

summary() {
  echo
  echo "================ edgefleet test summary ================"
  printf '%s\n' "${results[@]}"
  echo "total time: $(( $(date +%s) - suite_start ))s"
  echo "suite: $passed passed, $failed failed"
}

setup() {
  stage "python virtualenv and pinned dependencies" ensure_venv || return 1
  stage "container engine (docker.io, dockerd)" ensure_docker || return 1
  stage "base image $EDGEFLEET_IMAGE" ensure_image || return 1
  # Debian's own tools check the roles' rendered files and run them in the
  # integration tests: mosquitto, the MQTT exporter, promtool, amtool and the
  # blackbox exporter's config check, Prometheus and Alertmanager themselves,
  # and nginx -t on the OTA server's config. gcc-multilib builds MicroPython's
  # 32-bit unix port with the app frozen in (the frozen heap budget).
  stage "test dependencies (Debian mosquitto, prometheus, alertmanager, exporters, nginx, gcc-multilib)" \
    apt_install mosquitto prometheus-mqtt-exporter prometheus prometheus-alertmanager \
    prometheus-blackbox-exporter nginx ser2net gcc-multilib libedit2 || return 1
  # chrony for the chrony role's tests, unpacked, not installed: installed,
  # it would start chronyd here and replace systemd-timesyncd (its libraries
  # are Debian's usual ones; chronyc's libedit2 is installed above)
  export EDGEFLEET_CHRONY_ROOT=${EDGEFLEET_CHRONY_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/edgefleet/debs/chrony}
  stage "chrony for the tests (unpacked into $EDGEFLEET_CHRONY_ROOT, not installed)" \
    deb_unpack chrony "$EDGEFLEET_CHRONY_ROOT" || return 1
  molecule_run_env
  log "run $EDGEFLEET_RUN_ID: test ports 127.0.0.1:$EDGEFLEET_TEST_MQTT_PORT (MQTT), :$EDGEFLEET_TEST_MQTTS_PORT (TLS)"
  remove_stale_instances
}

if [ "${1:-}" = "--arm64" ]; then
  export EDGEFLEET_IMAGE=edgefleet/debian12-systemd:arm64
  if setup && stage "base image (arm64)" ensure_image arm64; then
    EDGEFLEET_ARCH=arm64 \
      stage "molecule mosquitto on arm64 (qemu)" molecule_scenario mosquitto test
  fi
  summary
  [ $failed -eq 0 ]
  exit
fi

if [ "${1:-}" = "--slow" ]; then
  if setup; then
    stage "pytest, slow tests" python -m pytest -m slow
  fi
  summary
  [ $failed -eq 0 ]
  exit
fi

if setup; then
  stage "yamllint" yamllint --strict .
  stage "ansible-lint (production profile)" ansible-lint --profile production
  # ansible-test sanity on a copy of the collection with real files, offline
  # (about 45 s here; tools/sanity.sh says which tests it skips and why).
  stage "ansible-test sanity (collection edgefleet.site)" bash tools/sanity.sh
  # pytest (host processes on ports it picks itself, no containers) runs
  # beside the longest Molecule scenario (site): on a 2-core machine the two
  # overlap their waits, which keeps the suite under 30 minutes. The
  # timing-sensitive tests are proven under one busy core (make test-soak).
  for scenario_file in molecule/*/molecule.yml; do
    scenario=$(basename "$(dirname "$scenario_file")")
    if [ "$scenario" = site ]; then
      stage_beside "pytest (not the slow ones: make test-slow)" python -m pytest -m "not slow"
    fi
    stage "molecule test -s $scenario" molecule_scenario "$scenario" test
    if [ "$scenario" = site ]; then stage_collect; fi
  done
fi
[ -n "${EDGEFLEET_RUN_ID:-}" ] && rm -rf "$(molecule_state_dir)"
summary
[ $failed -eq 0 ]
