-- The nginx twin of tests/envoy/scripts/codec.lua (tests/codec_cases.py):
-- cjson is Debian's lua-cjson (`apt-get install lua-cjson`; nginx-lua's
-- LuaJIT finds it on its default cpath); the routes and answers are the same.
local ngx = ngx
local tostring = tostring

local _M = {}

local function answer(ok, res, err)
    ngx.print(tostring(ok), "|", tostring(res), "|", tostring(err))
end

function _M.handle()
    local uri = ngx.var.uri
    local rt, lerr = ngx.load_ffi("aioresty", "tests.apps.codecapp")
    if not rt then
        return answer(nil, "load", lerr)
    end
    if uri == "/json/table" then
        local has_cjson, cjson = pcall(require, "cjson")
        if not has_cjson then
            ngx.status = 501
            ngx.print("no cjson: ", tostring(cjson))
            return
        end
        local ok, res, err = rt:jecho(cjson.encode({ name = "alice", tags = { "a", "b" },
                                                     n = 41, nested = { on = true } }))
        if not ok then
            return answer(ok, res, err)
        end
        local t = cjson.decode(res)
        return answer(true, t.kind .. "," .. t.got.name .. "," .. t.got.tags[2] .. ","
                      .. tostring(t.got.n + 1) .. "," .. tostring(t.got.nested.on), nil)
    elseif uri == "/json/string" then
        return answer(rt:jecho('{"name": "alice", "tags": ["a", "b"], "n": 41}'))
    elseif uri == "/json/bad" then
        return answer(rt:jecho("not json{"))
    end
    ngx.req.read_body()
    local req = ngx.req.get_body_data() or ""
    if uri == "/msgpack" then
        return answer(rt:mecho(req))
    end
    return answer(rt:becho(req))
end

return _M
