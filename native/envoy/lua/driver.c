/*
 * lua/driver.c - filter mode "lua" of libaioresty_envoy.so (envoy_mode.h):
 * the per-worker lua_States, the coroutine driver (start, resume, the
 * outcome of a resume: wait, reply, fail, done) and the filter hooks.  The
 * handle API is in lua/handle.c and lua/objects.c, the config in
 * lua/config.c (the wing's map: lua_mode.h).
 *
 * Threads: the worker thread owning the filter; a state is created by the
 * first stream of its config on each worker and used by that worker only.
 * Ownership: states are freed with their config (lm_config_destroy); the
 * filter (with its coroutine reference, respond() block and ar_call) in
 * lm_filter_destroy.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "lua_mode.h"

/* the outcome of a resume */
enum { ACT_DONE = 0, ACT_WAIT, ACT_REPLY, ACT_FAIL };

static atomic_ulong g_serial;

/* The filter whose coroutine this thread is resuming right now.  Handles and
 * their objects are valid only inside their own filter's resume: anything
 * else (a handle kept in a global across requests) is refused, never
 * dereferenced. */
__thread lm_filter *lm_current;

/* ---- per-worker states ---- */

static lua_State *new_state(lm_config *c, char *err, size_t errlen)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "luaL_newstate failed");
        return NULL;
    }
    luaL_openlibs(L);
    lm_open_api(L);
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
        lm_log(ENV_LOG_ERROR, "script failed to load on this worker", err);
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

/* ---- coroutine driver ---- */

static void drop_coroutine(lm_filter *f)
{
    if (f->co_ref != LUA_NOREF && f->co_ref != LUA_REFNIL) luaL_unref(f->st->L, LUA_REGISTRYINDEX, f->co_ref);
    f->co_ref = LUA_NOREF;
    f->co = NULL;
    f->wait = W_NONE;
}

static int script_failed(lm_filter *f, const char *msg)
{
    lm_log(ENV_LOG_ERROR, f->dir == AR_DIR_REQUEST ? "envoy_on_request failed" : "envoy_on_response failed", msg);
    atomic_fetch_add(&f->cfg->n_errors, 1);
    drop_coroutine(f);
    return f->cfg->on_error == ON_ERROR_FAIL_CLOSED ? ACT_FAIL : ACT_DONE;
}

static int resume(lm_filter *f, int nargs)
{
    lm_filter *prev = lm_current;
    lm_current = f;
    f->wait = W_NONE;
    int rc = lua_resume(f->co, nargs);
    lm_current = prev;
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

static int start(lm_filter *f, ar_dir dir, int fnref)
{
    lua_State *L = f->st->L;
    f->dir = dir;
    f->co = lua_newthread(L);
    f->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);     /* pops the thread, keeps it alive */
    lua_rawgeti(f->co, LUA_REGISTRYINDEX, fnref);
    lm_push_ref(f->co, f, 0, MT_HANDLE);
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
        ar_reply_error(fe, 500, NULL, "lua script error\n", "aioresty_lua_error");
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
static env_headers_status finish_headers(lm_filter *f, int act)
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
static env_body_status finish_body(lm_filter *f, int act)
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
    lm_push_body_result(f->co, f, f->body_chunks, f->body_always);
    return resume(f, 1);
}

static env_headers_status lm_headers(void *fe, void *fm, ar_dir dir, bool eos)
{
    lm_filter *f = fm;
    f->fe = fe;
    f->eos[dir] = eos;
    if (dir == AR_DIR_RESPONSE) {
        if (f->replied) return ENV_HEADERS_CONTINUE; /* our own reply: no envoy_on_response */
        if (f->co) {
            /* Envoy's own local reply (timeout...) while the request coroutine waits */
            ar_envoy_log(ENV_LOG_DEBUG, "aioresty lua: response started while envoy_on_request was "
                                        "waiting: its call is aborted");
            ar_call_abandon(&f->call);
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
    int ref = dir == AR_DIR_REQUEST ? f->st->ref_on_request : f->st->ref_on_response;
    if (ref == LUA_NOREF) return ENV_HEADERS_CONTINUE;
    return finish_headers(f, start(f, dir, ref));
}

static env_body_status lm_body(void *fe, void *fm, ar_dir dir, bool eos)
{
    lm_filter *f = fm;
    f->fe = fe;
    if (eos) f->eos[dir] = 1;
    if (f->replied) return ENV_BODY_STOP_NO_BUFFER;
    if (!f->co || f->dir != dir) return ENV_BODY_CONTINUE;
    if (f->wait == W_BODY && eos) return finish_body(f, resume_body_waiter(f));
    return ENV_BODY_STOP_BUFFER;                    /* waiting: buffer meanwhile */
}

static env_trailers_status lm_trailers(void *fe, void *fm, ar_dir dir)
{
    lm_filter *f = fm;
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

static void lm_scheduled(void *fe, void *fm, uint64_t ev)
{
    lm_filter *f = fm;
    f->fe = fe;
    ar_task *t = NULL;
    ar_event what = f->co && f->wait == W_CALL ? ar_call_event(&f->call, ev, &t) : AR_EVENT_STALE;
    if (what == AR_EVENT_STALE) {
        atomic_fetch_add(&f->cfg->n_stale, 1);      /* late answer of an abandoned call */
        return;
    }
    if (what == AR_EVENT_EARLY) return;
    if (what == AR_EVENT_TIMEOUT) {                 /* the call was abandoned */
        lua_pushnil(f->co);
        lua_pushliteral(f->co, "timeout");
    } else {
        size_t len = 0;
        const char *rsp = ar_task_response(t, &len);
        lua_pushinteger(f->co, ar_task_rc(t));
        if (rsp) lua_pushlstring(f->co, rsp, len);
        else lua_pushnil(f->co);
        ar_task_release(t);                         /* the answer was copied into Lua */
    }
    int act = resume(f, 2);
    if (act == ACT_WAIT) return;
    if (act == ACT_REPLY || act == ACT_FAIL) {
        send_reply(f, act);
        return;
    }
    if (f->stopped) {
        f->stopped = 0;
        ar_stream_continue(fe, f->dir);             /* last use of f: may finish the stream */
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
    ar_call_end(&f->call);                          /* stream reset while a call is pending */
    if (f->co) drop_coroutine(f);                   /* never resumed; the GC collects it */
    free(f->rstore);
    free(f);
}

const ar_mode ar_mode_lua = {
    .name = "lua",
    .config_new = lm_config_new,
    .config_destroy = lm_config_destroy,
    .filter_new = lm_filter_new,
    .filter_destroy = lm_filter_destroy,
    .headers = lm_headers,
    .body = lm_body,
    .trailers = lm_trailers,
    .scheduled = lm_scheduled,
};
