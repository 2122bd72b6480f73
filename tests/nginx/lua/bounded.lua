-- The nginx twin of tests/envoy/scripts/bounded.lua (tests/bounded_cases.py):
--   init_by_lua:  require("bounded").init()   -- lowers this VM's default to 700 ms
--   content:      require("bounded").handle()
--   /default, /py/<method>?s=S, /slow?ms=M[&t=T][&call=T]; answers "ok|res_or_rc|err"
local resty_ffi = require "resty_ffi"

local ngx = ngx
local tostring = tostring
local tonumber = tonumber

local _M = {}

function _M.init()
    -- guarded: on a resty_ffi without it the calls show the unbounded waits
    if resty_ffi.default_timeout then
        ngx.shared.results:set("at_load", resty_ffi.default_timeout())
    end
    if resty_ffi.set_default_timeout then
        assert(resty_ffi.set_default_timeout(700))
    end
end

local function answer(ok, res, err)
    ngx.print(tostring(ok), "|", tostring(res), "|", tostring(err))
end

function _M.handle()
    local uri = ngx.var.uri
    local args = ngx.req.get_uri_args()
    if uri == "/default" then
        local bad, berr = resty_ffi.set_default_timeout(0)
        ngx.print(tostring(resty_ffi.DEFAULT_TIMEOUT_MS), " ",
                  tostring(ngx.shared.results:get("at_load")), " ",
                  tostring(resty_ffi.default_timeout()), " ", tostring(bad), ":", tostring(berr))
        return
    end
    if uri == "/slow" then
        local rt, err = ngx.load_ffi("ffi_slow", args.ms, { timeout = tonumber(args.t) })
        if not rt then
            return answer(nil, "load", err)
        end
        if args.call then
            return answer(resty_ffi.call(rt, "echo", "x", nil, tonumber(args.call)))
        end
        return answer(rt:echo("x"))
    end
    local rt, err = ngx.load_ffi("aioresty", "tests.apps.stuckapp")
    if not rt then
        return answer(nil, "load", err)
    end
    local method = uri:match("^/py/([%w_]+)") or "echo"
    return answer(rt[method](rt, args.s or ""))
end

return _M
