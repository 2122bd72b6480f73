/*
 * lua/objects.c - the objects a handle of the "lua" mode hands out
 * (lua_mode.h): headers, body, body chunks, metadata, streamInfo,
 * connection and ssl, with Envoy's Lua filter API, plus the metatable
 * machinery every object (and the handle) uses.
 *
 * Threads: the worker thread of the filter, inside its coroutine's resume.
 * Ownership: an object is a Lua userdata (the GC frees it); lm_ref objects
 * only point at their filter and are refused (lm_live) outside that
 * filter's own resume, never dereferenced.  Chunk objects hold a copy of
 * their bytes.  Envoy's buffers are read during the call only.
 */
#include <stdlib.h>
#include <string.h>

#include "lua_mode.h"

/* ---- handle objects ---- */

typedef struct {
    size_t len;
    char data[];
} lm_chunk;

lm_filter *lm_live(lua_State *L, const lm_ref *r, const char *what)
{
    lm_filter *f = lm_current;
    if (!f || f != r->f || f->serial != r->serial)
        luaL_error(L, "%s used outside of the request it belongs to (objects of a handle are only "
                      "valid in that request's envoy_on_request/envoy_on_response)", what);
    return f;
}

lm_ref *lm_push_ref(lua_State *L, lm_filter *f, int kind, const char *mt)
{
    lm_ref *r = lua_newuserdata(L, sizeof *r);
    r->f = f;
    r->serial = f->serial;
    r->kind = kind;
    luaL_getmetatable(L, mt);
    lua_setmetatable(L, -2);
    return r;
}


/* ---- headers ---- */

/* What every headers method works on: the object at 1, the name at 2. */
typedef struct {
    lm_filter *f;
    env_header_type kind;
    mod_buf key;
} hdr_args;

/* Checks the arguments 1 and 2 and `extra` more strings after them (the
 * values of add/replace, returned in vals), then that the object is live. */
static hdr_args headers_args(lua_State *L, int extra, mod_buf *vals)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_HEADERS);
    hdr_args h = {NULL, (env_header_type)r->kind, {NULL, 0}};
    h.key.ptr = luaL_checklstring(L, 2, &h.key.length);
    for (int i = 0; i < extra; i++) vals[i].ptr = luaL_checklstring(L, 3 + i, &vals[i].length);
    h.f = lm_live(L, r, "headers");
    return h;
}

/* Value i of the header (a borrowed slice; NULL when there is none); *n,
 * unless NULL, the number of values. */
static env_buf header_value(const hdr_args *h, size_t i, size_t *n)
{
    env_buf v = {NULL, 0};
    if (!envoy_dynamic_module_callback_http_get_header(h->f->fe, h->kind, h->key, &v, i, n))
        v.ptr = NULL;
    return v;
}

static int l_headers_get(lua_State *L)
{
    hdr_args h = headers_args(L, 0, NULL);
    size_t n = 0;
    env_buf v = header_value(&h, 0, &n);
    if (!v.ptr) {
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
        env_buf w = header_value(&h, i, NULL);
        if (w.ptr) {
            luaL_addchar(&b, ',');
            luaL_addlstring(&b, w.ptr, w.length);
        }
    }
    luaL_pushresult(&b);
    return 1;
}

static int l_headers_get_at_index(lua_State *L)
{
    lua_Integer i = luaL_checkinteger(L, 3);
    hdr_args h = headers_args(L, 0, NULL);
    env_buf v = i < 0 ? (env_buf){NULL, 0} : header_value(&h, (size_t)i, NULL);
    if (!v.ptr) lua_pushnil(L);
    else lua_pushlstring(L, v.ptr, v.length);
    return 1;
}

static int l_headers_get_num_values(lua_State *L)
{
    hdr_args h = headers_args(L, 0, NULL);
    size_t n = 0;
    env_buf v = {NULL, 0};
    if (!envoy_dynamic_module_callback_http_get_header(h.f->fe, h.kind, h.key, &v, 0, &n)) n = 0;
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

static int headers_set(lua_State *L, int add)
{
    mod_buf v;
    hdr_args h = headers_args(L, 1, &v);
    if (add) envoy_dynamic_module_callback_http_add_header(h.f->fe, h.kind, h.key, v);
    else envoy_dynamic_module_callback_http_set_header(h.f->fe, h.kind, h.key, v);
    return 0;
}

static int l_headers_add(lua_State *L) { return headers_set(L, 1); }
static int l_headers_replace(lua_State *L) { return headers_set(L, 0); }

static int l_headers_remove(lua_State *L)
{
    hdr_args h = headers_args(L, 0, NULL);
    envoy_dynamic_module_callback_http_set_header(h.f->fe, h.kind, h.key, (mod_buf){NULL, 0});
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
    lm_filter *f = lm_live(L, r, "headers");
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

/* ---- bodies (what Envoy buffered, then the slice being received) ---- */

static void add_range(const env_buf *s, void *ud)
{
    luaL_addlstring(ud, s->ptr, s->length);
}

static int l_body_length(lua_State *L)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_BODY);
    lm_filter *f = lm_live(L, r, "body");
    lua_pushinteger(L, (lua_Integer)ar_body_size(f->fe, r->kind));
    return 1;
}

/* buffer:getBytes(index, length) - Envoy's semantics: 0-based index,
 * index + length must lie within the body. */
static int l_body_get_bytes(lua_State *L)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_BODY);
    lua_Integer idx = luaL_checkinteger(L, 2);
    lua_Integer len = luaL_checkinteger(L, 3);
    lm_filter *f = lm_live(L, r, "body");
    size_t total = ar_body_size(f->fe, r->kind);
    if (idx < 0 || len < 0 || (size_t)idx > total || (size_t)len > total - (size_t)idx)
        return luaL_error(L, "index/length must be >= 0 and (index + length) must be <= buffer size");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    if (ar_body_range(f->fe, r->kind, (size_t)idx, (size_t)len, add_range, &b) != 0)
        return luaL_error(L, "out of memory");
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

typedef struct {
    lua_State *L;
    int n;
} chunks_ctx;

/* t[#t + 1] = a chunk object holding a copy of the slice (t on top of L) */
static void add_chunk(const env_buf *s, void *ud)
{
    lua_State *L = ((chunks_ctx *)ud)->L;
    int *n = &((chunks_ctx *)ud)->n;
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

/* Pushes body()'s (or bodyChunks()'s) one result onto L. */
void lm_push_body_result(lua_State *L, lm_filter *f, int chunks, int always)
{
    if (chunks) {
        lua_newtable(L);
        chunks_ctx c = {L, 0};
        if (ar_body_each(f->fe, f->dir, add_chunk, &c) != 0) luaL_error(L, "out of memory");
        lua_pushinteger(L, 0);
        lua_pushcclosure(L, chunks_iter, 2);
    } else if (ar_body_size(f->fe, f->dir) == 0 && !always) {
        lua_pushnil(L);
    } else {
        lm_push_ref(L, f, f->dir, MT_BODY);
    }
}

/* ---- metadata(): route metadata under the configured namespace ---- */

static int l_metadata_get(lua_State *L)
{
    lm_ref *r = luaL_checkudata(L, 1, MT_METADATA);
    size_t kl;
    const char *k = luaL_checklstring(L, 2, &kl);
    lm_filter *f = lm_live(L, r, "metadata");
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

/* The string attribute `id` of the object at 1 (a `what` of metatable mt),
 * or nil. */
static int push_attr(lua_State *L, const char *mt, const char *what, env_attribute_id id)
{
    lm_filter *f = LM_CHECK(L, 1, mt, what);
    env_buf v = {NULL, 0};
    if (envoy_dynamic_module_callback_http_filter_get_attribute_string(f->fe, id, &v) && v.ptr)
        lua_pushlstring(L, v.ptr, v.length);
    else
        lua_pushnil(L);
    return 1;
}

#define SI_ATTR(id) push_attr(L, MT_STREAMINFO, "streamInfo", (id))
static int l_si_protocol(lua_State *L) { return SI_ATTR(ENV_ATTR_REQUEST_PROTOCOL); }
static int l_si_remote(lua_State *L) { return SI_ATTR(ENV_ATTR_SOURCE_ADDRESS); }
static int l_si_local(lua_State *L) { return SI_ATTR(ENV_ATTR_DESTINATION_ADDRESS); }

static int l_si_sni(lua_State *L)
{
    SI_ATTR(ENV_ATTR_CONNECTION_REQUESTED_SERVER_NAME);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushliteral(L, "");
    }
    return 1;
}

/* connection():ssl(): nil on a plaintext connection (as Envoy's) */
static int l_conn_ssl(lua_State *L)
{
    lm_filter *f = LM_CHECK(L, 1, MT_CONNECTION, "connection");
    env_buf v = {NULL, 0};
    if (!envoy_dynamic_module_callback_http_filter_get_attribute_string(f->fe, ENV_ATTR_CONNECTION_TLS_VERSION,
                                                                        &v) || !v.ptr || !v.length) {
        lua_pushnil(L);
        return 1;
    }
    lm_push_ref(L, f, 0, MT_SSL);
    return 1;
}

static int l_ssl_tls_version(lua_State *L)
{
    return push_attr(L, MT_SSL, "ssl", ENV_ATTR_CONNECTION_TLS_VERSION);
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
        return luaL_error(L, "%s:%s() is not supported by aioresty's lua mode "
                             "(see docs/lua-mode.md for the supported API)", what, lua_tostring(L, 2));
    return luaL_error(L, "%s: bad index", what);
}

static int l_metadata_pairs(lua_State *L)
{
    return luaL_error(L, "pairs(metadata()) is not supported by aioresty's lua mode; use get(key)");
}

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


void lm_reg_mt(lua_State *L, const char *name, const char *what, const luaL_Reg *m,
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

void lm_open_objects(lua_State *L)
{
    lm_reg_mt(L, MT_HEADERS, "headers", headers_m, l_headers_pairs);
    lm_reg_mt(L, MT_BODY, "body", body_m, NULL);
    lm_reg_mt(L, MT_CHUNK, "body chunk", chunk_m, NULL);
    lm_reg_mt(L, MT_METADATA, "metadata", metadata_m, l_metadata_pairs);
    lm_reg_mt(L, MT_STREAMINFO, "streamInfo", streaminfo_m, NULL);
    lm_reg_mt(L, MT_CONNECTION, "connection", connection_m, NULL);
    lm_reg_mt(L, MT_SSL, "ssl", ssl_m, NULL);
}
