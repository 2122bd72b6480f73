/*
 * luamod.c - filter mode "lua" of libaioresty_envoy.so (envoy_mode.h): an
 * Envoy-Lua-filter-style LuaJIT filter hosted inside our dynamic module, with
 * a native ffi-yield (the seed's design, DESIGN.md section 3b).
 *
 * Scripts define envoy_on_request(request_handle) and/or
 * envoy_on_response(response_handle); each runs in a coroutine.  In it
 * resty_ffi works unchanged: `runtime:method(req, handle)` goes through the
 * adapter lua/aioresty/envoy_luamod.lua (chosen by resty_ffi when the global
 * `aioresty_luamod` exists) into l_call below, which posts the task to the
 * core's queue and lua_yield()s from C.  The hook returns StopIteration (the
 * body is buffered meanwhile); the runtime answers on its own thread, the
 * completion sink commits the http-filter scheduler, and
 * on_http_filter_scheduled resumes the coroutine on the worker thread.  When
 * the coroutine ends, the module sends the reply the script asked for
 * (respond()) or continues the stream.
 *
 * filter_config (a google.protobuf.StringValue):
 *   {"inline_code": "<lua source>"}  or  {"filename": "/path/script.lua"}
 *   plus optional "on_error": "continue" (default, as Envoy's Lua filter) |
 *   "fail_closed" (500 local reply), and "metadata_namespace" (default
 *   "aioresty.lua": the route filter_metadata key metadata() reads).
 *   A config that does not start with '{' is taken as inline Lua source.
 *
 * LuaJIT: a private static copy (native/luajit/build.mk) linked with hidden
 * symbols, so this module never binds to the LuaJIT the Envoy binary exports.
 *
 * Threads and ownership (who frees what):
 *   - lm_config: created/destroyed by Envoy's config hooks.  It owns the
 *     script text and every lm_state (freed in config_destroy).
 *   - lm_state: one lua_State per (config, worker thread), created lazily on
 *     that worker (pthread key); only that thread ever touches it.
 *   - lm_filter: worker thread only; freed in filter_destroy.  It owns its
 *     coroutine through a registry reference (dropped, never resumed, when
 *     the stream goes away), the captured respond() reply, and the host
 *     reference of its pending ar_task (released on the worker).
 *   - ar_link: the part of a filter shared with other threads (completion
 *     sinks on runtime threads, the timeout thread of timeouts.c).  Reference counted: the
 *     filter holds one, each posted task one (dropped by its sink), each
 *     armed timeout one.  It owns the filter's scheduler: created on the
 *     worker at the first call, deleted exactly once with the last
 *     reference, so no commit can follow the delete.  `mu` orders commits
 *     against filter destroy (`detached`): after destroy no commit happens.
 *   - request bytes are copied by ar_task_new; answers belong to the task.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>

#include "aioresty_core.h"
#include "stream_link.h"
#include "envoy_mode.h"
#include "timeouts.h"

#define MB(s) ((mod_buf){(s), sizeof(s) - 1})

#define MT_HANDLE "aioresty.lua.handle"
#define MT_HEADERS "aioresty.lua.headers"
#define MT_BODY "aioresty.lua.body"
#define MT_CHUNK "aioresty.lua.chunk"
#define MT_METADATA "aioresty.lua.metadata"
#define MT_STREAMINFO "aioresty.lua.streamInfo"
#define MT_CONNECTION "aioresty.lua.connection"
#define MT_SSL "aioresty.lua.ssl"

enum { ON_ERROR_CONTINUE = 0, ON_ERROR_FAIL_CLOSED = 1 };
enum { W_NONE = 0, W_CALL, W_BODY };
enum { ACT_DONE = 0, ACT_WAIT, ACT_REPLY, ACT_FAIL };

typedef struct lm_state {
    struct lm_state *next;
    lua_State *L;
    int ref_on_request;         /* registry refs, LUA_NOREF when not defined */
    int ref_on_response;
} lm_state;

typedef struct lm_config {
    ar_mode_base base;
    char *code;                 /* owned */
    size_t code_len;
    char chunkname[256];
    int on_error;
    char *md_ns;                /* owned */
    pthread_key_t key;          /* -> this thread's lm_state */
    pthread_mutex_t states_mu;  /* guards `states` (list of every worker's state) */
    lm_state *states;
    atomic_ulong n_states, n_resumes, n_errors, n_stale;
} lm_config;

typedef struct lm_filter {
    ar_mode_base base;
    lm_config *cfg;
    lm_state *st;
    void *fe;
    uint64_t serial;
    lua_State *co;              /* the running/suspended coroutine, or NULL */
    int co_ref;
    int dir;                    /* 0 request, 1 response */
    int wait;                   /* W_* while suspended */
    int running;                /* inside lua_resume */
    int stopped;                /* a hook of `dir` returned Stop: continue_* is owed */
    int replied;                /* we sent a local reply */
    int eos[2];                 /* end of stream seen, per direction */
    int responded;              /* respond() captured a reply */
    ar_link *link;              /* NULL until the first call */
    ar_task *task;              /* pending call (host reference), or NULL */
    uint64_t task_id;
    int has_timer;
    int body_chunks;            /* W_BODY: 1 bodyChunks(), 0 body() */
    int body_always;            /* W_BODY: body(true) */
    /* respond(): one malloc'ed block: headers then bytes */
    uint32_t rstatus;
    mod_hdr *rhdrs;
    size_t rnh;
    const char *rbody;
    size_t rbody_len;
    char *rstore;
} lm_filter;

static atomic_ulong g_serial;

/* The filter whose coroutine this thread is resuming right now.  Handles and
 * their objects are valid only inside their own filter's resume: anything
 * else (a handle kept in a global across requests) is refused, never
 * dereferenced. */
static __thread lm_filter *tl_current;

/* ------------------------------------------------------------ links */


/* ------------------------------------------------------------ timeouts
 * timeouts.c: one process-wide thread; each armed entry holds a link
 * reference.  A call's timeout event is `task id << 1 | 1`. */

/* ------------------------------------------------------------ handle objects */

typedef struct {
    lm_filter *f;
    uint64_t serial;
    int kind;                   /* headers: header type; body: direction */
} lm_ref;

typedef struct {
    size_t len;
    char data[];
} lm_chunk;

static lm_filter *live(lua_State *L, const lm_ref *r, const char *what)
{
    lm_filter *f = tl_current;
    if (!f || f != r->f || f->serial != r->serial)
        luaL_error(L, "%s used outside of the request it belongs to (objects of a handle are only "
                      "valid in that request's envoy_on_request/envoy_on_response)", what);
    return f;
}

static lm_ref *push_ref(lua_State *L, lm_filter *f, int kind, const char *mt)
{
    lm_ref *r = lua_newuserdata(L, sizeof *r);
    r->f = f;
    r->serial = f->serial;
    r->kind = kind;
    luaL_getmetatable(L, mt);
    lua_setmetatable(L, -2);
    return r;
}

#define CHECK(L, idx, mt, what) live((L), (lm_ref *)luaL_checkudata((L), (idx), (mt)), (what))

/* ---- headers ---- */

static int l_headers_get(lua_State *L)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_HEADERS);
    size_t kl;
    const char *k = luaL_checklstring(L, 2, &kl);
    lm_filter *f = live(L, r, "headers");
    env_buf v = {NULL, 0};
    size_t n = 0;
    if (!envoy_dynamic_module_callback_http_get_header(f->fe, r->kind, (mod_buf){k, kl}, &v, 0, &n) ||
        !v.ptr) {
        lua_pushnil(L);
        return 1;
    }
    if (n <= 1) {
        lua_pushlstring(L, v.ptr, v.length);
        return 1;
    }
    /* several values: joined with ',' (as Envoy's Lua filter) */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, v.ptr, v.length);
    for (size_t i = 1; i < n; i++) {
        env_buf w = {NULL, 0};
        if (envoy_dynamic_module_callback_http_get_header(f->fe, r->kind, (mod_buf){k, kl}, &w, i,
                                                          NULL) && w.ptr) {
            luaL_addchar(&b, ',');
            luaL_addlstring(&b, w.ptr, w.length);
        }
    }
    luaL_pushresult(&b);
    return 1;
}

static int l_headers_get_at_index(lua_State *L)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_HEADERS);
    size_t kl;
    const char *k = luaL_checklstring(L, 2, &kl);
    lua_Integer i = luaL_checkinteger(L, 3);
    lm_filter *f = live(L, r, "headers");
    env_buf v = {NULL, 0};
    if (i < 0 || !envoy_dynamic_module_callback_http_get_header(f->fe, r->kind, (mod_buf){k, kl}, &v,
                                                                (size_t)i, NULL) || !v.ptr)
        lua_pushnil(L);
    else
        lua_pushlstring(L, v.ptr, v.length);
    return 1;
}

static int l_headers_get_num_values(lua_State *L)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_HEADERS);
    size_t kl;
    const char *k = luaL_checklstring(L, 2, &kl);
    lm_filter *f = live(L, r, "headers");
    env_buf v = {NULL, 0};
    size_t n = 0;
    if (!envoy_dynamic_module_callback_http_get_header(f->fe, r->kind, (mod_buf){k, kl}, &v, 0, &n))
        n = 0;
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

static int headers_set(lua_State *L, int add)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_HEADERS);
    size_t kl, vl;
    const char *k = luaL_checklstring(L, 2, &kl);
    const char *v = luaL_checklstring(L, 3, &vl);
    lm_filter *f = live(L, r, "headers");
    if (add)
        envoy_dynamic_module_callback_http_add_header(f->fe, r->kind, (mod_buf){k, kl}, (mod_buf){v, vl});
    else
        envoy_dynamic_module_callback_http_set_header(f->fe, r->kind, (mod_buf){k, kl}, (mod_buf){v, vl});
    return 0;
}

static int l_headers_add(lua_State *L) { return headers_set(L, 1); }
static int l_headers_replace(lua_State *L) { return headers_set(L, 0); }

static int l_headers_remove(lua_State *L)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_HEADERS);
    size_t kl;
    const char *k = luaL_checklstring(L, 2, &kl);
    lm_filter *f = live(L, r, "headers");
    envoy_dynamic_module_callback_http_set_header(f->fe, r->kind, (mod_buf){k, kl}, (mod_buf){NULL, 0});
    return 0;
}

/* pairs(headers): a snapshot {k1, v1, k2, v2, ...} walked by a closure */
static int headers_iter(lua_State *L)
{
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(2));
    lua_rawgeti(L, lua_upvalueindex(1), (int)i);
    if (lua_isnil(L, -1)) return 1;
    lua_rawgeti(L, lua_upvalueindex(1), (int)i + 1);
    lua_pushinteger(L, i + 2);
    lua_replace(L, lua_upvalueindex(2));
    return 2;
}

static int l_headers_pairs(lua_State *L)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_HEADERS);
    lm_filter *f = live(L, r, "headers");
    size_t n = envoy_dynamic_module_callback_http_get_headers_size(f->fe, r->kind);
    lua_createtable(L, (int)(2 * n), 0);
    if (n) {
        env_hdr *hs = calloc(n, sizeof *hs);
        if (!hs) return luaL_error(L, "out of memory");
        if (envoy_dynamic_module_callback_http_get_headers(f->fe, r->kind, hs)) {
            for (size_t i = 0; i < n; i++) {
                lua_pushlstring(L, hs[i].key_ptr, hs[i].key_length);
                lua_rawseti(L, -2, (int)(2 * i + 1));
                lua_pushlstring(L, hs[i].value_ptr, hs[i].value_length);
                lua_rawseti(L, -2, (int)(2 * i + 2));
            }
        }
        free(hs);
    }
    lua_pushinteger(L, 1);
    lua_pushcclosure(L, headers_iter, 2);
    lua_pushnil(L);
    lua_pushnil(L);
    return 3;
}

/* ---- bodies ---- */

static const int k_body_kinds[2][2] = {
    {ENV_BODY_BUFFERED_REQUEST, ENV_BODY_RECEIVED_REQUEST},
    {ENV_BODY_BUFFERED_RESPONSE, ENV_BODY_RECEIVED_RESPONSE},
};

static size_t body_length(lm_filter *f, int dir)
{
    size_t n = 0;
    for (int k = 0; k < 2; k++)
        n += envoy_dynamic_module_callback_http_get_body_size(f->fe, k_body_kinds[dir][k]);
    return n;
}

/* Calls fn for every slice of the buffered body (buffered then received). */
static int body_slices(lua_State *L, lm_filter *f, int dir,
                       void (*fn)(lua_State *, const env_buf *, void *), void *ud)
{
    for (int k = 0; k < 2; k++) {
        int kind = k_body_kinds[dir][k];
        size_t n = envoy_dynamic_module_callback_http_get_body_chunks_size(f->fe, kind);
        if (n == 0) continue;
        env_buf one[4];
        env_buf *v = n <= 4 ? one : calloc(n, sizeof *v);
        if (!v) return -1;
        if (envoy_dynamic_module_callback_http_get_body_chunks(f->fe, kind, v))
            for (size_t i = 0; i < n; i++)
                if (v[i].length) fn(L, &v[i], ud);
        if (v != one) free(v);
    }
    return 0;
}

typedef struct {
    luaL_Buffer *b;
    size_t skip, want;
} range_ctx;

static void add_range(lua_State *L, const env_buf *s, void *ud)
{
    (void)L;
    range_ctx *c = ud;
    if (c->want == 0) return;
    if (c->skip >= s->length) {
        c->skip -= s->length;
        return;
    }
    size_t l = s->length - c->skip;
    if (l > c->want) l = c->want;
    luaL_addlstring(c->b, s->ptr + c->skip, l);
    c->skip = 0;
    c->want -= l;
}

static int l_body_length(lua_State *L)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_BODY);
    lm_filter *f = live(L, r, "body");
    lua_pushinteger(L, (lua_Integer)body_length(f, r->kind));
    return 1;
}

/* buffer:getBytes(index, length) - Envoy's semantics: 0-based index,
 * index + length must lie within the body. */
static int l_body_get_bytes(lua_State *L)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_BODY);
    lua_Integer idx = luaL_checkinteger(L, 2);
    lua_Integer len = luaL_checkinteger(L, 3);
    lm_filter *f = live(L, r, "body");
    size_t total = body_length(f, r->kind);
    if (idx < 0 || len < 0 || (size_t)idx > total || (size_t)len > total - (size_t)idx)
        return luaL_error(L, "index/length must be >= 0 and (index + length) must be <= buffer size");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    range_ctx c = {&b, (size_t)idx, (size_t)len};
    if (body_slices(L, f, r->kind, add_range, &c) != 0) return luaL_error(L, "out of memory");
    luaL_pushresult(&b);
    return 1;
}

static int l_chunk_length(lua_State *L)
{
    lm_chunk *c = luaL_checkudata(L, 1, MT_CHUNK);
    lua_pushinteger(L, (lua_Integer)c->len);
    return 1;
}

static int l_chunk_get_bytes(lua_State *L)
{
    lm_chunk *c = luaL_checkudata(L, 1, MT_CHUNK);
    lua_Integer idx = luaL_checkinteger(L, 2);
    lua_Integer len = luaL_checkinteger(L, 3);
    if (idx < 0 || len < 0 || (size_t)idx > c->len || (size_t)len > c->len - (size_t)idx)
        return luaL_error(L, "index/length must be >= 0 and (index + length) must be <= buffer size");
    lua_pushlstring(L, c->data + idx, (size_t)len);
    return 1;
}

static void add_chunk(lua_State *L, const env_buf *s, void *ud)
{
    int *n = ud;
    lm_chunk *c = lua_newuserdata(L, sizeof *c + s->length);
    c->len = s->length;
    memcpy(c->data, s->ptr, s->length);
    luaL_getmetatable(L, MT_CHUNK);
    lua_setmetatable(L, -2);
    lua_rawseti(L, -2, ++*n);
}

static int chunks_iter(lua_State *L)
{
    lua_Integer i = lua_tointeger(L, lua_upvalueindex(2)) + 1;
    lua_rawgeti(L, lua_upvalueindex(1), (int)i);
    lua_pushinteger(L, i);
    lua_replace(L, lua_upvalueindex(2));
    return 1;
}

/* ---- handle ---- */

static lm_filter *check_handle(lua_State *L, int idx)
{
    return CHECK(L, idx, MT_HANDLE, "request_handle");
}

static int l_handle_headers(lua_State *L)
{
    lm_filter *f = check_handle(L, 1);
    push_ref(L, f, f->dir == 0 ? ENV_HDR_REQUEST : ENV_HDR_RESPONSE, MT_HEADERS);
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

/* Pushes body()'s (or bodyChunks()'s) one result onto L. */
static void push_body_result(lua_State *L, lm_filter *f, int chunks, int always)
{
    if (chunks) {
        lua_newtable(L);
        int n = 0;
        if (body_slices(L, f, f->dir, add_chunk, &n) != 0) luaL_error(L, "out of memory");
        lua_pushinteger(L, 0);
        lua_pushcclosure(L, chunks_iter, 2);
    } else if (body_length(f, f->dir) == 0 && !always) {
        lua_pushnil(L);
    } else {
        push_ref(L, f, f->dir, MT_BODY);
    }
}

/* handle:body([always_wrap_body]): the whole body of this direction (waits
 * for its end); nil when there is none unless always_wrap_body. */
static int l_handle_body(lua_State *L)
{
    lm_filter *f = check_handle(L, 1);
    int always = lua_toboolean(L, 2);
    if (!f->eos[f->dir]) return wait_body(L, f, 0, always);
    push_body_result(L, f, 0, always);
    return 1;
}

/* handle:bodyChunks(): an iterator over the slices of the whole body (waits
 * for its end; unlike Envoy's, chunks are not streamed one by one). */
static int l_handle_body_chunks(lua_State *L)
{
    lm_filter *f = check_handle(L, 1);
    if (!f->eos[f->dir]) return wait_body(L, f, 1, 0);
    push_body_result(L, f, 1, 0);
    return 1;
}

static int respond_header(lua_State *L, int kidx, int vidx, mod_hdr *out, char **w, size_t *n,
                          size_t *bytes, uint32_t *status)
{
    size_t kl, vl;
    const char *k = lua_tolstring(L, kidx, &kl);
    const char *v = lua_tolstring(L, vidx, &vl);
    if (kl == 7 && memcmp(k, ":status", 7) == 0) {
        char *end = NULL;
        long s = strtol(v, &end, 10);
        if (end == v || *end || s < 100 || s > 999) return -1;
        *status = (uint32_t)s;
        return 0;
    }
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
    if (rc || status == 0) return luaL_error(L, "respond(): a valid :status header is required");
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

/* ---- metadata(): route metadata under the configured namespace ---- */

static int l_handle_metadata(lua_State *L)
{
    lm_filter *f = check_handle(L, 1);
    push_ref(L, f, 0, MT_METADATA);
    return 1;
}

static int l_metadata_get(lua_State *L)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_METADATA);
    size_t kl;
    const char *k = luaL_checklstring(L, 2, &kl);
    lm_filter *f = live(L, r, "metadata");
    mod_buf ns = {f->cfg->md_ns, strlen(f->cfg->md_ns)}, key = {k, kl};
    env_buf s = {NULL, 0};
    double d;
    bool bv;
    /* probe the type: number and bool first (the string getter logs an
     * error for non-string values) */
    if (envoy_dynamic_module_callback_http_get_metadata_number(f->fe, ENV_METADATA_ROUTE, ns, key, &d))
        lua_pushnumber(L, d);
    else if (envoy_dynamic_module_callback_http_get_metadata_bool(f->fe, ENV_METADATA_ROUTE, ns, key, &bv))
        lua_pushboolean(L, bv);
    else if (envoy_dynamic_module_callback_http_get_metadata_string(f->fe, ENV_METADATA_ROUTE, ns, key, &s) &&
             s.ptr)
        lua_pushlstring(L, s.ptr, s.length);
    else
        lua_pushnil(L);
    return 1;
}

/* ---- streamInfo() / connection() ---- */

static void push_attr_string(lua_State *L, lm_filter *f, int id)
{
    env_buf v = {NULL, 0};
    if (envoy_dynamic_module_callback_http_filter_get_attribute_string(f->fe, id, &v) && v.ptr)
        lua_pushlstring(L, v.ptr, v.length);
    else
        lua_pushnil(L);
}

static int l_handle_stream_info(lua_State *L)
{
    lm_filter *f = check_handle(L, 1);
    push_ref(L, f, 0, MT_STREAMINFO);
    return 1;
}

static int l_si_protocol(lua_State *L)
{
    lm_filter *f = CHECK(L, 1, MT_STREAMINFO, "streamInfo");
    push_attr_string(L, f, ENV_ATTR_REQUEST_PROTOCOL);
    return 1;
}

static int l_si_remote(lua_State *L)
{
    lm_filter *f = CHECK(L, 1, MT_STREAMINFO, "streamInfo");
    push_attr_string(L, f, ENV_ATTR_SOURCE_ADDRESS);
    return 1;
}

static int l_si_local(lua_State *L)
{
    lm_filter *f = CHECK(L, 1, MT_STREAMINFO, "streamInfo");
    push_attr_string(L, f, ENV_ATTR_DESTINATION_ADDRESS);
    return 1;
}

static int l_si_sni(lua_State *L)
{
    lm_filter *f = CHECK(L, 1, MT_STREAMINFO, "streamInfo");
    push_attr_string(L, f, ENV_ATTR_CONNECTION_REQUESTED_SERVER_NAME);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushliteral(L, "");
    }
    return 1;
}

static int l_handle_connection(lua_State *L)
{
    lm_filter *f = check_handle(L, 1);
    push_ref(L, f, 0, MT_CONNECTION);
    return 1;
}

/* connection():ssl(): nil on a plaintext connection (as Envoy's) */
static int l_conn_ssl(lua_State *L)
{
    lm_filter *f = CHECK(L, 1, MT_CONNECTION, "connection");
    env_buf v = {NULL, 0};
    if (!envoy_dynamic_module_callback_http_filter_get_attribute_string(f->fe, ENV_ATTR_CONNECTION_TLS_VERSION,
                                                                        &v) || !v.ptr || !v.length) {
        lua_pushnil(L);
        return 1;
    }
    push_ref(L, f, 0, MT_SSL);
    return 1;
}

static int l_ssl_tls_version(lua_State *L)
{
    lm_filter *f = CHECK(L, 1, MT_SSL, "ssl");
    push_attr_string(L, f, ENV_ATTR_CONNECTION_TLS_VERSION);
    return 1;
}

/* ---- aioresty_luamod.call(handle, queue_address, method, req, timeout_ms)
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
    if (f->task || f->wait != W_NONE) return luaL_error(L, "aioresty: another call is pending");
    if (qn <= 0) return luaL_error(L, "aioresty: bad runtime queue");
    ar_queue *q = (ar_queue *)(uintptr_t)qn;
    if (!f->link && !(f->link = ar_link_new(f->fe))) {
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    ar_task *t = ar_task_new(m, ml, req, rl, &ar_link_sink, f->link);
    if (!t) {
        lua_pushnil(L);
        lua_pushliteral(L, "out of memory");
        return 2;
    }
    int rc = ar_link_post(f->link, q, t);
    if (rc != AR_OK) {
        /* not posted: the sink never runs; the task is only ours */
        ar_task_release(t);
        lua_pushnil(L);
        lua_pushstring(L, rc == AR_EFULL     ? "post failed, queue full"
                          : rc == AR_ECLOSED ? "task queue is finished"
                          : rc == AR_ENOMEM  ? "out of memory"
                                             : "invalid call");
        return 2;
    }
    f->task = t;
    f->task_id = ar_task_id(t);
    /* every call is bounded: no timeout given (0) means the default */
    if (!(tmo > 0)) tmo = AR_DEFAULT_TIMEOUT_MS;
    f->has_timer = ar_timeout_add(f->link, f->task_id << 1 | 1, tmo) == 0;
    f->wait = W_CALL;
    return lua_yield(L, 0);
}

/* ---- diagnostics: aioresty_luamod.stats() ---- */
static int l_stats(lua_State *L)
{
    lm_filter *f = tl_current;
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

/* __index of every object: the method, or a clear error naming what is not
 * supported in this mode. */
static int l_index(lua_State *L)
{
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(1));
    if (!lua_isnil(L, -1)) return 1;
    const char *what = lua_tostring(L, lua_upvalueindex(2));
    if (lua_type(L, 2) == LUA_TSTRING)
        return luaL_error(L, "%s:%s() is not supported by aioresty's lua filter mode "
                             "(see docs/luamod.md for the supported API)", what, lua_tostring(L, 2));
    return luaL_error(L, "%s: bad index", what);
}

static int l_metadata_pairs(lua_State *L)
{
    return luaL_error(L, "pairs(metadata()) is not supported by aioresty's lua filter mode; use get(key)");
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
static const luaL_Reg headers_m[] = {
    {"get", l_headers_get},       {"getAtIndex", l_headers_get_at_index},
    {"getNumValues", l_headers_get_num_values},
    {"add", l_headers_add},       {"replace", l_headers_replace},
    {"remove", l_headers_remove}, {NULL, NULL},
};
static const luaL_Reg body_m[] = {
    {"length", l_body_length}, {"getBytes", l_body_get_bytes}, {NULL, NULL}};
static const luaL_Reg chunk_m[] = {
    {"length", l_chunk_length}, {"getBytes", l_chunk_get_bytes}, {NULL, NULL}};
static const luaL_Reg metadata_m[] = {{"get", l_metadata_get}, {NULL, NULL}};
static const luaL_Reg streaminfo_m[] = {
    {"protocol", l_si_protocol},
    {"downstreamRemoteAddress", l_si_remote},
    {"downstreamDirectRemoteAddress", l_si_remote},
    {"downstreamLocalAddress", l_si_local},
    {"requestedServerName", l_si_sni},
    {NULL, NULL},
};
static const luaL_Reg connection_m[] = {{"ssl", l_conn_ssl}, {NULL, NULL}};
static const luaL_Reg ssl_m[] = {{"tlsVersion", l_ssl_tls_version}, {NULL, NULL}};

static void reg_mt(lua_State *L, const char *name, const char *what, const luaL_Reg *m,
                   lua_CFunction pairs)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    luaL_register(L, NULL, m);
    lua_pushstring(L, what);
    lua_pushcclosure(L, l_index, 2);
    lua_setfield(L, -2, "__index");
    if (pairs) {
        lua_pushcfunction(L, pairs);
        lua_setfield(L, -2, "__pairs");
    }
    lua_pushliteral(L, "aioresty.lua");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

/* ------------------------------------------------------------ states */

static void log_msg(int level, const char *what, const char *msg)
{
    ar_envoy_log(level, "aioresty lua: %s: %s", what, msg ? msg : "(no message)");
}

static lua_State *new_state(lm_config *c, char *err, size_t errlen)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "luaL_newstate failed");
        return NULL;
    }
    luaL_openlibs(L);
    reg_mt(L, MT_HANDLE, "request_handle", handle_m, NULL);
    reg_mt(L, MT_HEADERS, "headers", headers_m, l_headers_pairs);
    reg_mt(L, MT_BODY, "body", body_m, NULL);
    reg_mt(L, MT_CHUNK, "body chunk", chunk_m, NULL);
    reg_mt(L, MT_METADATA, "metadata", metadata_m, l_metadata_pairs);
    reg_mt(L, MT_STREAMINFO, "streamInfo", streaminfo_m, NULL);
    reg_mt(L, MT_CONNECTION, "connection", connection_m, NULL);
    reg_mt(L, MT_SSL, "ssl", ssl_m, NULL);
    /* the marker resty_ffi's get_adapter looks for, and the native call */
    lua_createtable(L, 0, 3);
    lua_pushcfunction(L, l_call);
    lua_setfield(L, -2, "call");
    lua_pushcfunction(L, l_stats);
    lua_setfield(L, -2, "stats");
    lua_pushliteral(L, LUAJIT_VERSION);
    lua_setfield(L, -2, "luajit");
    lua_setglobal(L, "aioresty_luamod");
    if (luaL_loadbuffer(L, c->code, c->code_len, c->chunkname) || lua_pcall(L, 0, 0, 0)) {
        snprintf(err, errlen, "%s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "(error object)");
        lua_close(L);
        return NULL;
    }
    return L;
}

static int ref_global_fn(lua_State *L, const char *name)
{
    lua_getglobal(L, name);
    if (lua_type(L, -1) != LUA_TFUNCTION) {
        lua_pop(L, 1);
        return LUA_NOREF;
    }
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

static lm_state *get_state(lm_config *c)
{
    lm_state *st = pthread_getspecific(c->key);
    if (st) return st;
    st = calloc(1, sizeof *st);
    if (!st) return NULL;
    char err[1024];
    st->L = new_state(c, err, sizeof err);
    if (!st->L) {
        log_msg(ENV_LOG_ERROR, "script failed to load on this worker", err);
        free(st);
        return NULL;
    }
    st->ref_on_request = ref_global_fn(st->L, "envoy_on_request");
    st->ref_on_response = ref_global_fn(st->L, "envoy_on_response");
    pthread_mutex_lock(&c->states_mu);
    st->next = c->states;
    c->states = st;
    pthread_mutex_unlock(&c->states_mu);
    pthread_setspecific(c->key, st);
    atomic_fetch_add(&c->n_states, 1);
    return st;
}

/* ------------------------------------------------------------ coroutine driver */

static void drop_coroutine(lm_filter *f)
{
    if (f->co_ref != LUA_NOREF && f->co_ref != LUA_REFNIL) luaL_unref(f->st->L, LUA_REGISTRYINDEX, f->co_ref);
    f->co_ref = LUA_NOREF;
    f->co = NULL;
    f->wait = W_NONE;
}

/* The pending call is abandoned (stream gone, local reply): the runtime is
 * told (abort), our reference is released; a late answer is dropped. */
static void abandon_call(lm_filter *f)
{
    if (!f->task) return;
    if (f->has_timer) ar_timeout_cancel(f->link, f->task_id << 1 | 1);
    f->has_timer = 0;
    if (!ar_task_done(f->task)) ar_task_abort(f->task);
    ar_task_release(f->task);
    f->task = NULL;
}

static int script_failed(lm_filter *f, const char *msg)
{
    log_msg(ENV_LOG_ERROR, f->dir == 0 ? "envoy_on_request failed" : "envoy_on_response failed", msg);
    atomic_fetch_add(&f->cfg->n_errors, 1);
    drop_coroutine(f);
    return f->cfg->on_error == ON_ERROR_FAIL_CLOSED ? ACT_FAIL : ACT_DONE;
}

static int resume(lm_filter *f, int nargs)
{
    lm_filter *prev = tl_current;
    tl_current = f;
    f->wait = W_NONE;
    f->running = 1;
    int rc = lua_resume(f->co, nargs);
    f->running = 0;
    tl_current = prev;
    atomic_fetch_add(&f->cfg->n_resumes, 1);
    if (rc == LUA_YIELD) {
        if (f->responded) {
            drop_coroutine(f);
            return ACT_REPLY;
        }
        if (f->wait != W_NONE) return ACT_WAIT;
        return script_failed(f, "coroutine.yield() is not supported here: only aioresty calls and "
                                "body()/bodyChunks() can wait");
    }
    if (rc != 0) {
        const char *m = lua_tostring(f->co, -1);
        return script_failed(f, m ? m : "(error object is not a string)");
    }
    drop_coroutine(f);
    return ACT_DONE;
}

static int start(lm_filter *f, int dir, int fnref)
{
    lua_State *L = f->st->L;
    f->dir = dir;
    f->co = lua_newthread(L);
    f->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);     /* pops the thread, keeps it alive */
    lua_rawgeti(f->co, LUA_REGISTRYINDEX, fnref);
    push_ref(f->co, f, 0, MT_HANDLE);
    return resume(f, 1);
}

/* Sends the local reply.  The filter may be destroyed inside send_response
 * when called outside a hook: `f` is not touched afterwards. */
static void send_reply(lm_filter *f, int act)
{
    void *fe = f->fe;
    f->replied = 1;
    f->stopped = 0;
    if (act == ACT_FAIL) {
        static const mod_hdr h[] = {{"content-type", 12, "text/plain", 10}};
        envoy_dynamic_module_callback_http_send_response(fe, 500, (mod_hdr *)h, 1,
                                                         MB("lua script error\n"), MB("aioresty_lua_error"));
        return;
    }
    char *store = f->rstore;                        /* ours until freed below; Envoy copies */
    f->rstore = NULL;
    envoy_dynamic_module_callback_http_send_response(fe, f->rstatus, f->rhdrs, f->rnh,
                                                     (mod_buf){f->rbody, f->rbody_len},
                                                     MB("aioresty_lua_respond"));
    free(store);
}

/* Outcome of a resume inside a headers hook. */
static int finish_headers(lm_filter *f, int act)
{
    switch (act) {
    case ACT_WAIT:
        f->stopped = 1;
        return ENV_HEADERS_STOP_ITERATION;
    case ACT_REPLY:
    case ACT_FAIL:
        send_reply(f, act);
        return ENV_HEADERS_STOP_ITERATION;
    default:
        return ENV_HEADERS_CONTINUE;
    }
}

/* Outcome of a resume inside a body hook (headers were stopped). */
static int finish_body(lm_filter *f, int act)
{
    switch (act) {
    case ACT_WAIT:
        return ENV_BODY_STOP_BUFFER;
    case ACT_REPLY:
    case ACT_FAIL:
        send_reply(f, act);
        return ENV_BODY_STOP_NO_BUFFER;
    default:
        f->stopped = 0;                             /* Continue resumes the iteration */
        return ENV_BODY_CONTINUE;
    }
}

/* Resumes a coroutine waiting in body()/bodyChunks() now that the body is
 * complete: the C function is re-entered to produce its results. */
static int resume_body_waiter(lm_filter *f)
{
    /* push_body_result only raises on out-of-memory, which the state's
     * panic handler would turn into an abort; accept that as Envoy does */
    push_body_result(f->co, f, f->body_chunks, f->body_always);
    return resume(f, 1);
}

static int headers_hook(void *fe, lm_filter *f, int dir, bool eos)
{
    f->fe = fe;
    f->eos[dir] = eos;
    if (dir == 1) {
        if (f->replied) return ENV_HEADERS_CONTINUE; /* our own reply: no envoy_on_response */
        if (f->co) {
            /* Envoy's own local reply (timeout...) while the request coroutine waits */
            ar_envoy_log(ENV_LOG_DEBUG, "aioresty lua: response started while envoy_on_request was "
                                        "waiting: its call is aborted");
            abandon_call(f);
            drop_coroutine(f);
            f->stopped = 0;
        }
    }
    if (!f->st && !(f->st = get_state(f->cfg))) {
        atomic_fetch_add(&f->cfg->n_errors, 1);
        if (f->cfg->on_error == ON_ERROR_FAIL_CLOSED) {
            send_reply(f, ACT_FAIL);
            return ENV_HEADERS_STOP_ITERATION;
        }
        return ENV_HEADERS_CONTINUE;
    }
    int ref = dir == 0 ? f->st->ref_on_request : f->st->ref_on_response;
    if (ref == LUA_NOREF) return ENV_HEADERS_CONTINUE;
    return finish_headers(f, start(f, dir, ref));
}

static int body_hook(void *fe, lm_filter *f, int dir, bool eos)
{
    f->fe = fe;
    if (eos) f->eos[dir] = 1;
    if (f->replied) return ENV_BODY_STOP_NO_BUFFER;
    if (!f->co || f->dir != dir) return ENV_BODY_CONTINUE;
    if (f->wait == W_BODY && eos) return finish_body(f, resume_body_waiter(f));
    return ENV_BODY_STOP_BUFFER;                    /* waiting: buffer meanwhile */
}

static int trailers_hook(void *fe, lm_filter *f, int dir)
{
    f->fe = fe;
    f->eos[dir] = 1;                                /* trailers end the body */
    if (f->replied) return ENV_TRAILERS_STOP;
    if (!f->co || f->dir != dir) return ENV_TRAILERS_CONTINUE;
    if (f->wait == W_BODY) {
        int act = resume_body_waiter(f);
        if (act == ACT_REPLY || act == ACT_FAIL) {
            send_reply(f, act);
            return ENV_TRAILERS_STOP;
        }
        if (act == ACT_WAIT) return ENV_TRAILERS_STOP;
        f->stopped = 0;
        return ENV_TRAILERS_CONTINUE;
    }
    return ENV_TRAILERS_STOP;
}

/* ------------------------------------------------------------ mode hooks */

static int lm_request_headers(void *fe, void *fm, bool eos) { return headers_hook(fe, fm, 0, eos); }
static int lm_response_headers(void *fe, void *fm, bool eos) { return headers_hook(fe, fm, 1, eos); }
static int lm_request_body(void *fe, void *fm, bool eos) { return body_hook(fe, fm, 0, eos); }
static int lm_response_body(void *fe, void *fm, bool eos) { return body_hook(fe, fm, 1, eos); }
static int lm_request_trailers(void *fe, void *fm) { return trailers_hook(fe, fm, 0); }
static int lm_response_trailers(void *fe, void *fm) { return trailers_hook(fe, fm, 1); }

static void lm_scheduled(void *fe, void *fm, uint64_t ev)
{
    lm_filter *f = fm;
    f->fe = fe;
    ar_task *t = f->task;
    if (!t || !f->co || f->wait != W_CALL || (ev >> 1) != f->task_id) {
        atomic_fetch_add(&f->cfg->n_stale, 1);      /* late answer of an abandoned call */
        return;
    }
    if (ev & 1) {                                   /* timeout */
        if (ar_task_done(t)) return;                /* the answer's event is on its way */
        f->has_timer = 0;
        abandon_call(f);
        lua_pushnil(f->co);
        lua_pushliteral(f->co, "timeout");
    } else {
        if (!ar_task_done(t)) return;
        if (f->has_timer) ar_timeout_cancel(f->link, f->task_id << 1 | 1);
        f->has_timer = 0;
        size_t len = 0;
        const char *rsp = ar_task_response(t, &len);
        lua_pushinteger(f->co, ar_task_rc(t));
        if (rsp) lua_pushlstring(f->co, rsp, len);
        else lua_pushnil(f->co);
        f->task = NULL;
        ar_task_release(t);                         /* the answer was copied into Lua */
    }
    int act = resume(f, 2);
    if (act == ACT_WAIT) return;
    if (act == ACT_REPLY || act == ACT_FAIL) {
        send_reply(f, act);
        return;
    }
    if (f->stopped) {
        int dir = f->dir;
        f->stopped = 0;
        /* last use of f: continuing may finish the stream */
        if (dir == 0) envoy_dynamic_module_callback_http_filter_continue_decoding(fe);
        else envoy_dynamic_module_callback_http_filter_continue_encoding(fe);
    }
}

static void *lm_filter_new(void *cfg, void *fe)
{
    lm_filter *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->base.mode = &ar_mode_lua;
    f->cfg = cfg;
    f->fe = fe;
    f->co_ref = LUA_NOREF;
    f->serial = atomic_fetch_add(&g_serial, 1) + 1;
    return f;
}

static void lm_filter_destroy(void *fm)
{
    lm_filter *f = fm;
    if (f->link) ar_link_detach(f->link);           /* no commit after this point */
    abandon_call(f);                                /* stream reset while a call is pending */
    if (f->co) drop_coroutine(f);                   /* never resumed; the GC collects it */
    free(f->rstore);
    if (f->link) ar_link_unref(f->link);               /* the filter's reference */
    free(f);
}

/* ------------------------------------------------------------ config */

/* Minimal JSON: one object of string values. Returns 0 or -1 (err filled). */
static int json_string(const char **pp, const char *end, char **out)
{
    const char *p = *pp;
    if (p >= end || *p != '"') return -1;
    p++;
    char *o = malloc((size_t)(end - p) + 1), *w = o;
    if (!o) return -1;
    while (p < end && *p != '"') {
        if (*p != '\\') {
            *w++ = *p++;
            continue;
        }
        if (++p >= end) break;
        char c = *p++;
        switch (c) {
        case 'n': *w++ = '\n'; break;
        case 't': *w++ = '\t'; break;
        case 'r': *w++ = '\r'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'u': {
            if (end - p < 4) goto bad;
            char hex[5] = {p[0], p[1], p[2], p[3], 0};
            char *e = NULL;
            unsigned long u = strtoul(hex, &e, 16);
            if (*e) goto bad;
            p += 4;
            if (u < 0x80) *w++ = (char)u;
            else if (u < 0x800) {
                *w++ = (char)(0xc0 | (u >> 6));
                *w++ = (char)(0x80 | (u & 0x3f));
            } else {
                *w++ = (char)(0xe0 | (u >> 12));
                *w++ = (char)(0x80 | ((u >> 6) & 0x3f));
                *w++ = (char)(0x80 | (u & 0x3f));
            }
            break;
        }
        default: *w++ = c; break;                   /* \" \\ \/ */
        }
    }
    if (p >= end) goto bad;
    *w = '\0';
    *pp = p + 1;
    *out = o;
    return 0;
bad:
    free(o);
    return -1;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) p++;
    return p;
}

static char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 65536, n = 0;
    char *b = malloc(cap);
    while (b) {
        size_t r = fread(b + n, 1, cap - n, fp);
        n += r;
        if (n < cap) break;
        char *nb = realloc(b, cap *= 2);
        if (!nb) {
            free(b);
            b = NULL;
        } else b = nb;
    }
    fclose(fp);
    if (!b) snprintf(err, errlen, "out of memory reading %s", path);
    *len = n;
    return b;
}

static int parse_config(lm_config *c, env_buf conf, char *err, size_t errlen)
{
    const char *p = conf.ptr, *end = conf.ptr + conf.length;
    p = skip_ws(p, end);
    if (p >= end || *p != '{') {                    /* plain Lua source */
        c->code = malloc(conf.length + 1);
        if (!c->code) return -1;
        memcpy(c->code, conf.ptr, conf.length);
        c->code_len = conf.length;
        snprintf(c->chunkname, sizeof c->chunkname, "=aioresty_lua");
        return 0;
    }
    char *inl = NULL, *file = NULL, *onerr = NULL, *ns = NULL;
    int rc = -1;
    p = skip_ws(p + 1, end);
    while (p < end && *p != '}') {
        char *k = NULL, *v = NULL;
        if (json_string(&p, end, &k) != 0) {
            snprintf(err, errlen, "filter_config: bad JSON key");
            goto out;
        }
        p = skip_ws(p, end);
        if (p >= end || *p != ':') {
            free(k);
            snprintf(err, errlen, "filter_config: expected ':'");
            goto out;
        }
        p = skip_ws(p + 1, end);
        if (json_string(&p, end, &v) != 0) {
            snprintf(err, errlen, "filter_config: the value of \"%s\" must be a string", k);
            free(k);
            goto out;
        }
        char **slot = !strcmp(k, "inline_code")          ? &inl
                      : !strcmp(k, "filename")           ? &file
                      : !strcmp(k, "on_error")           ? &onerr
                      : !strcmp(k, "metadata_namespace") ? &ns
                                                         : NULL;
        if (!slot) {
            snprintf(err, errlen, "filter_config: unknown key \"%s\" (known: inline_code, filename, "
                                  "on_error, metadata_namespace)", k);
            free(k);
            free(v);
            goto out;
        }
        free(k);
        free(*slot);
        *slot = v;
        p = skip_ws(p, end);
        if (p < end && *p == ',') p = skip_ws(p + 1, end);
    }
    if (p >= end) {
        snprintf(err, errlen, "filter_config: unterminated JSON object");
        goto out;
    }
    if (!!inl == !!file) {
        snprintf(err, errlen, "filter_config: exactly one of \"inline_code\" or \"filename\" is required");
        goto out;
    }
    if (onerr && strcmp(onerr, "continue") && strcmp(onerr, "fail_closed")) {
        snprintf(err, errlen, "filter_config: on_error must be \"continue\" or \"fail_closed\"");
        goto out;
    }
    c->on_error = onerr && !strcmp(onerr, "fail_closed") ? ON_ERROR_FAIL_CLOSED : ON_ERROR_CONTINUE;
    if (ns) {
        c->md_ns = ns;
        ns = NULL;
    }
    if (inl) {
        c->code = inl;
        c->code_len = strlen(inl);
        inl = NULL;
        snprintf(c->chunkname, sizeof c->chunkname, "=aioresty_lua");
    } else {
        c->code = read_file(file, &c->code_len, err, errlen);
        if (!c->code) goto out;
        snprintf(c->chunkname, sizeof c->chunkname, "@%s", file);
    }
    rc = 0;
out:
    free(inl);
    free(file);
    free(onerr);
    free(ns);
    return rc;
}

static void lm_config_destroy(void *cfg)
{
    lm_config *c = cfg;
    pthread_key_delete(c->key);
    for (lm_state *s = c->states, *n; s; s = n) {
        n = s->next;
        lua_close(s->L);
        free(s);
    }
    pthread_mutex_destroy(&c->states_mu);
    free(c->code);
    free(c->md_ns);
    free(c);
}

static void *lm_config_new(void *cfg_envoy, env_buf conf)
{
    (void)cfg_envoy;
    lm_config *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->base.mode = &ar_mode_lua;
    char err[1024] = "out of memory";
    if (parse_config(c, conf, err, sizeof err) != 0) {
        log_msg(ENV_LOG_ERROR, "config rejected", err);
        free(c->code);
        free(c->md_ns);
        free(c);
        return NULL;
    }
    if (!c->md_ns) c->md_ns = strdup("aioresty.lua");
    /* syntax check now, so a broken script rejects the config; the chunk
     * itself runs on each worker, in its own state */
    lua_State *L = luaL_newstate();
    if (!L || !c->md_ns) {
        if (L) lua_close(L);
        free(c->code);
        free(c->md_ns);
        free(c);
        return NULL;
    }
    if (luaL_loadbuffer(L, c->code, c->code_len, c->chunkname)) {
        log_msg(ENV_LOG_ERROR, "script rejected", lua_tostring(L, -1));
        lua_close(L);
        free(c->code);
        free(c->md_ns);
        free(c);
        return NULL;
    }
    lua_close(L);
    pthread_key_create(&c->key, NULL);
    pthread_mutex_init(&c->states_mu, NULL);
    ar_envoy_log(ENV_LOG_INFO, "aioresty lua: config loaded (%zu bytes of Lua, %s, private %s)",
                 c->code_len, c->on_error ? "on_error=fail_closed" : "on_error=continue", LUAJIT_VERSION);
    return c;
}

const ar_mode ar_mode_lua = {
    .name = "lua",
    .config_new = lm_config_new,
    .config_destroy = lm_config_destroy,
    .filter_new = lm_filter_new,
    .filter_destroy = lm_filter_destroy,
    .request_headers = lm_request_headers,
    .request_body = lm_request_body,
    .request_trailers = lm_request_trailers,
    .response_headers = lm_response_headers,
    .response_body = lm_response_body,
    .response_trailers = lm_response_trailers,
    .scheduled = lm_scheduled,
};
