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

-- A call with its own timeout (ms): resty_ffi.call(rt, method, req, handle, ms)
function _M.call_timeout(lib, cfg, method, req, timeout_ms)
    local rt = _M.runtime(lib, cfg)
    return require("resty_ffi").call(rt, method, req, nil, timeout_ms)
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
