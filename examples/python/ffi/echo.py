"""A lua-resty-ffi style Python runtime: ``init(cfg, tq)`` starts its own thread
that polls the queue with ngx_http_lua_ffi_task_poll and echoes each request.

Loaded with cfg ``"ffi.echo?,init"`` (``?``: reload the module on the next load).
It uses only lua-resty-ffi's C ABI through cffi, as third-party runtimes do.
"""

import threading

from cffi import FFI

ffi = FFI()
ffi.cdef(
    """
    void *malloc(size_t size);
    void *ngx_http_lua_ffi_task_poll(void *tq);
    char *ngx_http_lua_ffi_get_req(void *task, int *len);
    void ngx_http_lua_ffi_respond(void *task, int rc, char *rsp, int rsp_len);
    """
)
C = ffi.dlopen(None)  # the core is in the global scope of the process

GENERATION = 1  # tests bump this in a copy of the file to see a reload


def _serve(tq: int) -> None:
    queue = ffi.cast("void *", tq)
    size = ffi.new("int *")
    while True:
        task = C.ngx_http_lua_ffi_task_poll(queue)
        if task == ffi.NULL:
            break
        req = C.ngx_http_lua_ffi_get_req(task, size)
        rsp = C.malloc(size[0] + 1)
        ffi.memmove(rsp, req, size[0] + 1)
        C.ngx_http_lua_ffi_respond(task, 0, ffi.cast("char *", rsp), size[0])


def init(cfg: int, tq: int) -> int:
    threading.Thread(target=_serve, args=(tq,), name="ffi.echo", daemon=True).start()
    return 0
