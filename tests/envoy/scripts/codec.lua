-- Test script: the three codecs from Lua, for both Envoy modes
-- (handlers in tests/apps/codecapp.py).  Answers 200 "ok|res_or_rc|err",
-- or 501 when the JSON library is not loadable here.
--   /json/table    a Lua table -> cjson.encode -> jecho -> cjson.decode
--   /json/string   the plain-string form (no JSON library: the lua mode)
--   /json/bad      an undecodable payload: false, 4, message
--   /msgpack       the request body (msgpack bytes from the client) -> mecho
--   /bytes         raw bytes -> becho
local resty_ffi = require "resty_ffi"   -- luacheck: ignore

-- cjson is a C module: on the stock Lua filter it binds to Envoy's own
-- LuaJIT (LUA_CPATH must name Debian's lua-cjson directory); the lua mode
-- runs a private LuaJIT, where a C module would bind to the wrong one, so
-- this script only uses it when resty_ffi's adapter is the stock one.
local has_cjson, cjson = false, nil
if not rawget(_G, "aioresty_lua_mode") then
    has_cjson, cjson = pcall(require, "cjson")
end

local function answer(h, ok, res, err)
    h:respond({[":status"] = "200"}, tostring(ok) .. "|" .. tostring(res) .. "|" .. tostring(err))
end

function envoy_on_request(h)
    local path = h:headers():get(":path")
    local rt, lerr = ngx.load_ffi("aioresty", "tests.apps.codecapp")
    if not rt then
        return answer(h, nil, "load", lerr)
    end
    if path == "/json/table" then
        if not has_cjson then
            h:respond({[":status"] = "501"}, "no cjson: " .. tostring(cjson))
            return
        end
        local ok, res, err = rt:jecho(cjson.encode({ name = "alice", tags = { "a", "b" },
                                                     n = 41, nested = { on = true } }), h)
        if not ok then
            return answer(h, ok, res, err)
        end
        local t = cjson.decode(res)
        return answer(h, true, t.kind .. "," .. t.got.name .. "," .. t.got.tags[2] .. ","
                      .. tostring(t.got.n + 1) .. "," .. tostring(t.got.nested.on), nil)
    elseif path == "/json/string" then
        return answer(h, rt:jecho('{"name": "alice", "tags": ["a", "b"], "n": 41}', h))
    elseif path == "/json/bad" then
        return answer(h, rt:jecho("not json{", h))
    end
    local body = h:body()
    local req = body and body:getBytes(0, body:length()) or ""
    if path == "/msgpack" then
        return answer(h, rt:mecho(req, h))
    end
    return answer(h, rt:becho(req, h))
end
