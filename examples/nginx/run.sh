#!/bin/sh
# Runs examples/nginx/nginx.conf on stock nginx in the foreground (Ctrl-C stops).
#   examples/nginx/run.sh            # uses $VIRTUAL_ENV / $AIORESTY_VENV for Python
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [ -z "${AIORESTY_LIB_DIR:-}" ]; then
    for d in "$REPO/aioresty/_lib" "$REPO/native/build"; do
        if [ -f "$d/libaioresty_nginx.so" ]; then AIORESTY_LIB_DIR=$d; break; fi
    done
fi
: "${AIORESTY_LIB_DIR:?build aioresty first (pip install . or make native)}"
PREFIX=${AIORESTY_NGINX_PREFIX:-$(mktemp -d /tmp/aioresty-example-XXXXXX)}
chmod 755 "$PREFIX"          # workers run as nobody when started as root
mkdir -p "$PREFIX/logs"
ln -sfn "$REPO/lua" "$PREFIX/lua"
export AIORESTY_LIB_DIR
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
echo "aioresty example: http://127.0.0.1:8080/api/hello (prefix $PREFIX)" >&2
exec nginx -p "$PREFIX" -c "$HERE/nginx.conf" -g 'daemon off;'
