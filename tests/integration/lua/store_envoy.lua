-- tests/apps/storeapp.py from an Envoy Lua filter, as a user writes it; runs
-- unchanged in the stock envoy.filters.http.lua (calls through the bridge) and
-- in aioresty's "lua" filter mode.  The cfg string (app spec + JSON config)
-- comes from the environment.
--   POST /store/<method>[?t=MS]  body = request -> 200 res | 502 x-rc: rc, err
--   GET  /gated/<id>  x-token: T -> authorize(T) then profile("<user> <id>")
--   GET  /unload                  -> runtime:__unload()
local resty_ffi = require "resty_ffi"

local CFG = os.getenv("AIORESTY_STORE_CFG")

local function store()
    return ngx.load_ffi("aioresty", CFG)
end

local function fail(h, status, rc, err)
    h:respond({[":status"] = tostring(status), ["x-rc"] = tostring(rc)}, tostring(err))
end

function envoy_on_request(h)
    local headers = h:headers()
    local path = headers:get(":path")
    local rt, lerr = store()
    if not rt then
        return fail(h, 500, "load", lerr)
    end

    local method = path:match("^/store/([%w_]+)")
    if method then
        local body = h:body()
        local req = body and body:getBytes(0, body:length()) or ""
        local t = tonumber(path:match("[?&]t=(%d+)"))
        local ok, res, err
        if t then
            ok, res, err = resty_ffi.call(rt, method, req, h, t)
        else
            ok, res, err = rt[method](rt, req, h)
        end
        if not ok then
            return fail(h, 502, res, err or res)
        end
        return h:respond({[":status"] = "200"}, res or "")
    end

    local id = path:match("^/gated/([%w_%-]+)")
    if id then
        local ok, user, err = rt:authorize(headers:get("x-token") or "", h)
        if not ok then
            if user == 10 then
                return fail(h, 401, user, "denied: " .. tostring(err))
            end
            return fail(h, 502, user, err)
        end
        local ok2, doc, err2 = rt:profile(user .. " " .. id, h)
        if not ok2 then
            return fail(h, 502, doc, err2)
        end
        return h:respond({[":status"] = "200", ["content-type"] = "application/json"}, doc)
    end

    if path == "/unload" then
        rt:__unload()
        return h:respond({[":status"] = "200"}, "unloaded")
    end
    h:respond({[":status"] = "404"}, "no such route")
end
