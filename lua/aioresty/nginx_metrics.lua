-- aioresty.nginx_metrics: the Prometheus endpoint of aioresty on nginx,
-- summed over every worker (docs/operations.md "Metrics").
--
--   lua_shared_dict aioresty_metrics 1m;          # http {}
--   location = /metrics { content_by_lua_block { require("aioresty.nginx").metrics() } }
--
-- Each worker's core keeps its own table (aioresty_core.h section 4).  A
-- worker that loaded a runtime publishes its table as Prometheus text into
-- the shared dict every PUBLISH_EVERY seconds, under "w<worker id>" with an
-- expiry, so an exited worker's entry goes away; the worker serving a scrape
-- publishes its own first, then sums every worker's entry per series
-- (loop_lag_us: the largest).  Other workers' figures are at most
-- PUBLISH_EVERY old.
local ffi = require "ffi"
local core = require "aioresty.core"

local C = core.C
local ffi_new = ffi.new
local ffi_string = ffi.string
local ngx = ngx
local ngx_log = ngx.log
local ngx_say = ngx.say
local ngx_print = ngx.print
local ERR = ngx.ERR
local WARN = ngx.WARN
local shared = ngx.shared
local timer_every = ngx.timer.every
local worker_id = ngx.worker.id
local worker_count = ngx.worker.count
local tonumber = tonumber
local tostring = tostring
local ipairs = ipairs
local floor = math.floor
local str_find = string.find
local str_sub = string.sub
local str_match = string.match
local str_format = string.format
local concat = table.concat
local gmatch = string.gmatch

ffi.cdef [[
size_t ar_metrics_prometheus(char *out, size_t cap);
]]

local _M = {}

local DICT = "aioresty_metrics"
local PUBLISH_EVERY = 1        -- seconds
local EXPIRE = 5               -- seconds an entry outlives its last publish
local MAX_FAMILIES = { aioresty_loop_lag_us = true }   -- summed by max, not +

local buf_size = 65536
local buf = ffi_new("char[?]", buf_size)
local started = false
local warned = false

-- This worker's table as Prometheus text.
local function local_text()
    local n = tonumber(C.ar_metrics_prometheus(buf, buf_size))
    if n >= buf_size then
        buf_size = n + 4096
        buf = ffi_new("char[?]", buf_size)
        n = tonumber(C.ar_metrics_prometheus(buf, buf_size))
        if n >= buf_size then
            n = buf_size - 1                -- grew again meanwhile: a later scrape has it
        end
    end
    return ffi_string(buf, n)
end

local function publish()
    local dict = shared[DICT]
    local id = worker_id()
    if not dict or not id then
        return nil, "no dict"
    end
    local ok, err, forcible = dict:set("w" .. id, local_text(), EXPIRE)
    if not ok then
        return nil, err
    end
    if forcible and not warned then
        warned = true
        ngx_log(WARN, "aioresty: lua_shared_dict ", DICT, " is full: metrics of other ",
                "workers were evicted (make it larger)")
    end
    return true
end

local function on_timer(premature)
    if not premature then
        publish()
    end
end

-- The wake loop of a worker starts (its first runtime): publish from now on.
function _M.start()
    if started or not shared[DICT] then
        return
    end
    started = true
    publish()
    local ok, err = timer_every(PUBLISH_EVERY, on_timer)
    if not ok then
        ngx_log(ERR, "aioresty: cannot start the metrics timer: ", err)
    end
end

-- Sums the texts of every worker, series by series, keeping each family's
-- series together (the exposition format requires it).
local function merge(texts)
    local order, families = {}, {}
    for _, text in ipairs(texts) do
        local fam
        for line in gmatch(text, "[^\n]+") do
            if str_sub(line, 1, 1) == "#" then
                local name = str_match(line, "^# %u+ (%S+)")
                fam = families[name]
                if not fam then
                    fam = { name = name, meta = {}, keys = {}, values = {} }
                    families[name] = fam
                    order[#order + 1] = fam
                end
                if #fam.meta < 2 then
                    fam.meta[#fam.meta + 1] = line
                end
            elseif fam then
                local sp = str_find(line, " [^ ]*$")
                local key, v = str_sub(line, 1, sp - 1), tonumber(str_sub(line, sp + 1))
                local old = fam.values[key]
                if old == nil then
                    fam.keys[#fam.keys + 1] = key
                    fam.values[key] = v
                elseif MAX_FAMILIES[fam.name] then
                    if v > old then
                        fam.values[key] = v
                    end
                else
                    fam.values[key] = old + v
                end
            end
        end
    end
    local out = {}
    for _, fam in ipairs(order) do
        for _, m in ipairs(fam.meta) do
            out[#out + 1] = m
        end
        for _, key in ipairs(fam.keys) do
            local v = fam.values[key]
            out[#out + 1] = key .. " " .. (v == floor(v) and str_format("%d", v)
                                           or tostring(v))
        end
    end
    out[#out + 1] = ""
    return concat(out, "\n")
end

-- content_by_lua: every worker's metrics, summed.
function _M.serve()
    local dict = shared[DICT]
    if not dict then
        ngx.status = 500
        ngx.header["Content-Type"] = "text/plain"
        ngx_log(ERR, "aioresty: metrics need `lua_shared_dict ", DICT, " 1m;` in http {}")
        return ngx_say("aioresty: metrics need `lua_shared_dict ", DICT,
                       " 1m;` in the http block (the workers' figures meet there)")
    end
    local ok, err = publish()
    if not ok then
        ngx_log(WARN, "aioresty: cannot publish this worker's metrics: ", err)
    end
    local texts = {}
    for id = 0, worker_count() - 1 do
        local text = dict:get("w" .. id)
        if text then
            texts[#texts + 1] = text
        end
    end
    ngx.header["Content-Type"] = "text/plain; version=0.0.4"
    return ngx_print(merge(texts))
end

_M.merge = merge        -- for tests

return _M
