# libffi_go_echo.so: a lua-resty-ffi echo runtime in Go (cgo, c-shared).
# Offline and root-safe: GOPATH mode (no modules, standard library only),
# Go's cache and GOPATH under native/build (never inside $(OUT), which may be
# the installed package).
GO ?= go
GO_ECHO_DIR := $(HERE)/runtimes/go_echo
LIBS += $(OUT)/libffi_go_echo.so

$(OUT)/libffi_go_echo.so: $(GO_ECHO_DIR)/echo.go | $(OUT)
	cd $(GO_ECHO_DIR) && GO111MODULE=off GOFLAGS= GOPATH=$(HERE)/build/gopath \
		GOCACHE=$(HERE)/build/gocache CGO_ENABLED=1 GOTOOLCHAIN=local \
		$(GO) build -buildmode=c-shared -o $(abspath $@) echo.go
	rm -f $(OUT)/libffi_go_echo.h
