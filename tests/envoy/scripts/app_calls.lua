-- Test script: calls through resty_ffi (the public API) from an Envoy Lua filter.
--   /py/<method>?lib=L&cfg=C&t=MS    body = request   -> 200 body=res | 502 x-rc, body=err
--   /unload?lib=L&cfg=C                                -> runtime:__unload()
--   /two                                               -> two runtimes, one request
local resty_ffi = require "resty_ffi"

local function unescape(s)
    s = s:gsub("+", " ")
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function query(path)
    local args = {}
    local q = path:match("%?(.*)$")
    if q then
        for k, v in q:gmatch("([^&=]+)=([^&]*)") do args[k] = unescape(v) end
    end
    return args
end

local function reply(h, ok, res, err)
    if ok then
        h:respond({[":status"] = "200", ["x-nil"] = res == nil and "1" or "0"}, res or "")
    else
        h:respond({[":status"] = "502", ["x-rc"] = tostring(res)}, tostring(err or res))
    end
end

function envoy_on_request(h)
    local path = h:headers():get(":path")
    local args = query(path)
    local lib = args.lib or "aioresty"
    local cfg = args.cfg or "tests.apps.echoapp"
    if path:find("^/two") then
        local a = assert(ngx.load_ffi("resty_ffi_python", "ffi.echo?,init", {is_global = true}))
        local b = assert(ngx.load_ffi("aioresty", "tests.apps.echoapp"))
        local ok1, r1 = a:echo("from-legacy", h)
        local ok2, r2 = b:upper("from-app", h)
        h:respond({[":status"] = "200"}, tostring(ok1) .. " " .. tostring(r1) .. " | " ..
                  tostring(ok2) .. " " .. tostring(r2))
        return
    end
    local rt, err = ngx.load_ffi(lib, cfg, {max_queue = tonumber(args.mq)})
    if not rt then
        h:respond({[":status"] = "500", ["x-err"] = "load"}, tostring(err))
        return
    end
    if path:find("^/runtime_object") then
        local check = dofile(os.getenv("AIORESTY_TEST_LUA_DIR") .. "/runtime_object.lua")
        h:respond({[":status"] = "200"}, check(h))
        return
    end
    if path:find("^/unload_then_call") then
        rt:__unload()
        local ok, res, e = rt:echo("x", h)
        h:respond({[":status"] = "200"}, tostring(ok) .. "|" .. tostring(res) .. "|" .. tostring(e))
        return
    end
    if path:find("^/unload") then
        rt:__unload()
        h:respond({[":status"] = "200"}, "unloaded")
        return
    end
    local method = path:match("^/py/([%w_]+)") or "echo"
    local req = ""
    if h:headers():get(":method") == "POST" then
        local body = h:body()
        if body then req = body:getBytes(0, body:length()) end
    end
    if args.t then
        return reply(h, resty_ffi.call(rt, method, req, h, tonumber(args.t)))
    end
    return reply(h, rt[method](rt, req, h))
end
