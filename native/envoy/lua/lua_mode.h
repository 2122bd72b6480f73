/*
 * lua/lua_mode.h - the inside of filter mode "lua": an Envoy-Lua-filter-style
 * LuaJIT filter hosted inside our dynamic module, with a native ffi-yield
 * (docs/lua-mode.md).  Shared by the wing's files:
 *
 *   lua/driver.c   per-worker lua_States, the coroutine driver, the filter
 *                  hooks and the mode table
 *   lua/handle.c   the request/response handle: body waits, respond(),
 *                  logging, aioresty_lua_mode.call (the ffi-yield) and stats,
 *                  and lm_open_api (every metatable and global of a state)
 *   lua/objects.c  what the handle hands out: headers, body, body chunks,
 *                  metadata, streamInfo, connection, ssl objects
 *   lua/config.c   filter_config (JSON, config_json.h) and config new/destroy
 *
 * Scripts define envoy_on_request(request_handle) and/or
 * envoy_on_response(response_handle); each runs in a coroutine.  In it
 * resty_ffi works unchanged: `runtime:method(req, handle)` goes through the
 * adapter lua/aioresty/envoy_lua_mode.lua (chosen by resty_ffi when the global
 * `aioresty_lua_mode` exists) into l_call, which posts the task (ar_call_post,
 * stream.h) and lua_yield()s from C.  The hook returns StopIteration (the
 * body is buffered meanwhile); the runtime answers on its own thread, the
 * completion sink commits the http-filter scheduler, and `scheduled`
 * resumes the coroutine on the worker thread.  When the coroutine ends, the
 * module sends the reply the script asked for (respond()) or continues the
 * stream.
 *
 * LuaJIT: a private static copy (native/luajit/build.mk) linked with hidden
 * symbols, so this module never binds to the LuaJIT the Envoy binary exports.
 *
 * Threads and ownership (who frees what):
 *   - lm_config: created/destroyed by Envoy's config hooks (main thread).
 *     It owns the script text, the metadata namespace and every lm_state
 *     (freed in config_destroy).
 *   - lm_state: one lua_State per (config, worker thread), created lazily on
 *     that worker (pthread key); only that thread ever touches it.
 *   - lm_filter: worker thread only; freed in filter_destroy.  It owns its
 *     coroutine through a registry reference (dropped, never resumed, when
 *     the stream goes away), the captured respond() reply, and its ar_call
 *     (stream.h: the link shared with runtime and timeout threads, the host
 *     reference of the pending task, released on the worker).
 *   - handle objects (lm_ref userdata) point at their filter but are only
 *     honoured inside that filter's own resume (lm_live); request bytes are
 *     copied by ar_task_new, answers copied into Lua before the release.
 */
#ifndef AIORESTY_ENVOY_LUA_MODE_H
#define AIORESTY_ENVOY_LUA_MODE_H

#include <pthread.h>
#include <stdatomic.h>

#include <lauxlib.h>
#include <lua.h>

#include "envoy_mode.h"
#include "stream.h"

#define MT_HANDLE "aioresty.lua.handle"
#define MT_HEADERS "aioresty.lua.headers"
#define MT_BODY "aioresty.lua.body"
#define MT_CHUNK "aioresty.lua.chunk"
#define MT_METADATA "aioresty.lua.metadata"
#define MT_STREAMINFO "aioresty.lua.streamInfo"
#define MT_CONNECTION "aioresty.lua.connection"
#define MT_SSL "aioresty.lua.ssl"

enum { ON_ERROR_CONTINUE = 0, ON_ERROR_FAIL_CLOSED = 1 };
/* what a suspended coroutine waits for */
enum { W_NONE = 0, W_CALL, W_BODY };

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
    atomic_ulong n_states, n_errors, n_stale;
} lm_config;

typedef struct lm_filter {
    ar_mode_base base;
    lm_config *cfg;
    lm_state *st;
    void *fe;
    uint64_t serial;
    lua_State *co;              /* the running/suspended coroutine, or NULL */
    int co_ref;
    ar_dir dir;                 /* the direction of the coroutine */
    int wait;                   /* W_* while suspended */
    int stopped;                /* a hook of `dir` returned Stop: continue_* is owed */
    int replied;                /* we sent a local reply */
    int eos[2];                 /* end of stream seen, per direction */
    int responded;              /* respond() captured a reply */
    ar_call call;               /* the pending aioresty call (stream.h) */
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

/* The filter whose coroutine this thread is resuming right now (driver.c). */
extern __thread lm_filter *lm_current;

/* ---- handle objects (objects.c) ---- */

typedef struct {
    lm_filter *f;
    uint64_t serial;
    int kind;                   /* headers: header type; body: direction */
} lm_ref;

/* The filter of r, or a Lua error when r is used outside its own resume. */
lm_filter *lm_live(lua_State *L, const lm_ref *r, const char *what);
lm_ref *lm_push_ref(lua_State *L, lm_filter *f, int kind, const char *mt);
#define LM_CHECK(L, idx, mt, what) \
    lm_live((L), (lm_ref *)luaL_checkudata((L), (idx), (mt)), (what))

/* Pushes body()'s (chunks 0) or bodyChunks()'s (1) one result onto L. */
void lm_push_body_result(lua_State *L, lm_filter *f, int chunks, int always);
/* A metatable whose __index gives the methods m or a clear error. */
void lm_reg_mt(lua_State *L, const char *name, const char *what, const luaL_Reg *m,
               lua_CFunction pairs);
/* Every metatable of objects.c. */
void lm_open_objects(lua_State *L);

/* ---- handle.c ---- */

/* Every metatable and the `aioresty_lua_mode` global of a new state. */
void lm_open_api(lua_State *L);

/* ---- config.c (main thread) ---- */

void *lm_config_new(void *cfg_envoy, env_buf conf);
void lm_config_destroy(void *cfg);
void lm_log(env_log_level level, const char *what, const char *msg);

#endif
