-- Test script for the bridge mechanism alone (no resty_ffi): loads runtimes
-- through the core with LuaJIT ffi and calls them via aioresty.envoy.
--   /call?lib=L&cfg=C&method=M&t=MS&mq=N   body = request bytes
--   /unload?lib=L&cfg=C
--   /alive                                  -> ar_tasks_alive()
--   /coremetrics                            -> the core's own Prometheus text
local ffi = require "ffi"
local adapter = require "aioresty.envoy"

ffi.cdef [[
typedef struct ar_queue ar_queue;
ar_queue *ar_runtime_load(const char *lib, const char *cfg, int max_queue, int flags,
                          char *err, size_t errlen);
void ar_runtime_unload(ar_queue *q);
long ar_tasks_alive(void);
size_t ar_metrics_prometheus(char *out, size_t cap);
]]
local core = ffi.load((os.getenv("AIORESTY_LIB_DIR") or ".") .. "/libaioresty_core.so")
local queues = {}

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

local function runtime(args)
    local key = args.lib .. "&" .. (args.cfg or "")
    local q = queues[key]
    if q then return q end
    local err = ffi.new("char[512]")
    q = core.ar_runtime_load(args.lib, args.cfg, tonumber(args.mq) or 0, 0, err, 512)
    if q == nil then return nil, ffi.string(err) end
    queues[key] = q
    return q
end

function envoy_on_request(h)
    local path = h:headers():get(":path")
    local args = query(path)
    if path:find("^/alive") then
        h:respond({[":status"] = "200"}, tostring(tonumber(core.ar_tasks_alive())))
        return
    end
    if path:find("^/coremetrics") then
        local n = tonumber(core.ar_metrics_prometheus(nil, 0)) + 4096
        local buf = ffi.new("char[?]", n)
        n = tonumber(core.ar_metrics_prometheus(buf, n))
        h:respond({[":status"] = "200"}, ffi.string(buf, n))
        return
    end
    if path:find("^/raw") then
        local rh, rb = h:httpCall(adapter.cluster, {[":method"] = "POST", [":path"] = "/",
                                  [":authority"] = "aioresty"}, "", 2000)
        h:respond({[":status"] = "200", ["x-status"] = rh[":status"],
                   ["x-aioresty-error"] = rh["x-aioresty-error"] or ""}, rb or "")
        return
    end
    local q, err = runtime(args)
    if not q then
        h:respond({[":status"] = "500", ["x-err"] = "load"}, err)
        return
    end
    if path:find("^/unload") then
        core.ar_runtime_unload(q)
        h:respond({[":status"] = "200"}, "unloaded")
        return
    end
    local req = ""
    if h:headers():get(":method") == "POST" then
        local body = h:body()
        if body then req = body:getBytes(0, body:length()) end
    end
    local rc, rsp = adapter.call(q, args.method or "echo", req, h, tonumber(args.t))
    if rc == nil then
        h:respond({[":status"] = "502", ["x-err"] = rsp}, rsp)
        return
    end
    h:respond({[":status"] = "200", ["x-rc"] = tostring(rc),
               ["x-nil"] = rsp == nil and "1" or "0"}, rsp or "")
end
