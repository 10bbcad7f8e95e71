#!/usr/bin/env bash
# The long schemathesis run against `mammolab serve` (the test suite runs a bounded one):
#   scripts/schemathesis.sh RUN_FOLDER [MAX_EXAMPLES=1000] [PORT=18777]
# Starts the server on 127.0.0.1, runs every check against /openapi.json, stops the server, and exits
# with schemathesis' status (0 = no failure). Needs the dev extra (pip install -e '.[dev]').
set -euo pipefail
run=${1:?usage: scripts/schemathesis.sh RUN_FOLDER [MAX_EXAMPLES] [PORT]}
examples=${2:-1000}
port=${3:-18777}
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-python}
st=${ST:-st}
"$py" -m mammolab serve "$run" --port "$port" --queue-timeout 5 --request-timeout 30 &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  if "$py" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=2)" 2>/dev/null; then
    break
  fi
  kill -0 "$pid" 2>/dev/null || { echo "serve did not start" >&2; exit 1; }
  sleep 0.5
done
"$st" --config-file "$here/schemathesis.toml" run "http://127.0.0.1:$port/openapi.json" --checks all \
  --continue-on-failure -n "$examples" --workers 1
