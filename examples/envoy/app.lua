-- The aioresty-native form next to the seed demo: POST /app/<method> calls the
-- async def handler <method> of the app module (default "myapp.handlers",
-- override with AIORESTY_DEMO_APP) with the request body and answers its result.
local app_module = os.getenv("AIORESTY_DEMO_APP") or "myapp.handlers"

local resty_ffi = require("resty_ffi")

function envoy_on_request(request_handle)
  local app, err = ngx.load_ffi("aioresty", app_module)
  if not app then
    request_handle:respond({[":status"] = "500"}, "load failed: " .. tostring(err) .. "\n")
    return
  end
  local method = request_handle:headers():get(":path"):match("^/app/([%w_]+)") or "greet"
  local body = request_handle:body()
  local n = body and body:length() or 0
  local req = n > 0 and body:getBytes(0, n) or ""
  if resty_ffi.RESERVED[method] or method:sub(1, 2) == "__" then  -- "__": Python's reserved
    request_handle:respond({[":status"] = "404"}, "no such method\n")
    return
  end
  -- resty_ffi.call: a request-derived name never reaches the object's fields
  local ok, res, err = resty_ffi.call(app, method, req, request_handle)
  if ok then
    request_handle:respond({[":status"] = "200"}, res or "")
  else
    request_handle:respond({[":status"] = "502", ["x-aioresty-rc"] = tostring(res)},
                           tostring(err) .. "\n")
  end
end
