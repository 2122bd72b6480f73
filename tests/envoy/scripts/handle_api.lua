-- Test script for aioresty's Envoy "lua" filter mode: the handle API, both
-- directions, robustness paths.  Path-dispatched; most paths respond().
local resty_ffi = require "resty_ffi"

local tostring = tostring
local concat = table.concat

local function rt(cfg)
    return assert(ngx.load_ffi("aioresty", cfg or "tests.apps.echoapp"))
end

local routes = {}

routes["/hdr"] = function(h)
    local hs = h:headers()
    local out = {
        "get=" .. tostring(hs:get("x-multi")),
        "n=" .. tostring(hs:getNumValues("x-multi")),
        "i0=" .. tostring(hs:getAtIndex("x-multi", 0)),
        "i1=" .. tostring(hs:getAtIndex("x-multi", 1)),
        "i2=" .. tostring(hs:getAtIndex("x-multi", 2)),
        "none=" .. tostring(hs:get("x-none")),
    }
    hs:add("x-added", "1")
    hs:add("x-added", "2")
    hs:replace("x-multi", "r")
    hs:remove("x-gone")
    out[#out + 1] = "after=" .. tostring(hs:get("x-added")) .. "/" .. tostring(hs:get("x-multi"))
        .. "/" .. tostring(hs:get("x-gone"))
    local seen = {}
    for k, v in pairs(hs) do
        if k:sub(1, 2) == "x-" then
            seen[#seen + 1] = k .. ":" .. v
        end
    end
    table.sort(seen)
    out[#out + 1] = "pairs=" .. concat(seen, ",")
    h:respond({ [":status"] = "200", ["x-two"] = { "a", "b" } }, concat(out, "\n"))
end

routes["/body"] = function(h)
    local b = h:body()
    local n = b:length()
    local parts = {}
    for chunk in h:bodyChunks() do
        parts[#parts + 1] = chunk:getBytes(0, chunk:length())
    end
    local whole = b:getBytes(0, n)
    local ok, err = pcall(b.getBytes, b, 0, n + 1)
    h:respond({ [":status"] = "200", ["x-len"] = tostring(n),
                ["x-chunks-equal"] = tostring(concat(parts) == whole),
                ["x-range-error"] = tostring(not ok and err:find("buffer size", 1, true) ~= nil) },
              whole:sub(2, 4))
end

routes["/nobody"] = function(h)
    local b = h:body()
    local w = h:body(true)
    h:respond({ [":status"] = "200" }, tostring(b) .. "|" .. tostring(w:length()))
end

routes["/meta"] = function(h)
    local m = h:metadata()
    h:respond({ [":status"] = "200" }, tostring(m:get("greeting")) .. "|" .. tostring(m:get("num"))
              .. "|" .. tostring(m:get("flag")) .. "|" .. tostring(m:get("missing")))
end

routes["/si"] = function(h)
    local si = h:streamInfo()
    h:respond({ [":status"] = "200" }, concat({ tostring(si:protocol()),
        tostring(si:downstreamRemoteAddress()), tostring(si:downstreamLocalAddress()),
        tostring(h:connection():ssl()) }, "|"))
end

routes["/log"] = function(h)
    h:logTrace("trace-msg")
    h:logDebug("debug-msg")
    h:logInfo("info-msg")
    h:logWarn("warn-msg")
    h:logErr("err-msg")
    h:logCritical("critical-msg")
    h:respond({ [":status"] = "200" }, "logged")
end

routes["/unknown"] = function(h)
    local ok, err = pcall(function() return h:httpCall("x", {}, "", 1) end)
    local ok2, err2 = pcall(function() return h:headers():setHttp1ReasonPhrase("x") end)
    h:respond({ [":status"] = "200" }, tostring(ok) .. "|" .. tostring(err) .. "\n"
              .. tostring(ok2) .. "|" .. tostring(err2))
end

routes["/keep"] = function(h)
    KEPT = h                                    -- luacheck: ignore (on purpose)
    KEPT_HDRS = h:headers()                     -- luacheck: ignore
    h:respond({ [":status"] = "200" }, "kept")
end

routes["/use_kept"] = function(h)
    local ok, err = pcall(function() return KEPT:headers() end)
    local ok2, err2 = pcall(function() return KEPT_HDRS:get(":path") end)
    h:respond({ [":status"] = "200" }, tostring(ok) .. "|" .. tostring(err) .. "\n"
              .. tostring(ok2) .. "|" .. tostring(err2))
end

routes["/yield"] = function()
    coroutine.yield()
end

routes["/error"] = function()
    error("boom from the script")
end

routes["/two_calls"] = function(h)
    local a = rt()
    local ok1, r1 = a:echo("one", h)
    local ok2, r2 = a:upper(r1 .. "-two", h)
    h:respond({ [":status"] = "200" }, tostring(ok1) .. " " .. tostring(ok2) .. " " .. tostring(r2))
end

routes["/call_then_continue"] = function(h)
    local ok, r = rt():upper("x", h)
    h:headers():add("x-called", tostring(ok) .. ":" .. tostring(r))
    -- no respond(): the stream continues to the route (direct_response)
end

routes["/body_after_call"] = function(h)
    local ok, r = rt():echo("first", h)
    local b = h:body()
    h:respond({ [":status"] = "200" }, tostring(ok) .. " " .. r .. " " .. b:getBytes(0, b:length()))
end

routes["/pcall_call"] = function(h)
    local ok, a, b = pcall(function() return rt():fail("in pcall", h) end)
    h:respond({ [":status"] = "200" }, tostring(ok) .. "|" .. tostring(a) .. "|" .. tostring(b))
end

routes["/sleep"] = function(h)
    local ok, r, e = rt():sleep(h:headers():get("x-seconds") or "5", h)
    h:respond({ [":status"] = "200" }, tostring(ok) .. "|" .. tostring(r) .. "|" .. tostring(e))
end

routes["/mem"] = function(h)
    collectgarbage("collect")
    collectgarbage("collect")
    h:respond({ [":status"] = "200" }, tostring(collectgarbage("count")))
end

routes["/alive"] = function(h)
    local s = aioresty_lua_mode.stats()           -- luacheck: ignore
    h:respond({ [":status"] = "200" }, tostring(s.tasks_alive) .. " " .. tostring(s.states)
              .. " " .. tostring(s.script_errors))
end

routes["/luajit"] = function(h)
    h:respond({ [":status"] = "200" }, jit.version .. "|" .. aioresty_lua_mode.luajit) -- luacheck: ignore
end

routes["/timeout"] = function(h)
    local ok, r, e = resty_ffi.call(rt(), "sleep", "2", h, 100)
    h:respond({ [":status"] = "200" }, tostring(ok) .. "|" .. tostring(r) .. "|" .. tostring(e))
end

function envoy_on_request(h)
    local path = h:headers():get(":path")
    local f = routes[path:match("^[^?]*")]
    if f then
        return f(h)
    end
end

-- response direction: upstream answers (paths under /up/) get a call on the
-- buffered response body; the result goes into response headers
function envoy_on_response(h)
    local hs = h:headers()
    if hs:get("x-upstream") ~= "yes" then
        return
    end
    local b = h:body()
    local n = b and b:length() or 0
    local r = rt()
    local ok, res = r:upper(b and b:getBytes(0, n) or "", h)
    local ok2, res2 = r:echo("second", h)
    hs:add("x-resp-upper", tostring(ok) .. ":" .. res)
    hs:replace("x-resp-second", tostring(ok2) .. ":" .. res2)
    hs:remove("x-drop-me")
    hs:replace("x-resp-len", tostring(n))
end
