-- Test script: every runtime call is bounded (resty_ffi's default timeout),
-- for both Envoy modes (the stock Lua filter + bridge, aioresty's lua mode).
--   /default               -> "<DEFAULT_TIMEOUT_MS> <default at load> <default now> <bad arg>"
--   /py/<method>?s=S       -> rt:<method>(S) on tests.apps.stuckapp, no timeout of its own
--   /slow?ms=M&t=T         -> ngx.load_ffi("ffi_slow", M, {timeout = T}):echo("x")
--   /slow?ms=M&call=T      -> resty_ffi.call(ffi_slow, "echo", "x", h, T)
-- Answers "ok|res_or_rc|err".
local resty_ffi = require "resty_ffi"

-- this Lua VM's default (ms), lowered so that the tests do not wait 60 s
-- (guarded: on a resty_ffi without it the calls show the unbounded waits)
local AT_LOAD = resty_ffi.default_timeout and resty_ffi.default_timeout()
if resty_ffi.set_default_timeout then
    assert(resty_ffi.set_default_timeout(700))
end

local function query(path)
    local args = {}
    local q = path:match("%?(.*)$")
    if q then
        for k, v in q:gmatch("([^&=]+)=([^&]*)") do args[k] = v end
    end
    return args
end

local function answer(h, ok, res, err)
    h:respond({[":status"] = "200"}, tostring(ok) .. "|" .. tostring(res) .. "|" .. tostring(err))
end

function envoy_on_request(h)
    local path = h:headers():get(":path")
    local args = query(path)
    if path:find("^/default") then
        local bad, berr = resty_ffi.set_default_timeout(0)
        h:respond({[":status"] = "200"}, tostring(resty_ffi.DEFAULT_TIMEOUT_MS) .. " "
                  .. tostring(AT_LOAD) .. " " .. tostring(resty_ffi.default_timeout()) .. " "
                  .. tostring(bad) .. ":" .. tostring(berr))
        return
    end
    if path:find("^/slow") then
        local rt, err = ngx.load_ffi("ffi_slow", args.ms, {timeout = tonumber(args.t)})
        if not rt then
            return answer(h, nil, "load", err)
        end
        if args.call then
            return answer(h, resty_ffi.call(rt, "echo", "x", h, tonumber(args.call)))
        end
        return answer(h, rt:echo("x", h))
    end
    local rt, err = ngx.load_ffi("aioresty", "tests.apps.stuckapp")
    if not rt then
        return answer(h, nil, "load", err)
    end
    local method = path:match("^/py/([%w_]+)") or "echo"
    return answer(h, rt[method](rt, args.s or "", h))
end
