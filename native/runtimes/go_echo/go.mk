# libffi_go_echo.so: a lua-resty-ffi echo runtime in Go (cgo, c-shared), for the
# tests and the repository's demo only: never part of the package (the native
# Makefile's `go` target, which the top-level `make venv` calls; not `all`).
# Offline and root-safe: GOPATH mode (no modules, standard library only),
# Go's cache and GOPATH under native/build.
GO ?= go
GO_ECHO_DIR := $(HERE)/runtimes/go_echo
GO_LIBS += $(OUT)/libffi_go_echo.so

$(OUT)/libffi_go_echo.so: $(GO_ECHO_DIR)/echo.go | $(OUT)
	@command -v $(GO) >/dev/null || { echo "error: no Go compiler '$(GO)' (Debian: golang-go): the Go echo runtime is for the tests and the demo only" >&2; exit 1; }
	cd $(GO_ECHO_DIR) && GO111MODULE=off GOFLAGS= GOPATH=$(HERE)/build/gopath \
		GOCACHE=$(HERE)/build/gocache CGO_ENABLED=1 GOTOOLCHAIN=local \
		$(GO) build -buildmode=c-shared -o $(abspath $@) echo.go
	rm -f $(OUT)/libffi_go_echo.h
