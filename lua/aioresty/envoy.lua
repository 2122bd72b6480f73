-- aioresty.envoy: the Envoy host adapter of resty_ffi.
--
-- A stock Envoy Lua filter coroutine can only wait inside httpCall (or
-- body()/trailers()), so a call is an httpCall to the "aioresty_bridge"
-- cluster, whose upstream HTTP filter is libaioresty_envoy.so: it posts the
-- task to the runtime's queue and answers with a local reply when the
-- runtime responds (no socket is involved).  See docs/envoy.md.
--
--   adapter.call(q, method, req, handle, timeout_ms)
--       -> rc:number, rsp:string|nil      (rc == 0: success)
--       -> nil, errmsg                    (the call itself failed)
local ffi = require "ffi"

local tostring = tostring
local tonumber = tonumber
local type = type
local setmetatable = setmetatable
local os_getenv = os.getenv
local ffi_new = ffi.new
local ffi_string = ffi.string
local math_floor = math.floor

-- resty_ffi always passes a timeout; this is the fallback of a direct caller
local core = require "aioresty.core"
local C = core.C
local DEFAULT_TIMEOUT_MS = core.DEFAULT_TIMEOUT_MS

local _M = { _VERSION = "0.1.0" }

_M.cluster = os_getenv("AIORESTY_ENVOY_CLUSTER") or "aioresty_bridge"

-- the :authority of a call: "<id>.<secret>" (native/envoy/bridge.c), cached
-- per queue cdata; nil once the runtime is unloaded
local authbuf = ffi_new("char[?]", 64)
local auths = setmetatable({}, { __mode = "k" })

local function authority(q)
    local a = auths[q]
    if a then
        return a
    end
    if C.ar_bridge_authority(q, authbuf, 64) ~= 0 then
        return nil
    end
    a = ffi_string(authbuf)
    auths[q] = a
    return a
end

local FINISHED = core.strerror(core.ECLOSED)

function _M.call(q, method, req, handle, timeout_ms)
    if q == nil then
        return nil, "no runtime queue"
    end
    if type(handle) ~= "userdata" and type(handle) ~= "table" then
        return nil, "the Envoy request_handle is required as the last argument"
    end
    if req == nil then
        req = ""
    elseif type(req) ~= "string" then
        req = tostring(req)
    end
    -- three headers and send_xff = false: the cheapest call through Envoy's
    -- async client (measured; native/envoy/bridge.c's header comment)
    local auth = authority(q)
    if not auth then
        return nil, FINISHED
    end
    local headers = {
        [":method"] = "POST",
        [":path"] = "/" .. tostring(method),
        [":authority"] = auth,
    }
    -- every call is bounded: Envoy answers 504 after timeout_ms and resets
    -- the bridge stream, whose filter then aborts the task
    if type(timeout_ms) ~= "number" or not (timeout_ms > 0) then
        timeout_ms = DEFAULT_TIMEOUT_MS
    end
    local options = { send_xff = false,
                      timeout_ms = timeout_ms >= 1 and math_floor(timeout_ms) or 1 }
    local h, body = handle:httpCall(_M.cluster, headers, req, options)
    if not h then
        return nil, "bridge call failed"
    end
    local status = h[":status"]
    if status == "200" then
        -- the module's answer: x-aioresty-rc only when rc ~= 0
        local rc = h["x-aioresty-rc"]
        rc = rc and tonumber(rc) or 0
        if h["x-aioresty-nil"] then
            return rc, nil
        end
        return rc, body or ""
    end
    -- the module's refusal: its words (the core's ar_strerror) are the body
    local e = h["x-aioresty-error"]
    if e then
        return nil, (body and body ~= "") and body or e
    end
    if status == "504" then
        return nil, "timeout"
    end
    return nil, "bridge call failed: status " .. tostring(status) .. ": " .. tostring(body)
end

return _M
