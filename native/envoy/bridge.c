/*
 * bridge.c - filter mode "bridge" of libaioresty_envoy.so (envoy_mode.h).
 *
 * The module is an UPSTREAM http
 * filter of a dedicated cluster ("aioresty_bridge").  A stock Envoy Lua
 * filter calls a runtime with
 *
 *     request_handle:httpCall("aioresty_bridge", {
 *         [":method"]="POST", [":path"]="/" .. <method>,
 *         [":authority"]=<id>.<secret> }, req, {send_xff=false, ...})
 *
 * which is the only way a stock Lua coroutine can wait without blocking the
 * worker (docs/envoy.md).  Here the module buffers the request body to
 * the end of stream, posts a task to the core's queue (aioresty_core.h),
 * returns StopIteration, and when the runtime answers (completion sink, on
 * the runtime's thread) commits the http-filter scheduler; on the worker
 * thread `scheduled` then sends a local reply that never leaves Envoy:
 *
 *     200, [x-aioresty-rc: <rc> unless 0], [x-aioresty-nil: 1 when rsp was NULL], body = rsp
 *
 * Three headers in, at most two out: every header costs Envoy's async client,
 * router and the Lua filter's table conversion a little on each call
 * (measured, stock 1.40, concurrency 1: this form with send_xff=false saves
 * 0.7-1.2 us of Envoy CPU per call, ~3% of a call, against the five-header
 * request and three-header reply it replaced).  The older form
 * (x-aioresty-q / x-aioresty-method headers) is still accepted and answered
 * as before: 200, x-aioresty-rc always, content-type, [x-aioresty-nil].
 *
 * Posting errors answer at once: 503 with x-aioresty-error: full | closed |
 * nomem, and 400 with x-aioresty-error: bad-request for a malformed call.
 * A reset stream (httpCall timeout, client gone) destroys the filter and
 * never runs `scheduled`: the task is aborted there (the Python runtime
 * cancels its handler) and the late answer is dropped.
 *
 * Trust: :authority names the runtime as "<id>.<secret>" (core
 * ar_bridge_authority / ar_bridge_resolve): the registry id and this
 * process's random secret, which only Lua code running in this Envoy can
 * have.  A request that reaches the bridge cluster from outside (a route
 * with cluster_header, a forged Host) gets 400 (malformed), 403 (no secret)
 * or 404 (no such runtime) and a rate-limited log line; nothing is parsed
 * as a pointer.  Method names: 0..AR_METHOD_MAX bytes ("" is lua-resty-ffi's rt(req)),
 * no NUL.
 *
 * Threads and ownership:
 *   - bridge_filter is created, used and freed on its worker thread only.
 *     What the runtime thread needs (the scheduler, the "destroyed" state)
 *     is the stream's ar_link inside its ar_call (stream.h), reference
 *     counted between the filter and the posted task's completion sink.
 *   - the ar_task: the host reference is owned by the worker side and
 *     released on the worker (`scheduled`, or destroy through ar_call_end);
 *     the runtime's reference is the core's business.
 *   - the queue reference from ar_bridge_resolve is the filter's until the
 *     post (a posted task holds its own) or destroy.
 *   - a multi-slice request body is gathered into a malloc'ed buffer, freed
 *     right after the post; ar_task_new copies it.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "envoy_mode.h"
#include "stream.h"

#define HDR_RC "x-aioresty-rc"
#define HDR_NIL "x-aioresty-nil"

typedef struct bridge_config {
    ar_mode_base base;
} bridge_config;

typedef struct bridge_filter {
    ar_mode_base base;
    void *fe;                   /* Envoy's filter pointer */
    ar_call call;               /* the one call of the stream (stream.h) */
    ar_queue *q;                /* resolved at the headers; ours until the post */
    char method[AR_METHOD_MAX + 1];
    size_t method_len;
} bridge_filter;

/* x-aioresty-error: code, and the words lua/aioresty/envoy.lua returns as
 * the call's error in the body (the core's ar_strerror for posting errors). */
static void reply_error(void *fe, uint32_t status, const char *code, const char *text)
{
    ar_reply_error(fe, status, code, text, "aioresty_bridge_error");
}

/* The filter's queue reference (from ar_bridge_resolve) ends here: posted,
 * failed or abandoned, the queue is used once. */
static void drop_queue(bridge_filter *f)
{
    if (f->q) ar_queue_unref(f->q);
    f->q = NULL;
}

/* A refused call: 4xx, and at most one log line per second (counted), so a
 * flood from outside cannot fill the log. */
static void bridge_refused(void *fe, uint32_t status, const char *code, const char *text,
                           const char *what)
{
    static atomic_long last_sec, skipped;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long now = (long)ts.tv_sec, prev = atomic_load(&last_sec);
    if (now != prev && atomic_compare_exchange_strong(&last_sec, &prev, now)) {
        long n = atomic_exchange(&skipped, 0);
        ar_envoy_log(ENV_LOG_WARN, "aioresty: bridge refused %s (%u %s)%s%ld more in the last second",
                     what, status, code, n ? "; " : "", n);
    } else {
        atomic_fetch_add(&skipped, 1);
    }
    reply_error(fe, status, code, text);
}

/* Posts the task with the request bytes `req` (copied by the core); no
 * timeout of the module's: the Lua caller's httpCall timeout resets the
 * stream. */
static void post_call(bridge_filter *f, const char *req, size_t req_len)
{
    int rc = ar_call_post(&f->call, f->fe, f->q, f->method, f->method_len, req, req_len, 0);
    drop_queue(f);                                      /* a posted task holds its own */
    if (rc != AR_OK) reply_error(f->fe, 503, ar_post_error_code(rc), ar_strerror(rc));
}

/* Reads the whole buffered request body and posts it. */
static void post_with_body(bridge_filter *f)
{
    env_buf one;
    size_t total;
    if (ar_body_one(f->fe, AR_DIR_REQUEST, &one, &total)) {
        post_call(f, one.ptr, one.length);              /* common case: no copy here */
        return;
    }
    /* several slices: gather them (owned here, freed below; the core copies) */
    char *buf = malloc(total ? total : 1);
    size_t n = buf ? ar_body_copy(f->fe, AR_DIR_REQUEST, buf, total) : SIZE_MAX;
    if (n == SIZE_MAX) {
        free(buf);
        drop_queue(f);
        reply_error(f->fe, 503, "nomem", ar_strerror(AR_ENOMEM));
        return;
    }
    post_call(f, buf, n);
    free(buf);
}

/* ------------------------------------------------------------ mode */

static void *bridge_config_new(void *cfg_envoy, env_buf conf)
{
    (void)cfg_envoy;
    if (conf.length && !(conf.length == 6 && memcmp(conf.ptr, "bridge", 6) == 0)) {
        ar_envoy_log(ENV_LOG_ERROR, "aioresty: the bridge takes no filter_config, got '%.*s'",
                     (int)conf.length, conf.ptr);
        return NULL;
    }
    bridge_config *c = calloc(1, sizeof *c);
    if (c) c->base.mode = &ar_mode_bridge;
    return c;
}

static void bridge_config_destroy(void *cfg)
{
    free(cfg);
}

static void *bridge_filter_new(void *cfg, void *fe)
{
    (void)cfg;
    bridge_filter *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->base.mode = &ar_mode_bridge;
    f->fe = fe;
    return f;
}

/* The request side is the call; the local reply needs no response hooks. */
static env_headers_status bridge_headers(void *fe, void *fm, ar_dir dir, bool eos)
{
    bridge_filter *f = fm;
    env_buf qv = {NULL, 0}, mv = {NULL, 0};
    if (dir != AR_DIR_REQUEST) return ENV_HEADERS_CONTINUE;
    f->fe = fe;
    /* :authority = the queue, :path = "/" method */
    envoy_dynamic_module_callback_http_get_header(fe, ENV_HDR_REQUEST, MB(":authority"), &qv, 0, NULL);
    envoy_dynamic_module_callback_http_get_header(fe, ENV_HDR_REQUEST, MB(":path"), &mv, 0, NULL);
    if (mv.ptr && mv.length >= 1 && mv.ptr[0] == '/') {
        mv.ptr++;                                       /* "/" alone: the method "" (rt(req)) */
        mv.length--;
    } else {
        mv.ptr = NULL;
    }
    if (!mv.ptr || mv.length >= sizeof f->method || memchr(mv.ptr, '\0', mv.length)) {
        bridge_refused(fe, 400, "bad-request", "bad bridge request", "a malformed call");
        return ENV_HEADERS_STOP_ITERATION;
    }
    int why = 0;
    f->q = qv.ptr ? ar_bridge_resolve(qv.ptr, qv.length, &why) : NULL;
    if (!f->q) {
        if (why == AR_BRIDGE_UNKNOWN)
            bridge_refused(fe, 404, "unknown-runtime", ar_strerror(AR_ECLOSED),
                           "no such runtime (unloaded?)");
        else if (why == AR_BRIDGE_FORBIDDEN)
            bridge_refused(fe, 403, "forbidden", "bridge call refused (wrong secret)",
                           "a call without this process's secret");
        else
            bridge_refused(fe, 400, "bad-request", "bad bridge request", "a malformed call");
        return ENV_HEADERS_STOP_ITERATION;
    }
    memcpy(f->method, mv.ptr, mv.length);
    f->method[mv.length] = '\0';
    f->method_len = mv.length;
    if (eos) post_call(f, NULL, 0);
    return ENV_HEADERS_STOP_ITERATION;
}

static env_body_status bridge_body(void *fe, void *fm, ar_dir dir, bool eos)
{
    bridge_filter *f = fm;
    if (dir != AR_DIR_REQUEST) return ENV_BODY_CONTINUE;
    f->fe = fe;
    if (!f->q) return ENV_BODY_STOP_NO_BUFFER;          /* already answered or posted */
    if (!eos) return ENV_BODY_STOP_BUFFER;
    post_with_body(f);
    return ENV_BODY_STOP_BUFFER;
}

static env_trailers_status bridge_trailers(void *fe, void *fm, ar_dir dir)
{
    bridge_filter *f = fm;
    if (dir != AR_DIR_REQUEST) return ENV_TRAILERS_CONTINUE;
    f->fe = fe;
    if (f->q) post_with_body(f);                        /* trailers end the request */
    return ENV_TRAILERS_STOP;
}

static void bridge_scheduled(void *fe, void *fm, uint64_t id)
{
    bridge_filter *f = fm;
    ar_task *t = NULL;
    if (ar_call_event(&f->call, id, &t) != AR_EVENT_ANSWER) return;
    /* `t` is now this function's to release */
    int rc = ar_task_rc(t);
    char rcs[16];
    int rcl = snprintf(rcs, sizeof rcs, "%d", rc);
    size_t len = 0;
    const char *rsp = ar_task_response(t, &len);
    mod_hdr h[2];
    size_t nh = 0;
    if (rc != 0) h[nh++] = (mod_hdr){HDR_RC, sizeof(HDR_RC) - 1, rcs, (size_t)rcl};
    if (!rsp) h[nh++] = (mod_hdr){HDR_NIL, sizeof(HDR_NIL) - 1, "1", 1};
    /* Envoy copies the body; the filter may be destroyed inside this call,
     * so `f` is not touched after it. */
    envoy_dynamic_module_callback_http_send_response(fe, 200, h, nh,
                                                     (mod_buf){rsp ? rsp : "", rsp ? len : 0},
                                                     MB("aioresty_bridge"));
    ar_task_release(t);
}

static void bridge_filter_destroy(void *fm)
{
    bridge_filter *f = fm;
    if (!f) return;
    drop_queue(f);                                      /* never posted (reset early) */
    /* the waiter is gone (timeout, reset): the runtime is told, our ref dropped */
    ar_call_end(&f->call);
    free(f);
}

const ar_mode ar_mode_bridge = {
    .name = "bridge",
    .config_new = bridge_config_new,
    .config_destroy = bridge_config_destroy,
    .filter_new = bridge_filter_new,
    .filter_destroy = bridge_filter_destroy,
    .headers = bridge_headers,
    .body = bridge_body,
    .trailers = bridge_trailers,
    .scheduled = bridge_scheduled,
};
