-- The runtime object is lua-resty-ffi's (issue 11, point 2): one function run
-- by every host's test script; returns "ok" or the first failed check.
local resty_ffi = require "resty_ffi"

local function check(handle)
    local py = assert(ngx.load_ffi("aioresty", "tests.apps.echoapp"))
    local c = assert(ngx.load_ffi("ffi_c_echo", "-"))
    if type(py.key) ~= "string" or py.finished ~= false or type(py.tq) ~= "cdata" then
        return "fields: " .. tostring(py.key) .. " " .. tostring(py.finished) .. " " .. type(py.tq)
    end
    if type(c.handle) ~= "userdata" then
        return "handle is " .. type(c.handle)
    end
    -- names lua-resty-ffi does not reserve are methods
    for _, name in ipairs({ "timeout", "q", "opts" }) do
        local ok, rc, err = py[name](py, "x", handle)
        if ok ~= false or rc ~= 2 or not tostring(err):find("'" .. name .. "'", 1, true) then
            return name .. ": " .. tostring(ok) .. " " .. tostring(rc) .. " " .. tostring(err)
        end
    end
    -- rt(req): the C runtime (lua-resty-ffi's ABI ignores the method) echoes
    local ok, res = c("called", handle)
    if ok ~= true or res ~= "called" then
        return "__call: " .. tostring(ok) .. " " .. tostring(res)
    end
    local good, e = pcall(py.echo, py, { 1 }, handle)
    if good or not tostring(e):find("req must be a string or nil, got table", 1, true) then
        return "table req: " .. tostring(e)
    end
    good, e = pcall(resty_ffi.call, py, "__unload", "", handle)
    if good or not tostring(e):find("reserved name", 1, true) then
        return "call __unload: " .. tostring(e)
    end
    if py.finished ~= false then
        return "unloaded by resty_ffi.call"
    end
    -- one rule for method names: 0-127 bytes, no NUL (a NUL must not cut the name)
    for _, name in ipairs({ string.rep("m", 128), "echo\0zzz" }) do
        local ok2, err2 = py[name](py, "x", handle)
        if ok2 ~= false or not tostring(err2):find("bad method name", 1, true) then
            return "name " .. #name .. ": " .. tostring(ok2) .. " " .. tostring(err2)
        end
    end
    local ok3, res3 = py[string.rep("m", 127)](py, "x", handle)
    if ok3 ~= false or res3 ~= 2 then
        return "127-byte name: " .. tostring(ok3) .. " " .. tostring(res3)
    end
    -- request-derived names do not grow the object (or the VM) without bound
    for i = 1, 3000 do
        local _ = py["m" .. i]
    end
    local n = 0
    for _ in pairs(py) do n = n + 1 end
    if n > 1024 + 8 then
        return "runtime object holds " .. n .. " fields"
    end
    return "ok"
end

return check
