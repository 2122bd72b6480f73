/*
 * lua/handle.c - the request/response handle of the "lua" mode
 * (lua_mode.h): headers(), body() / bodyChunks() (which wait for the end of
 * the body), respond(), the log methods, metadata(), streamInfo(),
 * connection(); the `aioresty_lua_mode` global: call() - the ffi-yield that
 * posts a task and suspends the coroutine - and stats(); and lm_open_api,
 * which equips a new lua_State with all of it.
 *
 * Threads: the worker thread of the filter, inside its coroutine's resume
 * (lm_open_api: the worker creating its state).  Ownership: respond()
 * captures its reply in one malloc'ed block owned by the filter (rstore,
 * freed when sent or in filter destroy); call() leaves the pending task in
 * the filter's ar_call (stream.h); the handle userdata is the GC's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <luajit.h>

#include "lua_mode.h"
#include "timeouts.h"

static lm_filter *check_handle(lua_State *L, int idx)
{
    return LM_CHECK(L, idx, MT_HANDLE, "request_handle");
}

static int l_handle_headers(lua_State *L)
{
    lm_filter *f = check_handle(L, 1);
    lm_push_ref(L, f, f->dir == 0 ? ENV_HDR_REQUEST : ENV_HDR_RESPONSE, MT_HEADERS);
    return 1;
}

/* The coroutine waits for the end of the body of its direction; the module
 * resumes it with the result (push_body_result) once the body is complete. */
static int wait_body(lua_State *L, lm_filter *f, int chunks, int always)
{
    if (L != f->co) return luaL_error(L, "body()/bodyChunks() must be called from the request's own coroutine");
    f->wait = W_BODY;
    f->body_chunks = chunks;
    f->body_always = always;
    return lua_yield(L, 0);
}

/* handle:body([always_wrap_body]): the whole body of this direction (waits
 * for its end); nil when there is none unless always_wrap_body. */
static int l_handle_body(lua_State *L)
{
    lm_filter *f = check_handle(L, 1);
    int always = lua_toboolean(L, 2);
    if (!f->eos[f->dir]) return wait_body(L, f, 0, always);
    lm_push_body_result(L, f, 0, always);
    return 1;
}

/* handle:bodyChunks(): an iterator over the slices of the whole body (waits
 * for its end; unlike Envoy's, chunks are not streamed one by one). */
static int l_handle_body_chunks(lua_State *L)
{
    lm_filter *f = check_handle(L, 1);
    if (!f->eos[f->dir]) return wait_body(L, f, 1, 0);
    lm_push_body_result(L, f, 1, 0);
    return 1;
}

/* RFC 9110 field names (tokens) and values (no CTL but HTAB): the same rule
 * as the Python filter's (aioresty/filters.py), so a script can never split
 * a response with CR/LF or smuggle a NUL. */
static int is_token(const char *k, size_t kl)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (!kl) return 0;
    for (size_t i = 0; i < kl; i++) {
        unsigned char c = (unsigned char)k[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c && strchr(extra, c))))
            return 0;
    }
    return 1;
}

static int is_field_value(const char *v, size_t vl)
{
    for (size_t i = 0; i < vl; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) return 0;
    }
    return 1;
}

/* 0, or -1 bad :status, -3 bad name, -4 bad value (the name is left at kidx). */
static int respond_header(lua_State *L, int kidx, int vidx, mod_hdr *out, char **w, size_t *n,
                          size_t *bytes, uint32_t *status)
{
    size_t kl, vl;
    const char *k = lua_tolstring(L, kidx, &kl);
    const char *v = lua_tolstring(L, vidx, &vl);
    if (kl == 7 && memcmp(k, ":status", 7) == 0) {
        char *end = NULL;
        long s = strtol(v, &end, 10);
        if (end == v || *end || s < 200 || s > 599) return -1;
        *status = (uint32_t)s;
        return 0;
    }
    if (!is_token(k, kl)) return -3;
    if (!is_field_value(v, vl)) return -4;
    if (out) {
        memcpy(*w, k, kl);
        out[*n].key_ptr = *w;
        out[*n].key_length = kl;
        *w += kl;
        memcpy(*w, v, vl);
        out[*n].value_ptr = *w;
        out[*n].value_length = vl;
        *w += vl;
    }
    (*n)++;
    *bytes += kl + vl;
    return 0;
}

/* Walks the respond() headers table; pass 1 (out == NULL) sizes, pass 2 fills. */
static int respond_walk(lua_State *L, mod_hdr *out, char *w, size_t *n, size_t *bytes, uint32_t *status)
{
    *n = 0;
    *bytes = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 2);
            return -2;
        }
        int t = lua_type(L, -1);
        if (t == LUA_TSTRING || t == LUA_TNUMBER) {
            lua_pushvalue(L, -1);                   /* tolstring may convert: work on a copy */
            int rc = respond_header(L, -3, -1, out, &w, n, bytes, status);
            lua_pop(L, 1);
            if (rc) {
                lua_pop(L, 2);
                return rc;
            }
        } else if (t == LUA_TTABLE) {
            for (int i = 1;; i++) {
                lua_rawgeti(L, -1, i);
                if (lua_isnil(L, -1)) {
                    lua_pop(L, 1);
                    break;
                }
                if (!lua_isstring(L, -1)) {
                    lua_pop(L, 3);
                    return -2;
                }
                lua_pushvalue(L, -3);               /* key copy */
                int rc = respond_header(L, -1, -2, out, &w, n, bytes, status);
                lua_pop(L, 2);
                if (rc) {
                    lua_pop(L, 2);
                    return rc;
                }
            }
        } else {
            lua_pop(L, 2);
            return -2;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* handle:respond(headers, body): terminal, like Envoy's.  Captures the reply
 * and yields for good; the module sends it once lua_resume returns. */
static int l_handle_respond(lua_State *L)
{
    lm_filter *f = check_handle(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t bl = 0;
    const char *b = luaL_optlstring(L, 3, "", &bl);
    if (f->dir != 0) return luaL_error(L, "respond() is only supported in envoy_on_request");
    if (L != f->co) return luaL_error(L, "respond() must be called from the request's own coroutine");
    size_t n, bytes;
    uint32_t status = 0;
    int rc = respond_walk(L, NULL, NULL, &n, &bytes, &status);
    if (rc == -2) return luaL_error(L, "respond(): header names must be strings and values strings, "
                                       "numbers or tables of strings");
    if (rc == -3) return luaL_error(L, "respond(): header names must be RFC 9110 tokens");
    if (rc == -4)
        return luaL_error(L, "respond(): header values must not contain control characters "
                             "other than tab (CR, LF, NUL...)");
    if (rc || status == 0) return luaL_error(L, "respond(): a :status of 200-599 is required");
    char *store = malloc(n * sizeof(mod_hdr) + bytes + bl + 1);
    if (!store) return luaL_error(L, "out of memory");
    mod_hdr *hd = (mod_hdr *)(void *)store;
    char *w = store + n * sizeof(mod_hdr);
    size_t n2, bytes2;
    respond_walk(L, hd, w, &n2, &bytes2, &status);
    char *bodyp = w + bytes2;
    memcpy(bodyp, b, bl);
    free(f->rstore);
    f->rstore = store;
    f->rhdrs = hd;
    f->rnh = n2;
    f->rbody = bodyp;
    f->rbody_len = bl;
    f->rstatus = status;
    f->responded = 1;
    return lua_yield(L, 0);
}

static int handle_log(lua_State *L, int level)
{
    check_handle(L, 1);
    size_t n;
    const char *m = luaL_checklstring(L, 2, &n);
    char b[16384];
    int k = snprintf(b, sizeof b, "script log: %.*s", (int)(n > 16000 ? 16000 : n), m);
    if (k < 0) return 0;
    envoy_dynamic_module_callback_log(level, (mod_buf){b, (size_t)k < sizeof b ? (size_t)k : sizeof b - 1});
    return 0;
}

static int l_log_trace(lua_State *L) { return handle_log(L, ENV_LOG_TRACE); }
static int l_log_debug(lua_State *L) { return handle_log(L, ENV_LOG_DEBUG); }
static int l_log_info(lua_State *L) { return handle_log(L, ENV_LOG_INFO); }
static int l_log_warn(lua_State *L) { return handle_log(L, ENV_LOG_WARN); }
static int l_log_err(lua_State *L) { return handle_log(L, ENV_LOG_ERROR); }
static int l_log_critical(lua_State *L) { return handle_log(L, ENV_LOG_CRITICAL); }

/* metadata(), streamInfo(), connection(): an object of the request */
static int push_object(lua_State *L, const char *mt)
{
    lm_push_ref(L, check_handle(L, 1), 0, mt);
    return 1;
}

static int l_handle_metadata(lua_State *L) { return push_object(L, MT_METADATA); }
static int l_handle_stream_info(lua_State *L) { return push_object(L, MT_STREAMINFO); }
static int l_handle_connection(lua_State *L) { return push_object(L, MT_CONNECTION); }

/* ---- aioresty_lua_mode.call(handle, queue_address, method, req, timeout_ms)
 * (timeout_ms <= 0 or absent: AR_DEFAULT_TIMEOUT_MS; every call is bounded)
 * -> rc, rsp  |  nil, err.  Posts the task and yields the coroutine; the
 * module resumes it with the answer. */
static int l_call(lua_State *L)
{
    lm_filter *f = check_handle(L, 1);
    lua_Number qn = luaL_checknumber(L, 2);
    size_t ml, rl = 0;
    const char *m = luaL_checklstring(L, 3, &ml);
    const char *req = lua_isnoneornil(L, 4) ? "" : luaL_checklstring(L, 4, &rl);
    lua_Number tmo = luaL_optnumber(L, 5, 0);
    if (L != f->co)
        return luaL_error(L, "aioresty: a call must run in the request's own coroutine, not in a "
                             "coroutine created by the script");
    if (f->call.task || f->wait != W_NONE) return luaL_error(L, "aioresty: another call is pending");
    if (qn <= 0) return luaL_error(L, "aioresty: bad runtime queue");
    ar_queue *q = (ar_queue *)(uintptr_t)qn;
    /* every call is bounded: no timeout given (0) means the default */
    if (!(tmo > 0)) tmo = AR_DEFAULT_TIMEOUT_MS;
    int rc = ar_call_post(&f->call, f->fe, q, m, ml, req, rl, tmo);
    if (rc != AR_OK) {
        lua_pushnil(L);
        lua_pushstring(L, ar_strerror(rc));
        return 2;
    }
    f->wait = W_CALL;
    return lua_yield(L, 0);
}

/* ---- diagnostics: aioresty_lua_mode.stats() ---- */
static int l_stats(lua_State *L)
{
    lm_filter *f = lm_current;
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)ar_tasks_alive());
    lua_setfield(L, -2, "tasks_alive");
    if (f) {
        lua_pushinteger(L, (lua_Integer)atomic_load(&f->cfg->n_states));
        lua_setfield(L, -2, "states");
        lua_pushinteger(L, (lua_Integer)atomic_load(&f->cfg->n_errors));
        lua_setfield(L, -2, "script_errors");
        lua_pushinteger(L, (lua_Integer)atomic_load(&f->cfg->n_stale));
        lua_setfield(L, -2, "stale_events");
    }
    return 1;
}

static const luaL_Reg handle_m[] = {
    {"headers", l_handle_headers},
    {"body", l_handle_body},
    {"bodyChunks", l_handle_body_chunks},
    {"respond", l_handle_respond},
    {"logTrace", l_log_trace},
    {"logDebug", l_log_debug},
    {"logInfo", l_log_info},
    {"logWarn", l_log_warn},
    {"logErr", l_log_err},
    {"logCritical", l_log_critical},
    {"metadata", l_handle_metadata},
    {"streamInfo", l_handle_stream_info},
    {"connection", l_handle_connection},
    {NULL, NULL},
};

void lm_open_api(lua_State *L)
{
    lm_reg_mt(L, MT_HANDLE, "request_handle", handle_m, NULL);
    lm_open_objects(L);
    /* the marker resty_ffi's get_adapter looks for, and the native call */
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, l_call);
    lua_setfield(L, -2, "call");
    lua_pushcfunction(L, l_stats);
    lua_setfield(L, -2, "stats");
    lua_pushliteral(L, LUAJIT_VERSION);
    lua_setfield(L, -2, "luajit");
    lua_setglobal(L, "aioresty_lua_mode");
}
