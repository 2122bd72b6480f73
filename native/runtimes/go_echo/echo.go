// libffi_go_echo.so: a lua-resty-ffi runtime written in Go (cgo,
// -buildmode=c-shared), standard library only.  It knows nothing of
// aioresty: it uses lua-resty-ffi's runtime ABI exactly as a third-party Go
// runtime would.  libffi_init starts one goroutine per loaded runtime that
// polls the task queue and answers every task with a copy of its request.
// The ngx_http_lua_ffi_* functions are resolved when the library is
// dlopen'ed, from the process-global libaioresty_core.so.
//
// Ownership: the request bytes belong to the task (borrowed until we
// respond); the response is malloc'ed here and freed by the host (core).
package main

/*
#cgo LDFLAGS: -Wl,--unresolved-symbols=ignore-all
#include <stdlib.h>
#include <string.h>

void *ngx_http_lua_ffi_task_poll(void *tq);
char *ngx_http_lua_ffi_get_req(void *task, int *len);
void ngx_http_lua_ffi_respond(void *task, int rc, char *rsp, int rsp_len);

// Echo one task; returns 0 once the runtime was unloaded (poll gave NULL).
// Kept in C so a busy runtime crosses the cgo boundary once per task.
static int echo_one(void *tq) {
    void *task = ngx_http_lua_ffi_task_poll(tq);
    if (task == NULL) return 0;
    int len = 0;
    char *req = ngx_http_lua_ffi_get_req(task, &len);
    char *rsp = malloc((size_t)len + 1);
    if (rsp == NULL) {
        ngx_http_lua_ffi_respond(task, 1, NULL, 0);
        return 1;
    }
    if (len > 0) memcpy(rsp, req, (size_t)len);
    rsp[len] = '\0';
    ngx_http_lua_ffi_respond(task, 0, rsp, len);
    return 1;
}
*/
import "C"

import (
	"runtime"
	"unsafe"
)

func serve(tq unsafe.Pointer) {
	// The goroutine blocks in C (task_poll) most of the time; keep it on
	// its own OS thread so it never stalls other goroutines.
	runtime.LockOSThread()
	for C.echo_one(tq) != 0 {
	}
}

//export libffi_init
func libffi_init(cfg *C.char, tq unsafe.Pointer) C.int {
	_ = cfg // cfg is owned by the host and only valid during this call
	go serve(tq)
	return 0
}

func main() {}
