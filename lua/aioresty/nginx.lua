-- aioresty.nginx: the nginx-lua adapter of aioresty (stock nginx + lua module).
--
-- Lua cannot take callbacks from foreign threads, so an answer reaches the
-- worker through a file descriptor.  Per worker process:
--   * libaioresty_nginx.so (native/nginx) is the completion sink of every task
--     posted from this worker: the runtime thread appends the finished task to
--     a completion list and writes one wake byte to a unix-socket connection
--     only when it flips "wake pending" 0 -> 1;
--   * a background ngx.timer holds the other end of that connection as a
--     cosocket and loops on receiveany(); each wake drains every completion
--     and posts the ngx.semaphore of each waiting coroutine;
--   * a request coroutine posts its task and waits on its semaphore: it
--     yields, the worker keeps serving.
--
-- Ownership: after a successful arn_post the task belongs to the waker; the
-- drain (and only the drain) releases it.  A waiter that gives up (timeout,
-- client abort) calls arn_abort and forgets the task.
--
-- The accelerator (native/nginx/accel, docs/nginx.md): when nginx loaded
-- ngx_http_aioresty_accel_module.so, its symbols are in ffi.C; each worker
-- then hands the module libaioresty_nginx's function table (attach) and
-- calls go through aioresty_accel_call + coroutine._yield: the module owns
-- an eventfd, drains the completions and resumes each coroutine itself
-- (no wake socket, no timer, no semaphore).  Without the module, or when
-- attaching fails (logged), the stock path above serves the worker.
--
-- One wake loop per worker process, in the first Lua VM that calls.  With
-- `lua_code_cache off;` every request runs in a fresh VM; such a VM cannot
-- wait on the owner's semaphores, so its calls are parked
-- (native/nginx/parked_calls.h): their answers are kept in C (by the owner's
-- drain, or by the calling coroutine's own poll when the owner's loop ended in
-- a graceful exit) and the coroutine polls for its own with ngx.sleep (1 to
-- 16 ms).
-- Slower, but a development setting; the accelerator needs none of this.
--
-- Public: _M.call (used by resty_ffi.lua), _M.check_process, _M.abort_request,
-- _M.configure, _M.metrics, _M.stats.

local ffi = require "ffi"
local semaphore = require "ngx.semaphore"
local metrics = require "aioresty.nginx_metrics"

local ffi_new = ffi.new
local ffi_string = ffi.string
local ffi_load = ffi.load
local ffi_copy = ffi.copy
local ffi_gc = ffi.gc
local C = ffi.C
local base = require "resty.core.base"
local get_request = base.get_request
local co_yield = coroutine._yield
local sema_new = semaphore.new
local ngx = ngx
local ngx_log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local NOTICE = ngx.NOTICE
local ngx_get_phase = ngx.get_phase
local ngx_on_abort = ngx.on_abort
local ngx_exit = ngx.exit
local ngx_sleep = ngx.sleep
local ngx_now = ngx.now
local timer_at = ngx.timer.at
local worker_exiting = ngx.worker.exiting
local worker_pid = ngx.worker.pid
local socket_tcp = ngx.socket.tcp
local pairs = pairs
local type = type
local tostring = tostring
local getenv = os.getenv
local debug_getinfo = debug.getinfo
local io_open = io.open
local ipairs = ipairs

ffi.cdef[[
struct ar_queue;
struct ar_task;
typedef struct arn_done {
    struct ar_task *task;
    const char *rsp;
    size_t len;
    int32_t id;
    int32_t rc;
} arn_done;
int arn_post(struct ar_queue *q, const char *method, size_t mlen, const char *req,
             size_t rlen, int32_t id, struct ar_task **out);
int arn_listen(const char *basedir, char *path, size_t pathlen);
int arn_accept(void);
int arn_drain(arn_done **out);
void arn_abort(struct ar_task *t);
void arn_release(struct ar_task *t);
int arn_kick(void);
void arn_disconnect(void);
long arn_outstanding(void);
int arn_stats(char *buf, size_t len);
void arn_set_log_level(int ngx_level);
size_t arn_take_logs(const char **out, unsigned long *dropped);
const void *arn_accel_ops_get(void);
int arn_claim(unsigned what);
void arn_unclaim(unsigned what);
int arn_post_parked(struct ar_queue *q, const char *method, size_t mlen, const char *req,
                    size_t rlen, int32_t *id);
void arn_park(const arn_done *d);
int arn_parked_take(int32_t id, arn_done *out);
void arn_parked_forget(int32_t id);
void arn_parked_forget_cell(int32_t *cell);
int arn_parked_collect(void);
int aioresty_accel_active(void);
int aioresty_accel_version(char *buf, size_t len);
int aioresty_accel_attach(const void *ops);
int aioresty_accel_call(void *r, struct ar_queue *q, const char *method, size_t mlen,
                        const char *req, size_t rlen, double timeout_ms);
int aioresty_accel_cancel(int32_t id, const char *reason, size_t len);
long aioresty_accel_waiting(void);
int aioresty_accel_stats(char *buf, size_t len);
]]

local _M = { _VERSION = "0.1" }

-- AR_* codes of aioresty_core.h, as lua-resty-ffi words them (the core's)
local core = require "aioresty.core"
local strerror = core.strerror

-- phases whose coroutine may yield on a semaphore
local YIELDABLE = {
    rewrite = true, access = true, content = true, timer = true,
    ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}
-- phases where ngx.on_abort exists
local ABORTABLE = { rewrite = true, access = true, content = true }

local MAX_WAIT = 2147483           -- seconds: the semaphore's int ms ceiling
-- resty_ffi always passes a timeout; this is the fallback of a direct caller
local DEFAULT_TIMEOUT_MS = core.DEFAULT_TIMEOUT_MS
local READ_TIMEOUT_MS = 86400000   -- idle wake read; a sentinel ends it at exit
local RETRY_DELAY = 1              -- seconds between failed (re)connects
local SEMA_POOL_MAX = 1024
local CLAIM_WAKE_LOOP, CLAIM_METRICS = 1, 2   -- ARN_CLAIM_* (parked_calls.h)
local PARK_POLL_MIN, PARK_POLL_MAX = 0.001, 0.016  -- seconds between polls
local CTX_KEY = "__aioresty_inflight"
local PATH_MAX = 108

local NL                 -- the ffi.load'ed libaioresty_nginx.so (kept alive)
local socket_dir         -- nil: $TMPDIR or /tmp (C side)
local running = false    -- started: calls are served (wake loop, accelerator, parked, polled)
local accel = false      -- this worker's calls go through the accelerator module
local parked = false     -- another Lua VM of this process owns the wake loop
local polled = false     -- exiting, no wake loop left: each call drains for itself
local waiters = {}       -- id -> waiter {sema, task, done, rc, rsp, err}
local n_waiters = 0
local next_id = 0
local sema_pool, sema_pool_n = {}, 0
local task_out = ffi_new("struct ar_task *[1]")
local done_out = ffi_new("arn_done *[1]")
local parked_id = ffi_new("int32_t[1]")
local parked_done = ffi_new("arn_done")
local path_buf = ffi_new("char[?]", PATH_MAX)
local st = { wakes = 0, drained = 0, timeouts = 0, aborts = 0, reconnects = 0,
             max_batch = 0 }

local function file_exists(path)
    local f = io_open(path, "rb")
    if f then
        f:close()
        return true
    end
    return false
end

local LIB_NAME = "libaioresty_nginx.so"

local function lib_dir()
    local dir = getenv("AIORESTY_LIB_DIR")
    if dir and dir ~= "" then
        return dir
    end
    local ok, core = pcall(require, "aioresty.core")
    if ok and type(core) == "table" and type(core.lib_dir) == "string" then
        return core.lib_dir
    end
    -- relative to this file: <pkg>/_lua/aioresty (installed), <repo>/lua/aioresty
    local src = debug_getinfo(1, "S").source
    local here = src:match("^@(.*)/[^/]*$") or "."
    for _, cand in ipairs({ here .. "/../../_lib", here .. "/../../aioresty/_lib",
                            here .. "/../../native/build" }) do
        if file_exists(cand .. "/" .. LIB_NAME) then
            return cand
        end
    end
    return here .. "/../../aioresty/_lib"
end

local function load_lib()
    if NL then
        return NL
    end
    -- the core first (resty_ffi normally did it already, globally): our
    -- library's DT_NEEDED libaioresty_core.so then binds to that same copy
    pcall(require, "aioresty.core")
    local path = lib_dir() .. "/" .. LIB_NAME
    local ok, lib = pcall(ffi_load, path)
    if not ok then
        return nil, "aioresty: cannot load " .. path .. ": " .. tostring(lib)
    end
    NL = lib
    return NL
end

-- Runtimes and threads belong in workers: nginx forks workers from the
-- master, and threads do not survive a fork.
local function check_process()
    local phase = ngx_get_phase()
    if phase == "init" then
        return nil, "aioresty: runtimes cannot start in the nginx master process "
                    .. "(init_by_lua*): call ngx.load_ffi in init_worker_by_lua* "
                    .. "or at request time"
    end
    return true
end
_M.check_process = check_process

-- Before the first runtime loads: the core's log lines (Python logging
-- included) go to this worker's error_log with its filter level (the
-- wake loop hands them over: take_logs).
local log_routed = false
local function route_log()
    if log_routed then
        return true
    end
    local lib, err = load_lib()
    if not lib then
        return nil, err
    end
    local ok, errlog = pcall(require, "ngx.errlog")
    local level = ok and errlog.get_sys_filter_level() or ngx.NOTICE
    lib.arn_set_log_level(level)
    log_routed = true
    return true
end


local function kick_if_idle_exit()
    if n_waiters == 0 and NL and worker_exiting() then
        NL.arn_kick()
    end
end

-- The core's log lines queued by runtime threads (aioresty_nginx.h), into
-- nginx's own error log: its format, its levels, this worker's pid.
local NGX_LEVELS = { [0] = ngx.DEBUG, ngx.INFO, WARN, ERR }
local has_errlog, errlog = pcall(require, "ngx.errlog")
local raw_log = has_errlog and errlog.raw_log or function(level, msg) ngx_log(level, msg) end
local logs_out = ffi_new("const char *[1]")
local logs_dropped = ffi_new("unsigned long[1]")
local len_buf = ffi_new("uint32_t[1]")

local function take_logs()
    local n = tonumber(NL.arn_take_logs(logs_out, logs_dropped))
    local p, at = logs_out[0], 0
    while at + 5 <= n do
        ffi_copy(len_buf, p + at + 1, 4)
        local len = tonumber(len_buf[0])
        raw_log(NGX_LEVELS[p[at]] or ERR, "[aioresty] " .. ffi_string(p + at + 5, len))
        at = at + 5 + len
    end
    local dropped = tonumber(logs_dropped[0])
    if dropped > 0 then
        raw_log(WARN, "[aioresty] " .. dropped .. " log line(s) dropped: more than 1 MiB waited")
    end
end

local function drain()
    take_logs()
    local n = NL.arn_drain(done_out)
    if n == 0 then
        return
    end
    local arr = done_out[0]
    for i = 0, n - 1 do
        local d = arr[i]
        local w = waiters[d.id]
        if d.id < 0 then
            NL.arn_park(arr + i)    -- another VM's call: kept for it (and released) in C
        elseif w then
            waiters[d.id] = nil
            n_waiters = n_waiters - 1
            w.rc = d.rc
            if d.rsp ~= nil then
                w.rsp = ffi_string(d.rsp, d.len)
            end
            w.done = true
            w.sema:post(1)
        end
        if d.id >= 0 then
            -- the waker's reference, handed over by arn_drain
            NL.arn_release(d.task)
        end
    end
    st.drained = st.drained + n
    if n > st.max_batch then
        st.max_batch = n
    end
end

local wake_loop

-- The worker is exiting and the wake loop has ended (or never started):
-- later calls (requests nginx still serves on open connections) drain for
-- themselves, see polled_wait.
local function loop_gone_at_exit()
    polled = true
end

local function retry_later(delay)
    if worker_exiting() then
        return loop_gone_at_exit()
    end
    local ok, err = timer_at(delay, wake_loop)
    if not ok then
        running = false
        ngx_log(ERR, "aioresty: cannot schedule the wake timer: ", err)
    end
end

wake_loop = function(premature)
    if premature then
        return loop_gone_at_exit()
    end

    local rc = NL.arn_listen(socket_dir, path_buf, PATH_MAX)
    if rc ~= 0 then
        ngx_log(ERR, "aioresty: wake socket listen failed: errno ", -rc)
        return retry_later(RETRY_DELAY)
    end
    local sock = socket_tcp()
    sock:settimeouts(1000, 1000, READ_TIMEOUT_MS)
    local ok, err = sock:connect("unix:" .. ffi_string(path_buf))
    if ok then
        rc = NL.arn_accept()    -- also removes the socket file and its dir
        if rc ~= 0 then
            ok, err = nil, "accept: errno " .. -rc
        end
    else
        NL.arn_disconnect()     -- removes the socket file and its dir
    end
    if not ok then
        ngx_log(ERR, "aioresty: wake socket connect failed: ", err)
        sock:close()
        return retry_later(RETRY_DELAY)
    end

    drain()
    while true do
        -- in a graceful exit keep serving the calls still in flight
        if n_waiters == 0 and worker_exiting() then
            break
        end
        local data, rerr = sock:receiveany(4096)
        if data then
            st.wakes = st.wakes + 1
            drain()
        elseif rerr == "timeout" then
            drain()             -- idle: a safety net, cheap
        else
            ngx_log(ERR, "aioresty: wake socket read failed: ", rerr)
            break
        end
    end
    NL.arn_disconnect()
    sock:close()
    if worker_exiting() then
        return loop_gone_at_exit()
    end
    st.reconnects = st.reconnects + 1
    return retry_later(0)
end

-- A pending timer runs early (premature) as soon as a graceful exit starts:
-- use that to unblock the wake loop's read.
local function sentinel(premature)
    if premature and NL then
        NL.arn_kick()
    end
end

-- Is ngx_http_aioresty_accel_module loaded and ready in this process?
local accel_checked, accel_ok
local function accel_present()
    if not accel_checked then
        accel_checked = true
        local ok, active = pcall(function() return C.aioresty_accel_active() end)
        accel_ok = ok and active == 1
    end
    return accel_ok
end

local function start()
    local ok, err = check_process()
    if not ok then
        return nil, err
    end
    local lib
    lib, err = load_lib()
    if not lib then
        return nil, err
    end
    if accel_present() then
        local rc = C.aioresty_accel_attach(lib.arn_accel_ops_get())
        accel = rc == 0
        if not accel then
            ngx_log(WARN, "aioresty: the accelerator module is loaded but refused to attach (",
                    strerror(rc), "): the stock wake loop serves worker ", worker_pid())
        end
    end
    if not accel then           -- (with it, the module resumes this VM's coroutines)
        if lib.arn_claim(CLAIM_WAKE_LOOP) == 0 then
            parked = true       -- lua_code_cache off: another VM owns the wake loop
        elseif worker_exiting() then
            polled = true       -- no timer can start now; nothing else needed
        else
            ok, err = timer_at(0, wake_loop)
            if not ok then
                lib.arn_unclaim(CLAIM_WAKE_LOOP)
                return nil, "aioresty: cannot start the wake timer: " .. tostring(err)
            end
            ok, err = timer_at(365 * 86400, sentinel)
            if not ok then
                ngx_log(WARN, "aioresty: no exit sentinel timer: ", err)
            end
        end
    end
    running = true
    if not parked and not polled then
        ngx_log(NOTICE, accel and "aioresty: accelerator attached in worker "
                              or "aioresty: wake loop started in worker ", worker_pid())
    end
    if lib.arn_claim(CLAIM_METRICS) == 1 then
        metrics.start()         -- one publisher per process (its timer keeps its VM)
    end
    return true
end

-- resty_ffi.load_ffi asks before each load (the name it looks for): not in
-- the master; the log routed to the error_log and the wake loop running
-- first, so a runtime warmed up in init_worker_by_lua* logs right away.
function _M.can_load()
    local ok, err = check_process()
    if not ok then
        return nil, err
    end
    ok, err = route_log()
    if not ok then
        return nil, err
    end
    if not running then
        return start()
    end
    return true
end

-- Per request: remember the waiters in flight and, with
-- lua_check_client_abort on, abort them when the client goes away.
local function client_aborted()
    _M.abort_request("client aborted")
    return ngx_exit(499)
end

-- ngx.ctx is only touched when lua_check_client_abort is on: it costs a
-- table (made, registered, released with the request) per request, the
-- larger part of a call's Lua cost otherwise (docs/nginx.md "Where the CPU
-- goes").  ngx.on_abort answers cheaply either way: "duplicate call" once a
-- handler is registered (ours from an earlier call of this request, or the
-- application's, which may call abort_request()), nil + "lua_check_client_abort
-- is off" without looking at anything else.
local function watch_abort(id, w)
    local ok, err = ngx_on_abort(client_aborted)
    if not ok and err ~= "duplicate call" then
        return nil              -- lua_check_client_abort is off: nothing to watch
    end
    local ctx = ngx.ctx
    local inflight = ctx[CTX_KEY]
    if not inflight then
        inflight = {}
        ctx[CTX_KEY] = inflight
    end
    inflight[id] = w
    return inflight
end

-- Aborts every call of the current request still in flight (the runtime
-- sees the abort: aioresty's Python runtime cancels the handler); their
-- coroutines get nil, reason.  For applications with their own
-- ngx.on_abort handler.  Returns the number of calls aborted.
function _M.abort_request(reason)
    if not ABORTABLE[ngx_get_phase()] then
        return 0
    end
    local inflight = ngx.ctx[CTX_KEY]
    if not inflight then
        return 0
    end
    local n = 0
    if accel then
        local why = reason or "aborted"
        for id in pairs(inflight) do
            inflight[id] = nil
            -- the coroutine resumes from nginx's posted events with nil, why
            n = n + C.aioresty_accel_cancel(id, why, #why)
        end
        st.aborts = st.aborts + n
        return n
    end
    for id, w in pairs(inflight) do
        inflight[id] = nil
        if w.cell then                  -- a parked call: its poll sees it gone
            NL.arn_parked_forget(id)
            w.cell[0] = 0
            w.err = reason or "aborted"
            n = n + 1
        elseif waiters[id] == w then
            waiters[id] = nil
            n_waiters = n_waiters - 1
            NL.arn_abort(w.task)    -- the drain still releases it
            w.err = reason or "aborted"
            w.sema:post(1)
            n = n + 1
        end
    end
    st.aborts = st.aborts + n
    kick_if_idle_exit()
    return n
end

-- Every call is bounded: resty_ffi's default (60 s) when it has no timeout.
local function bounded_ms(timeout_ms)
    if type(timeout_ms) ~= "number" or not (timeout_ms >= 0) then
        return DEFAULT_TIMEOUT_MS
    end
    return timeout_ms
end

-- The accelerated call: the module binds this coroutine to the task and
-- resumes it with rc, rsp (answered) or nil, err (timeout, abort_request).
local function accel_call(q, method, req, timeout_ms, phase)
    local r = get_request()
    if not r then
        return nil, "aioresty: no request found"
    end
    timeout_ms = bounded_ms(timeout_ms)
    local id = C.aioresty_accel_call(r, q, method, #method, req, req and #req or 0,
                                     timeout_ms)
    if id < 0 then
        return nil, strerror(id)
    end
    local inflight
    if ABORTABLE[phase] then
        inflight = watch_abort(id, true)
    end
    local rc, rsp = co_yield()
    if inflight then
        inflight[id] = nil
    end
    if rc == nil and rsp == "timeout" then
        st.timeouts = st.timeouts + 1
    end
    return rc, rsp
end

-- The waits of a polling call (parked_call, polled_wait): `delay` capped by
-- the time `left`, never below 1 ms (a shorter sleep is a yield that leaves
-- ngx.now() as it was); then the next delay, doubled up to PARK_POLL_MAX.
local function poll_wait_s(delay, left)
    local s = delay < left and delay or (left > PARK_POLL_MIN and left or PARK_POLL_MIN)
    return s, delay < PARK_POLL_MAX and delay * 2 or delay
end

-- A call from a VM that does not own the wake loop (see the top): posted
-- parked, answered through the owner's drain, polled for here.
local function parked_call(q, method, req, timeout_ms, phase)
    local rc = NL.arn_post_parked(q, method, #method, req, req and #req or 0, parked_id)
    if rc ~= 0 then
        return nil, strerror(rc)
    end
    local id = parked_id[0]
    -- if this VM is closed while the coroutine waits (its request went
    -- away), the finalizer forgets the call: C releases the task
    local cell = ffi_gc(ffi_new("int32_t[1]", id), NL.arn_parked_forget_cell)
    local w = { cell = cell }
    local inflight
    if ABORTABLE[phase] then
        inflight = watch_abort(id, w)
    end
    timeout_ms = bounded_ms(timeout_ms)
    local deadline = ngx_now() + timeout_ms / 1000
    local delay = PARK_POLL_MIN
    while true do
        NL.arn_parked_collect()     -- the owner's wake loop may have ended (exit)
        local got = NL.arn_parked_take(id, parked_done)
        if got == 1 then
            cell[0] = 0
            if inflight then
                inflight[id] = nil
            end
            local rsp
            if parked_done.rsp ~= nil then
                rsp = ffi_string(parked_done.rsp, parked_done.len)
            end
            rc = parked_done.rc
            NL.arn_release(parked_done.task)
            return rc, rsp
        end
        if got < 0 then
            return nil, w.err or "aborted"      -- abort_request() forgot it
        end
        local left = deadline - ngx_now()
        if left <= 0 then
            cell[0] = 0
            NL.arn_parked_forget(id)
            if inflight then
                inflight[id] = nil
            end
            st.timeouts = st.timeouts + 1
            return nil, "timeout"
        end
        local s
        s, delay = poll_wait_s(delay, left)
        ngx_sleep(s)
    end
end

-- No wake loop (see loop_gone_at_exit): drain between short waits on the
-- call's own semaphore, 1 ms doubling to 16 ms, until answered, aborted
-- (abort_request posts the semaphore) or wait_s is over.
local function polled_wait(w, sema, wait_s)
    local deadline = ngx_now() + wait_s
    local delay = PARK_POLL_MIN
    while true do
        drain()
        if w.done then
            return sema:wait(0)         -- takes the drain's post
        end
        local left = deadline - ngx_now()
        if left <= 0 then
            return nil, "timeout"
        end
        local s
        s, delay = poll_wait_s(delay, left)
        local ok, err = sema:wait(s)
        if ok or err ~= "timeout" then
            return ok, err
        end
    end
end

-- adapter.call(q, method, req, handle, timeout_ms) -> rc, rsp | nil, err
function _M.call(q, method, req, handle, timeout_ms) -- luacheck: ignore handle
    if not running then
        local ok, err = start()
        if not ok then
            return nil, err
        end
    end
    local phase = ngx_get_phase()
    if not YIELDABLE[phase] then
        return nil, "aioresty: cannot wait for a runtime in the " .. tostring(phase)
                    .. " phase"
    end
    if req ~= nil and type(req) ~= "string" then
        req = tostring(req)
    end
    if accel then
        return accel_call(q, method, req, timeout_ms, phase)
    end
    if parked then
        return parked_call(q, method, req, timeout_ms, phase)
    end

    local id = next_id + 1
    if id >= 2147483647 then
        id = 1
    end
    while waiters[id] do
        id = id + 1
    end
    next_id = id

    local rc = NL.arn_post(q, method, #method, req, req and #req or 0, id, task_out)
    if rc ~= 0 then
        return nil, strerror(rc)
    end

    local sema
    if sema_pool_n > 0 then
        sema = sema_pool[sema_pool_n]
        sema_pool[sema_pool_n] = nil
        sema_pool_n = sema_pool_n - 1
    else
        sema = sema_new()
    end
    local w = { sema = sema, task = task_out[0], done = false }
    waiters[id] = w
    n_waiters = n_waiters + 1

    local inflight
    if ABORTABLE[phase] then
        inflight = watch_abort(id, w)
    end

    timeout_ms = bounded_ms(timeout_ms)
    local wait_s = timeout_ms / 1000
    if wait_s > MAX_WAIT then
        wait_s = MAX_WAIT
    end
    local ok, err
    if polled then
        ok, err = polled_wait(w, sema, wait_s)
    else
        ok, err = sema:wait(wait_s)
    end

    if inflight then
        inflight[id] = nil
    end
    if w.done then
        -- answered (a timeout racing with the answer counts as answered;
        -- that semaphore may hold a stray count: do not reuse it)
        if ok and sema_pool_n < SEMA_POOL_MAX then
            sema_pool_n = sema_pool_n + 1
            sema_pool[sema_pool_n] = sema
        end
        return w.rc, w.rsp
    end
    if w.err then
        return nil, w.err               -- aborted by abort_request()
    end
    -- gave up waiting: timeout (or the wait itself failed)
    if waiters[id] == w then
        waiters[id] = nil
        n_waiters = n_waiters - 1
        NL.arn_abort(w.task)            -- the drain still releases it
    end
    st.timeouts = st.timeouts + 1
    kick_if_idle_exit()
    return nil, err or "timeout"
end

-- opts.socket_dir: where each worker creates its private (0700) directory
-- for the wake socket; default $TMPDIR (if exported with `env TMPDIR;`) or
-- /tmp.  Call before the first runtime call (e.g. in init_by_lua).
function _M.configure(opts)
    if type(opts) ~= "table" then
        return nil, "table expected"
    end
    if opts.socket_dir ~= nil then
        if type(opts.socket_dir) ~= "string" or #opts.socket_dir > PATH_MAX - 40 then
            return nil, "bad socket_dir"
        end
        socket_dir = opts.socket_dir
    end
    return true
end

-- content_by_lua: the Prometheus text of every worker's runtimes, summed
-- (needs `lua_shared_dict aioresty_metrics 1m;`; aioresty/nginx_metrics.lua).
_M.metrics = metrics.serve

-- true when this worker's calls go through the accelerator module; the
-- second value describes the module (what it was built for) when loaded.
function _M.accelerated()
    local desc
    if accel_present() then
        local buf = ffi_new("char[?]", 256)
        C.aioresty_accel_version(buf, 256)
        desc = ffi_string(buf)
    end
    return accel, desc
end

-- Diagnostics: a one-line summary for logs and tests.
function _M.stats()
    local lib = load_lib()
    local native = ""
    if lib then
        local buf = ffi_new("char[?]", 256)
        lib.arn_stats(buf, 256)
        native = ffi_string(buf)
    end
    local wakes, drained, max_batch = st.wakes, st.drained, st.max_batch
    if accel then
        local buf = ffi_new("char[?]", 512)
        C.aioresty_accel_stats(buf, 512)
        local a = ffi_string(buf)
        native = native .. " accel=1 " .. a
        -- the same keys as the stock path's, from the module's counters
        wakes = tonumber(a:match("accel_wakes=(%d+)"))
        drained = tonumber(a:match("accel_drained=(%d+)"))
        max_batch = tonumber(a:match("accel_max_batch=(%d+)"))
    end
    return native .. " waiters=" .. n_waiters .. " lua_wakes=" .. wakes
           .. " lua_drained=" .. drained .. " max_batch=" .. max_batch
           .. " timeouts=" .. st.timeouts .. " aborts=" .. st.aborts
           .. " reconnects=" .. st.reconnects .. " running=" .. tostring(running)
           .. " parked=" .. tostring(parked)
end

return _M
