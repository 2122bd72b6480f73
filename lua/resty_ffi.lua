-- resty_ffi: lua-resty-ffi's API on stock proxies, served by aioresty.
--
--   require("resty_ffi")
--   local rt, err = ngx.load_ffi(lib, cfg, opts)   -- opts: max_queue, is_global,
--                                                  --       unpin, timeout (ms)
--   local ok, res_or_rc, err = rt:<method>(req[, request_handle])
--   local ok, res_or_rc, err = rt(req[, request_handle])   -- method ""
--   rt:__unload()
--
-- The runtime object is lua-resty-ffi's: `key`, `finished`, `handle` (the
-- runtime library's ffi clib), `tq` (its queue) and `__unload` are its only
-- fields; every other name is a method.  `req` is a string or nil.
--
-- Every call is bounded: its timeout is resty_ffi.call's timeout_ms, else
-- the runtime's opts.timeout, else the Lua VM's default
-- (resty_ffi.DEFAULT_TIMEOUT_MS = 60000 ms; resty_ffi.set_default_timeout(ms)).
-- A call that times out returns false, "timeout" and aborts its task.
--
-- Limits (aioresty_core.h, the same on every host): method names 0..METHOD_MAX
-- bytes without NUL, answers up to ANSWER_MAX bytes (a longer one is
-- false, 5, why).  A load of a key this VM already has, asking for other
-- options, returns the loaded runtime and logs one warning naming both.
--
-- ngx.load_ffi is the one global this module writes (it creates `ngx` when the
-- host has none, as on Envoy).  Runtimes are cached per Lua VM under
-- lib .. "&" .. cfg, and shared process-wide by the native registry.
-- The host adapter (aioresty.nginx or aioresty.envoy) makes the coroutine
-- wait without blocking the proxy's thread.
local ffi = require "ffi"
local core = require "aioresty.core"

local C = core.C
local ffi_new = ffi.new
local ffi_string = ffi.string
local ffi_gc = ffi.gc
local type = type
local setmetatable = setmetatable
local rawget = rawget
local rawset = rawset
local error = error
local math_huge = math.huge
local str_find = string.find
local str_format = string.format
local tostring = tostring

local _M = { _VERSION = "0.1.0", DEFAULT_TIMEOUT_MS = core.DEFAULT_TIMEOUT_MS,
             METHOD_MAX = core.METHOD_MAX, ANSWER_MAX = core.ANSWER_MAX }

local default_timeout = core.DEFAULT_TIMEOUT_MS     -- ms, this Lua VM's

local adapter
local function get_adapter()
    if adapter then
        return adapter
    end
    local ngx_ = rawget(_G, "ngx")
    if rawget(_G, "aioresty_lua_mode") then        -- the Envoy module's lua mode
        adapter = require "aioresty.envoy_lua_mode"
    elseif ngx_ and ngx_.config and ngx_.config.subsystem then
        adapter = require "aioresty.nginx"
    else
        adapter = require "aioresty.envoy"
    end
    return adapter
end

local runtimes = {}     -- per Lua VM: key -> runtime object
local timeouts = setmetatable({}, { __mode = "k" })     -- runtime -> opts.timeout (ms)
local loaded = setmetatable({}, { __mode = "k" })       -- runtime -> { max_queue, flags, path }

-- Is rt still usable?  It may have been unloaded elsewhere in the process
-- (another VM or worker thread shares the runtime).
local function alive(rt)
    if rt.finished then
        return false
    end
    if C.ar_queue_closed(rt.tq) ~= 0 then
        rt.finished = true
        if runtimes[rt.key] == rt then
            runtimes[rt.key] = nil
        end
        return false
    end
    return true
end

-- Method names, the same rule on every host and mode: 0-127 bytes, no NUL
-- (a NUL would cut the name in C: "echo\0zzz" must not call "echo").
local METHOD_MAX = _M.METHOD_MAX
local FINISHED = core.strerror(core.ECLOSED)

local function call(rt, method, req, handle, timeout_ms)
    if #method > METHOD_MAX or str_find(method, "\0", 1, true) then
        return false, "resty_ffi: bad method name (0-" .. METHOD_MAX .. " bytes, no NUL)"
    end
    if not alive(rt) then
        return false, FINISHED
    end
    if req ~= nil and type(req) ~= "string" then
        error("resty_ffi: req must be a string or nil, got " .. type(req), 3)
    end
    if type(timeout_ms) ~= "number" or not (timeout_ms > 0) or timeout_ms == math_huge then
        timeout_ms = timeouts[rt] or default_timeout    -- never unbounded
    end
    local rc, rsp = get_adapter().call(rt.tq, method, req, handle, timeout_ms)
    if rc == nil then
        return false, rsp
    end
    if rc == 0 then
        return true, rsp, nil
    end
    return false, rc, rsp
end

-- One closure per method name, cached for at most METHOD_CACHE names (a
-- request-derived name must not grow the VM forever); past that each lookup
-- makes a fresh closure.  Cached ones are also set on the runtime object, so
-- later rt:name() calls skip the metamethod.
local METHOD_CACHE = 1024
local methods, nmethods = {}, 0
local function method_for(name)
    local f = methods[name]
    if f then
        return f, true
    end
    f = function(self, req, handle)
        return call(self, name, req, handle)
    end
    if nmethods < METHOD_CACHE then
        methods[name] = f
        nmethods = nmethods + 1
        return f, true
    end
    return f, false
end

local function unload(self)
    if self.finished then
        return
    end
    self.finished = true
    if runtimes[self.key] == self then
        runtimes[self.key] = nil
    end
    C.ar_runtime_unload(self.tq)
end

local mt = {
    __index = function(self, k)
        if type(k) ~= "string" then
            return nil
        end
        if k == "handle" then       -- lua-resty-ffi: the runtime library's clib
            local clib = ffi.load(loaded[self].path, false)
            rawset(self, "handle", clib)
            return clib
        end
        local f, cached = method_for(k)
        if cached then
            rawset(self, k, f)
        end
        return f
    end,
    __call = function(self, req, handle)
        return call(self, "", req, handle)
    end,
}

local errbuf_len = 1024

-- A load of a key this VM already has, with other options: one warning per
-- runtime object, naming both (the loaded runtime's options stay; the
-- registry warns the same way across VMs, aioresty_core.h).
local function describe(max_queue, flags, timeout)
    return str_format("max_queue=%s is_global=%s unpin=%s timeout=%s",
                      tostring(max_queue),
                      tostring(flags % 2 == 1), tostring(flags >= 2),
                      timeout and tostring(timeout) or "default")
end

local function check_options(rt, max_queue, flags, timeout)
    local was = loaded[rt]
    if not was or was.warned then
        return
    end
    local mq = max_queue > 0 and max_queue or was.max_queue
    local fl = flags % 4
    local to = timeout or timeouts[rt]
    if mq == was.max_queue and fl == was.flags and to == timeouts[rt] then
        return
    end
    was.warned = true
    C.ar_log(core.LOG_WARN, str_format(
        "runtime '%s' is already loaded in this Lua VM with %s; a load asking for %s gets it"
        .. " as it is (the first load's options stay)",
        rt.key, describe(was.max_queue, was.flags, timeouts[rt]), describe(mq, fl, to)))
end

function _M.load_ffi(lib, cfg, opts)
    if type(lib) ~= "string" or lib == "" then
        return nil, "ngx.load_ffi: lib must be a non-empty string"
    end
    if cfg ~= nil and type(cfg) ~= "string" then
        return nil, "ngx.load_ffi: cfg must be a string or nil"
    end
    local max_queue, flags, timeout = 0, 0, nil     -- 0, nil: not asked for
    if opts ~= nil then
        if type(opts) ~= "table" then
            return nil, "ngx.load_ffi: opts must be a table"
        end
        if opts.max_queue ~= nil then
            if type(opts.max_queue) ~= "number" or opts.max_queue < 1
                    or opts.max_queue > 0x7fffffff then
                return nil, "ngx.load_ffi: opts.max_queue must be a positive number"
            end
            max_queue = opts.max_queue
        end
        flags = core.LOAD_OPTIONS
        if opts.is_global then
            flags = flags + core.LOAD_GLOBAL
        end
        if opts.unpin then
            flags = flags + core.LOAD_UNPIN
        end
        if opts.timeout ~= nil then
            if type(opts.timeout) ~= "number" or not (opts.timeout > 0)
                    or opts.timeout == math_huge then
                return nil, "ngx.load_ffi: opts.timeout must be a positive finite number (ms)"
            end
            timeout = opts.timeout
        end
    end
    local key = cfg and (lib .. "&" .. cfg) or lib
    local rt = runtimes[key]
    if rt and alive(rt) then
        if opts ~= nil then
            check_options(rt, max_queue, flags, timeout)
        end
        return rt
    end
    local ad = get_adapter()
    if ad.can_load then
        local ok, err = ad.can_load()
        if not ok then
            return nil, err
        end
    end
    local err = ffi_new("char[?]", errbuf_len)
    local q = C.ar_runtime_load(lib, cfg, max_queue, flags, err, errbuf_len)
    if q == nil then
        return nil, ffi_string(err)
    end
    rt = setmetatable({
        tq = ffi_gc(q, C.ar_queue_unref),
        key = key,
        finished = false,
        __unload = unload,
    }, mt)
    timeouts[rt] = timeout
    local path = C.ar_runtime_path(q, err, errbuf_len) == 0 and ffi_string(err) or lib
    loaded[rt] = { max_queue = max_queue > 0 and max_queue or core.DEFAULT_MAX_QUEUE,
                   flags = flags % 4, path = path }
    runtimes[key] = rt
    return rt
end

-- resty_ffi.set_default_timeout(ms): the timeout of every call of this Lua
-- VM that has none of its own (no opts.timeout, no timeout_ms); -> true, or
-- nil, err.  Set it where the VM starts (nginx: init_by_lua*; Envoy: the
-- script's main chunk).  There is no "forever".
function _M.set_default_timeout(ms)
    if type(ms) ~= "number" or not (ms > 0) or ms == math_huge then
        return nil, "resty_ffi.set_default_timeout: ms must be a positive finite number"
    end
    default_timeout = ms
    return true
end

-- resty_ffi.default_timeout() -> the current default (ms)
function _M.default_timeout()
    return default_timeout
end

-- resty_ffi.call(rt, method, req, handle, timeout_ms): a call with its own
-- timeout (ms); same results as rt:<method>(req, handle).
-- lua-resty-ffi's field names: never methods (resty_ffi.RESERVED[name])
local reserved = { __unload = true, key = true, finished = true, handle = true, tq = true }
_M.RESERVED = reserved

-- resty_ffi.call is also the safe way to call a method whose name comes from
-- a request: reserved names are refused, never looked up on the object.
function _M.call(rt, method, req, handle, timeout_ms)
    if type(method) ~= "string" then
        error("resty_ffi.call: method must be a string", 2)
    end
    if reserved[method] then
        error("resty_ffi.call: '" .. method .. "' is a reserved name, not a method", 2)
    end
    return call(rt, method, req, handle, timeout_ms)
end

ngx = ngx or {}         -- luacheck: ignore (the documented global, as in lua-resty-ffi)
ngx.load_ffi = _M.load_ffi

return _M
