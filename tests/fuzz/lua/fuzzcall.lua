-- The fuzz tests' dispatcher (tests/fuzz/test_fuzz.py), shared by every host:
-- the Envoy scripts (stock Lua filter and aioresty's "lua" mode) and nginx
-- load it with dofile and answer what run() returns.
--
--   /f/<percent-encoded method>?how=call|index|bare&t=<ms>&lib=c&rh=1
--       body = request.  how=call (default): resty_ffi.call(rt, name, req, h, t),
--       the documented way to call a request-derived name; index: rt[name](rt, req, h)
--       after the RESERVED check a script must make (examples/envoy/app.lua);
--       bare: rt(req, h), the method "".  lib=c: the C echo runtime instead of
--       tests.apps.fuzzapp.  rh=1: the answer's first bytes also go in a header.
--   /id  -> "py=<registry id> c=<registry id>" of the two runtimes
-- Every answer carries x-rt-id, the registry id of the runtime used: a request
-- that unloaded it would show as a new id (ids are never reused).
local resty_ffi = require "resty_ffi"
local ffi = require "ffi"
local C = require("aioresty.core").C

local tostring = tostring
local tonumber = tonumber

local M = {}

local function unescape(s)
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function query(q)
    local args = {}
    for k, v in q:gmatch("([^&=]+)=([^&]*)") do args[k] = unescape(v) end
    return args
end

local idbuf = ffi.new("char[64]")
local function rt_id(rt)
    if C.ar_bridge_authority(rt.tq, idbuf, 64) ~= 0 then
        return "closed"
    end
    return (ffi.string(idbuf):match("^(%d+)%.")) or "?"
end

local function runtime(lib)
    if lib == "c" then
        return ngx.load_ffi("ffi_c_echo")
    end
    return ngx.load_ffi("aioresty", "tests.apps.fuzzapp")
end

-- -> status, headers (name -> string), body
function M.run(path, req, handle)
    if path == "/id" then
        local py, perr = runtime("py")
        local c, cerr = runtime("c")
        if not py or not c then
            return 500, { ["x-err"] = "load" }, tostring(perr) .. " " .. tostring(cerr)
        end
        return 200, {}, "py=" .. rt_id(py) .. " c=" .. rt_id(c)
    end
    local raw, q = path:match("^/f/([^?]*)%??(.*)$")
    if not raw then
        return 404, {}, "not a fuzz path"
    end
    local args = query(q)
    local name = unescape(raw)
    local rt, err = runtime(args.lib)
    if not rt then
        return 500, { ["x-err"] = "load" }, tostring(err)
    end
    local hs = { ["x-rt-id"] = rt_id(rt) }
    local how = args.how or "call"
    local ok, res, msg
    if how == "bare" then
        ok, res, msg = rt(req, handle)
    elseif resty_ffi.RESERVED[name] then
        if how == "index" then
            return 404, hs, "reserved"
        end
        -- resty_ffi.call refuses it (an error, before any yield)
        local pok, perr = pcall(resty_ffi.call, rt, name, req, handle)
        hs["x-err"] = "reserved"
        return 400, hs, tostring(pok) .. " " .. tostring(perr)
    elseif how == "index" then
        ok, res, msg = rt[name](rt, req, handle)
    else
        ok, res, msg = resty_ffi.call(rt, name, req, handle, tonumber(args.t))
    end
    hs["x-rt-id"] = rt_id(rt)
    if ok then
        hs["x-nil"] = res == nil and "1" or "0"
        if args.rh == "1" and res then
            hs["x-res"] = res:sub(1, 64)
        end
        return 200, hs, res or ""
    end
    if msg ~= nil then
        hs["x-rc"] = tostring(res)
        return 502, hs, tostring(msg)
    end
    hs["x-err"] = "call"
    return 503, hs, tostring(res)
end

return M
