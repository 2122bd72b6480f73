#!/bin/sh
# Runs examples/nginx/nginx.conf on stock nginx in the foreground, on
# 127.0.0.1:8080; Ctrl-C stops it gracefully.  `make demo-nginx` does the same
# after setting everything up; this script only needs a built venv:
#   examples/nginx/run.sh [--keep] [--log-level info]   (see aioresty nginx run -h)
# The Python of the venv in $AIORESTY_VENV, else $VIRTUAL_ENV, else <repo>/.venv
# runs the example's handlers (examples/nginx/authapp.py) inside the workers.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY=
for venv in "${AIORESTY_VENV:-}" "${VIRTUAL_ENV:-}" "$REPO/.venv"; do
    if [ -n "$venv" ] && [ -x "$venv/bin/python" ]; then PY=$venv/bin/python; break; fi
done
if [ -z "$PY" ]; then
    echo "run.sh: no venv found: run 'make venv' (or set AIORESTY_VENV)" >&2
    exit 2
fi
# this checkout's aioresty, even if the venv has another one installed
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m aioresty.cli nginx run "$HERE/nginx.conf" "$@"
