-- aioresty.core: LuaJIT ffi declarations of libaioresty_core.so (see
-- native/core/aioresty_core.h) and the loaded library, shared by every host
-- adapter.  The library is loaded into the global scope: runtime libraries
-- resolve ngx_http_lua_ffi_* against it.
--
-- Where: $AIORESTY_LIB_DIR, else relative to this file (source checkout:
-- lua/aioresty/ -> aioresty/_lib; installed: aioresty/_lua/aioresty -> _lib).
local ffi = require "ffi"

local io_open = io.open
local os_getenv = os.getenv
local debug_getinfo = debug.getinfo
local str_match = string.match

ffi.cdef [[
typedef struct ar_queue ar_queue;
typedef struct ar_task ar_task;
typedef struct ar_sink {
    void (*complete)(ar_task *t, void *ctx);
    void *ctx;
} ar_sink;

ar_queue *ar_runtime_load(const char *lib, const char *cfg, int max_queue, int flags,
                          char *err, size_t errlen);
void ar_runtime_unload(ar_queue *q);
void ar_runtime_unload_all(void);
int ar_runtime_path(ar_queue *q, char *out, size_t outlen);
typedef struct ar_limits_t {
    int method_max, answer_max, rc_too_large, default_max_queue, default_timeout_ms;
} ar_limits_t;
void ar_limits(ar_limits_t *out);
void ar_log(int level, const char *line);
const char *ar_strerror(int code);
void ar_queue_ref(ar_queue *q);
void ar_queue_unref(ar_queue *q);
int ar_queue_closed(const ar_queue *q);
int ar_queue_pending(ar_queue *q);

ar_task *ar_task_new(const char *method, size_t method_len, const char *req, size_t req_len,
                     const ar_sink *sink, void *host_data);
int ar_task_post(ar_queue *q, ar_task *t);
void ar_task_abort(ar_task *t);
int ar_task_done(const ar_task *t);
int ar_task_rc(const ar_task *t);
const char *ar_task_response(const ar_task *t, size_t *len);
void *ar_task_host_data(const ar_task *t);
void ar_task_release(ar_task *t);
int ar_bridge_authority(ar_queue *q, char *out, size_t outlen);
long ar_tasks_alive(void);
long ar_queues_alive(void);
]]

local _M = {
    _VERSION = "0.1.0",
    OK = 0, EFULL = -1, ECLOSED = -2, ENOMEM = -3, EINVAL = -4, ELOAD = -5,
    LOAD_GLOBAL = 1, LOAD_UNPIN = 2, LOAD_OPTIONS = 4,
    LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3,
}

local function exists(path)
    local f = io_open(path, "rb")
    if f then
        f:close()
        return true
    end
    return false
end

local function find_lib_dir()
    local dir = os_getenv("AIORESTY_LIB_DIR")
    if dir and dir ~= "" then
        return dir
    end
    local src = debug_getinfo(1, "S").source
    local here = str_match(src, "^@(.*)/aioresty/core%.lua$")
    if here then
        for _, cand in ipairs({ here .. "/../aioresty/_lib", here .. "/../_lib" }) do
            if exists(cand .. "/libaioresty_core.so") then
                return cand
            end
        end
    end
    return nil
end

_M.lib_dir = find_lib_dir()
if not _M.lib_dir then
    error("aioresty: cannot find libaioresty_core.so: set AIORESTY_LIB_DIR "
          .. "(`aioresty paths` prints it)", 2)
end
_M.C = ffi.load(_M.lib_dir .. "/libaioresty_core.so", true)
-- the limits every host and mode share (aioresty_core.h "Limits")
do
    local lim = ffi.new("ar_limits_t")
    _M.C.ar_limits(lim)
    _M.METHOD_MAX, _M.ANSWER_MAX = lim.method_max, lim.answer_max
    _M.RC_TOO_LARGE, _M.DEFAULT_MAX_QUEUE = lim.rc_too_large, lim.default_max_queue
    -- the bounded default timeout (ms) of every runtime call, on every host
    -- (resty_ffi.set_default_timeout changes it per Lua VM)
    _M.DEFAULT_TIMEOUT_MS = lim.default_timeout_ms
end

-- The words of an AR_* code (lua-resty-ffi's: "post failed, queue full",
-- "task queue is finished", ...), from the core: one text on every host.
local ffi_string = ffi.string
local strerror_C = _M.C.ar_strerror
function _M.strerror(code)
    return ffi_string(strerror_C(code))
end

return _M
