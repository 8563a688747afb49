#!/usr/bin/env bash
# The timing-sensitive tests, many times in a row, optionally with one core
# kept busy by a background loop: a test that flakes shows up here.
#
# usage: tools/soak.sh [RUNS] [--busy] [PYTEST_ARGS...]
#   RUNS     how many runs (default 20)
#   --busy   keep one core busy with a shell loop for the whole soak
# The default selection is the integration tests: the simulated fleet
# against a real Mosquitto, and the device app on MicroPython's unix port.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
cd "$EDGEFLEET_ROOT"
runs=20
busy=0
if [[ "${1:-}" =~ ^[0-9]+$ ]]; then runs=$1; shift; fi
if [ "${1:-}" = "--busy" ]; then busy=1; shift; fi
selection=("$@")
# The reconnect storm and the 60 s outage are left out: they take minutes
# each, and what they time is the broker, not a race in our code.
[ ${#selection[@]} -gt 0 ] || selection=(tests/integration tests/firmware/test_device_micropython.py
                                        tests/firmware/test_socket_leaks.py
                                        --ignore=tests/integration/test_reconnect_storm.py
                                        --deselect "tests/integration/test_broker_restart.py::test_devices_lose_nothing_through_a_60s_broker_outage")
ensure_venv >/dev/null || exit 1
apt_install mosquitto || exit 1
export MICROPYTHON=${MICROPYTHON:-$EDGEFLEET_ROOT/../shared/tools/micropython/micropython}
if [ $busy -eq 1 ]; then
  ( while :; do :; done ) &
  busy_pid=$!
  trap 'kill $busy_pid 2>/dev/null' EXIT
  log "one core kept busy (pid $busy_pid)"
fi
logdir=$(mktemp -d /tmp/edgefleet-soak.XXXXXX)
failures=0
for i in $(seq 1 "$runs"); do
  t0=$(date +%s)
  if python -m pytest -q -p no:cacheprovider "${selection[@]}" >"$logdir/run$i.log" 2>&1; then
    result=pass
  else
    result=FAIL; failures=$((failures + 1))
  fi
  echo "run $i/$runs: $result in $(( $(date +%s) - t0 ))s ($(tail -n 1 "$logdir/run$i.log"))"
done
echo "soak: $runs runs, $failures failed (logs in $logdir)"
[ $failures -eq 0 ]
