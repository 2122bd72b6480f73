-- aioresty.envoy_lua_mode: the host adapter of resty_ffi inside aioresty's own
-- Envoy filter mode "lua" (libaioresty_envoy.so, native/envoy/lua/).
--
-- There the coroutine can wait natively: aioresty_lua_mode.call (a C function
-- of the module, present only in that mode's Lua states) posts the task to
-- the runtime's queue and yields; the module resumes the coroutine on the
-- worker thread when the runtime answers.  No httpCall, no cluster.
--
--   adapter.call(q, method, req, handle, timeout_ms)
--       -> rc:number, rsp:string|nil      (rc == 0: success)
--       -> nil, errmsg                    (the call itself failed)
local ffi = require "ffi"

local type = type
local tonumber = tonumber
local tostring = tostring
local setmetatable = setmetatable
local ffi_cast = ffi.cast

local lua_mode = aioresty_lua_mode          -- luacheck: ignore (set by the module)
if type(lua_mode) ~= "table" or type(lua_mode.call) ~= "function" then
    error("aioresty.envoy_lua_mode: only usable in aioresty's Envoy lua filter mode", 2)
end
local native_call = lua_mode.call

local _M = { _VERSION = "0.1.0" }

-- the queue's address as a Lua number (exact: user-space addresses < 2^53),
-- cached per cdata
local qaddr = setmetatable({}, { __mode = "k" })

local function queue_address(q)
    local a = qaddr[q]
    if a then
        return a
    end
    a = tonumber(ffi_cast("uintptr_t", q))
    qaddr[q] = a
    return a
end

function _M.call(q, method, req, handle, timeout_ms)
    if q == nil then
        return nil, "no runtime queue"
    end
    if type(handle) ~= "userdata" then
        return nil, "the Envoy request_handle is required as the last argument"
    end
    if req ~= nil and type(req) ~= "string" then
        req = tostring(req)
    end
    if type(timeout_ms) ~= "number" or not (timeout_ms > 0) then
        timeout_ms = 0                          -- 0: the module's AR_DEFAULT_TIMEOUT_MS
    end
    return native_call(handle, queue_address(q), method, req, timeout_ms)
end

return _M
