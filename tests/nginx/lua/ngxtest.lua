-- Helpers for the nginx integration tests (tests/nginx/test_*.py).
local ngx = ngx
local tostring = tostring

local _M = {}

-- The runtime for lib/cfg (cached by resty_ffi per lib&cfg), or a 500.
function _M.runtime(lib, cfg, opts)
    local rt, err = ngx.load_ffi(lib, cfg, opts)
    if not rt then
        ngx.status = 500
        ngx.header["X-Err"] = "load"
        ngx.say("load failed: ", tostring(err))
        return ngx.exit(500)
    end
    return rt
end

-- Answers the HTTP client with one call's result:
--   ok           -> 200, body = res, X-Nil: 1 when res is nil
--   ok == false  -> 502, X-Rc = res_or_rc, body = err (or res when a string)
function _M.reply(ok, res, err)
    ngx.header["X-Worker"] = tostring(ngx.worker.pid())
    if ok then
        if res == nil then
            ngx.header["X-Nil"] = "1"
        end
        ngx.print(res or "")
        return
    end
    ngx.status = 502
    ngx.header["X-Rc"] = tostring(res)
    ngx.print(err or tostring(res))
end

-- A call with a per-call timeout straight through the adapter (the public
-- runtime:method(req) has none): the queue comes from the core's registry
-- (same lib&cfg key as ngx.load_ffi, so the same runtime).
local ffi = require "ffi"
pcall(ffi.cdef, [[
typedef struct ar_queue ar_queue;
ar_queue *ar_runtime_load(const char *lib, const char *cfg, int max_queue, int flags,
                          char *err, size_t errlen);
void ar_queue_unref(ar_queue *q);
]])
local core
function _M.call_timeout(lib, cfg, method, req, timeout_ms)
    _M.runtime(lib, cfg)                -- loaded (and cached) the public way
    if not core then
        core = ffi.load((os.getenv("AIORESTY_LIB_DIR") or ".") .. "/libaioresty_core.so", true)
    end
    local err = ffi.new("char[256]")
    local q = core.ar_runtime_load(lib, cfg, 0, 0, err, 256)
    if q == nil then
        return false, ffi.string(err)
    end
    local rc, rsp = require("aioresty.nginx").call(q, method, req, nil, timeout_ms)
    core.ar_queue_unref(q)
    if rc == nil then
        return false, rsp
    end
    if rc == 0 then
        return true, rsp
    end
    return false, rc, rsp
end

-- body of the request ("" if none)
function _M.body()
    ngx.req.read_body()
    local b = ngx.req.get_body_data()
    if b == nil then
        local f = ngx.req.get_body_file()
        if f then
            local fh = io.open(f, "rb")
            b = fh:read("*a")
            fh:close()
        end
    end
    return b or ""
end

return _M
