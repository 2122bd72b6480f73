# aioresty - every target sets up what it needs (idempotent).
#   make demo        the seed's Envoy demo on 127.0.0.1:8000 (curl through Envoy -> async Python)
#   make demo-luamod the same demo, scripts in aioresty's LuaJIT filter (lua_mode = "module")
#   make test        all tests (unit, native core under valgrind, Envoy, nginx)
#   make demo-nginx  the nginx example on 127.0.0.1:8080;  make demo-host: no proxy at all
#   make bench-core | bench-envoy | bench-nginx -> benchmarks/results/<name>.json
SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
SYSPY := /usr/bin/python3
APT_PKGS := build-essential python3-dev python3-venv valgrind curl golang-go wrk \
            nginx-light libnginx-mod-http-lua libnginx-mod-http-ndk lua-resty-core
STAMP := $(VENV)/.aioresty-installed
LUAJIT_SRC := $(ROOT)/.deps/luajit2

.PHONY: deps venv native test lint demo demo-host bench-core clean

# Debian packages, installed only when one is missing.
deps:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# Debian's luajit2 source for the private LuaJIT of the Envoy "lua" mode (native/luajit/build.mk)
	@if [ ! -f $(LUAJIT_SRC)/src/lj_api.c ]; then \
	  sudo=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then \
	    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	      | $$sudo tee /etc/apt/sources.list.d/aioresty-src.sources >/dev/null && $$sudo apt-get update -qq; \
	  fi; \
	  rm -rf $(ROOT)/.deps/src.tmp && mkdir -p $(ROOT)/.deps/src.tmp && \
	  (cd $(ROOT)/.deps/src.tmp && apt-get source -qq luajit2 >/dev/null 2>&1) && \
	  rm -rf $(LUAJIT_SRC) && mv $(ROOT)/.deps/src.tmp/luajit2-*/ $(LUAJIT_SRC) && rm -rf $(ROOT)/.deps/src.tmp && \
	  echo "fetched luajit2 source into $(LUAJIT_SRC)"; \
	fi

$(PY): | deps
	$(SYSPY) -m venv $(VENV)

# Editable install: builds every native library into aioresty/_lib.
$(STAMP): $(PY) pyproject.toml setup.py $(shell find native aioresty -name '*.c' -o -name '*.h' -o -name '*.mk' -o -name Makefile -o -name '*.go' 2>/dev/null)
	set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check -e '.[test,envoy]' 2>&1 \
	  | { grep -v '^WARNING: Location' || true; }
	$(PY) -c "import aioresty._native" && touch $(STAMP)

venv: deps $(STAMP)

native: venv

lint: venv
	$(VENV)/bin/ruff check aioresty tests benchmarks examples
	$(VENV)/bin/ruff format --check aioresty tests benchmarks examples

test: venv
	$(VENV)/bin/ruff check aioresty tests benchmarks examples
	cd $(ROOT) && $(VENV)/bin/mypy
	cd $(ROOT) && AIORESTY_NO_SKIP=1 $(VENV)/bin/python -m pytest -q -p no:cacheprovider

# The seed's Envoy demo on 127.0.0.1:8000 (foreground; Ctrl-C stops it).
demo: venv
	cd $(ROOT) && $(VENV)/bin/python -m aioresty.demo

# The same runtimes through the C test host, no proxy.
demo-host: venv
	cd $(ROOT) && $(VENV)/bin/python examples/demo_host.py

bench-core: venv
	$(VENV)/bin/python benchmarks/bench_core.py

# Envoy: the seed demo + an aioresty app on 127.0.0.1:8000 (python -m aioresty.demo --check: smoke test)
.PHONY: demo-envoy bench-envoy
demo-envoy: venv
	cd $(ROOT) && $(VENV)/bin/python -m aioresty.demo

# Envoy benchmark (wrk, BENCH_SECONDS=5 per run) -> benchmarks/results/envoy.json
bench-envoy: venv
	cd $(ROOT) && $(VENV)/bin/python benchmarks/bench_envoy.py

# nginx: examples/nginx on 127.0.0.1:8080 in the foreground (Ctrl-C stops it gracefully)
.PHONY: demo-nginx bench-nginx
demo-nginx: venv
	cd $(ROOT) && exec $(VENV)/bin/python -m aioresty.nginx_run examples/nginx/nginx.conf

# nginx benchmark (wrk, BENCH_SECONDS=5 per run) -> benchmarks/results/nginx.json
bench-nginx: venv
	cd $(ROOT) && $(VENV)/bin/python benchmarks/bench_nginx.py

# The same seed demo with the scripts in aioresty's LuaJIT filter inside the dynamic module
# (lua_mode = "module", docs/luamod.md) on 127.0.0.1:8000; --check: smoke test
.PHONY: demo-luamod
demo-luamod: venv
	cd $(ROOT) && $(VENV)/bin/python -m aioresty.demo --lua-mode module

# Envoy "lua" filter mode benchmark (wrk, BENCH_SECONDS=5 per run) -> benchmarks/results/luamod.json
.PHONY: bench-luamod
bench-luamod: venv
	cd $(ROOT) && $(VENV)/bin/python benchmarks/bench_luamod.py

# Python HTTP filter vs plain Envoy vs ext_proc+grpcio (BENCH_SECONDS=5) -> benchmarks/results/filter.json
.PHONY: bench-filter
bench-filter: venv
	$(PY) -c "import grpc, envoy_data_plane" 2>/dev/null || $(PY) -m pip install -q 'grpcio>=1.60' 'envoy-data-plane==2.2.0'
	cd $(ROOT) && $(PY) benchmarks/bench_filter.py

clean:
	rm -rf native/build aioresty/_lib aioresty/_native*.so build *.egg-info
