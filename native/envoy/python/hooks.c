/*
 * python/hooks.c - filter mode "python" of libaioresty_envoy.so
 * (envoy_mode.h): the stream's state machine.  An Envoy HTTP filter written
 * as `async def` Python (aioresty/filters.py); configs in python/config.c.
 *
 * Python never runs on an Envoy worker thread.  Per stream:
 *
 *   request_headers (worker)  snapshot (msgpack) -> task "__filter_request"
 *                             posted to the App's runtime queue;
 *                             StopIteration (body, if wanted, is buffered
 *                             first: StopIterationAndBuffer up to the limit)
 *   runtime thread            runs the on_request hooks, answers; the
 *                             completion sink commits the http-filter
 *                             scheduler
 *   scheduled (worker)        applies the answer: header set/add/remove,
 *                             body replacement, then continue_decoding, or
 *                             send_response for a local reply
 *   response_headers ...      the same with "__filter_response" and
 *                             continue_encoding
 *
 * `timeout` is sent to the runtime, which cancels the hook chain after it;
 * the module also arms its own timeout (ar_call_post, timeouts.h) at timeout
 * + HOST_TIMEOUT_MARGIN_MS (timeout is never 0: the config's, else the
 * App's), so a runtime that never answers still ends in the failure policy
 * ("timeout"), and the task is aborted.
 *
 * Wire formats (aioresty/filters.py is the other side):
 *   snapshot  msgpack [phase(1 req|2 resp), timeout_ms, [k, v, k, v...],
 *             body (bin) | nil (no body: headers ended the stream, or the
 *             app did not ask for it)]; pseudo-headers (:method, :path,
 *             :status...) are among the headers.
 *   answer    rc 0 and an empty answer: continue unchanged;
 *             msgpack [0, [op, k, v, ...], body|nil]  op 0 set, 1 add, 2 remove;
 *             msgpack [1, status, [k, v, ...], body]   local reply.
 *             rc != 0 (exception, timeout, cancelled): the failure policy.
 *
 * Threads and ownership:
 *   - py_filter is created, used and freed on its worker thread only.  What
 *     the runtime thread needs is the stream's ar_link inside its ar_call
 *     (stream.h); a reset stream calls destroy and never `scheduled`.
 *   - the ar_task: the host reference belongs to the worker side and is
 *     released on the worker (`scheduled`, or destroy through ar_call_end,
 *     which also aborts it so the runtime cancels the handler).  The answer
 *     bytes are the task's; read before the release.
 *   - the phase's timeout: freed by exactly one of the timer thread or
 *     ar_timeout_cancel (stream.c).  A timeout for a task that is already
 *     answered is ignored (the answer's event is on its way); a timeout that
 *     wins abandons the task, and the late answer's event is stale.
 *   - snapshot buffers are malloc'ed and freed here; ar_task_new copies.
 *   - the py_app is borrowed from the config or the route (python_mode.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msgpack.h"
#include "python_mode.h"
#include "timeouts.h"

/* The module's own bound of a phase is timeout + this margin: the runtime
 * enforces `timeout` itself (and its answer, rc 3 with the hook's traceback
 * logged, is the nicer one); the module's timer only fires when the runtime
 * did not answer in time (its loop is blocked, it is stuck). */
#define HOST_TIMEOUT_MARGIN_MS 250

/* the phase of the wire format: 1 request, 2 response */
#define PHASE(dir) ((dir) == AR_DIR_REQUEST ? 1 : 2)
#define HDRS(dir) ((dir) == AR_DIR_REQUEST ? ENV_HDR_REQUEST : ENV_HDR_RESPONSE)
#define DIR_NAME(dir) ((dir) == AR_DIR_REQUEST ? "request" : "response")

/* stream states */
enum {
    ST_IDLE = 0,
    ST_REQ_BUFFERING,   /* waiting for the end of the request body */
    ST_REQ_PENDING,     /* request task posted */
    ST_REQ_DONE,        /* request side finished (continued) */
    ST_RESP_BUFFERING,
    ST_RESP_PENDING,
    ST_RESP_DONE,
    ST_LOCAL_REPLY,     /* we answered locally: nothing more to do */
};
/* the response side's state of a request side's one (BUFFERING, PENDING, DONE) */
#define ST_OF(dir, req_state) \
    ((dir) == AR_DIR_REQUEST ? (req_state) : (req_state) + ST_RESP_BUFFERING - ST_REQ_BUFFERING)

typedef struct py_filter {
    ar_mode_base base;
    void *fe;                /* worker only */
    const py_app *app;       /* NULL: disabled here; worker only */
    int state;               /* worker only */
    ar_call call;            /* the pending phase's call (stream.h) */
} py_filter;

static void local_reply(py_filter *f, uint32_t status, const char *code, const char *body)
{
    f->state = ST_LOCAL_REPLY;
    ar_reply_error(f->fe, status, code, body, "aioresty_python_filter");
}

/* A phase is over without a local reply: the stream goes on (`f` may be
 * gone after this call). */
static void phase_done(py_filter *f, ar_dir dir)
{
    f->state = ST_OF(dir, ST_REQ_DONE);
    ar_stream_continue(f->fe, dir);
}

static void raise_buffer_limit(void *fe, size_t limit)
{
    if (envoy_dynamic_module_callback_http_get_buffer_limit(fe) < limit)
        envoy_dynamic_module_callback_http_set_buffer_limit(fe, limit);
}

/* Appends the whole body (buffered, then the chunk being received) as bin. */
static void put_body(wbuf *w, void *fe, ar_dir dir)
{
    size_t total = ar_body_size(fe, dir);
    mp_bin_header(w, total);
    wb_reserve(w, total);
    if (w->oom) return;
    size_t n = ar_body_copy(fe, dir, w->p + w->len, total);
    if (n == SIZE_MAX) {
        w->oom = 1;
        return;
    }
    /* keep the declared length honest if Envoy gave fewer bytes */
    memset(w->p + w->len + n, 0, total - n);
    w->len += total;
}

/* Builds the snapshot and posts it.  with_body: 0 nil, 1 the body.  Returns
 * 1 when the hook should continue (posting failed, fail open), 0 when the
 * phase is pending, -1 after a local reply. */
static int post_phase(py_filter *f, ar_dir dir, int with_body)
{
    void *fe = f->fe;
    size_t nh = envoy_dynamic_module_callback_http_get_headers_size(fe, HDRS(dir));
    env_hdr hs_small[32];
    env_hdr *hs = nh <= 32 ? hs_small : calloc(nh, sizeof *hs);
    wbuf w = {0};
    int rc = AR_ENOMEM;
    if (!hs) goto failed;
    if (nh && !envoy_dynamic_module_callback_http_get_headers(fe, HDRS(dir), hs)) nh = 0;
    mp_array(&w, 4);
    mp_uint(&w, (uint64_t)PHASE(dir));
    mp_uint(&w, f->app->timeout_ms);
    mp_array(&w, nh * 2);
    for (size_t i = 0; i < nh; i++) {
        mp_str(&w, hs[i].key_ptr, hs[i].key_length);
        mp_str(&w, hs[i].value_ptr, hs[i].value_length);
    }
    if (hs != hs_small) free(hs);
    if (with_body) put_body(&w, fe, dir);
    else wb_byte(&w, 0xc0);
    if (w.oom) goto failed;

    const char *method = dir == AR_DIR_REQUEST ? "__filter_request" : "__filter_response";
    /* bounded even when the runtime never answers */
    rc = ar_call_post(&f->call, fe, f->app->q, method, strlen(method), w.p, w.len,
                      f->app->timeout_ms + HOST_TIMEOUT_MARGIN_MS);
    free(w.p);
    if (rc == AR_OK) {
        f->state = ST_OF(dir, ST_REQ_PENDING);
        return 0;
    }
    w.p = NULL;
failed:
    free(w.p);
    ar_envoy_log(ENV_LOG_WARN, "aioresty: python filter '%s': cannot post (%s)", f->app->spec,
                 ar_post_error_code(rc));
    if (f->app->fail_open) {
        f->state = ST_OF(dir, ST_REQ_DONE);
        return 1;  /* continue */
    }
    local_reply(f, 500, ar_post_error_code(rc), "aioresty filter unavailable\n");
    return -1;
}

/* ------------------------------------------------------------ hooks */

static const py_app *resolve_app(py_filter *f)
{
    const py_config *r = envoy_dynamic_module_callback_get_most_specific_route_config(f->fe);
    if (r && r->base.mode == &ar_mode_python) return r->disabled ? NULL : &r->app;
    return f->app;
}

static void *py_filter_new(void *cfg, void *fe)
{
    py_config *c = cfg;
    py_filter *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    f->base.mode = &ar_mode_python;
    f->fe = fe;
    f->app = &c->app;
    return f;
}

/* A body chunk of `dir` while buffering it for the phase. */
static env_body_status buffering_body(py_filter *f, ar_dir dir, bool eos)
{
    if (ar_body_size(f->fe, dir) > f->app->body_limit) {
        if (dir == AR_DIR_REQUEST) local_reply(f, 413, "body-limit", "request body too large\n");
        else local_reply(f, 502, "body-limit", "upstream response body too large\n");
        return ENV_BODY_STOP_NO_BUFFER;
    }
    if (!eos) return ENV_BODY_STOP_BUFFER;
    return post_phase(f, dir, 1) > 0 ? ENV_BODY_CONTINUE : ENV_BODY_STOP_BUFFER;
}

/* The headers of `dir`: nothing to do, post now, or buffer the body first.
 * The request's route picks the app (python_mode.h); a response is left
 * alone after our local reply, while our request task is pending (Envoy
 * answers locally meanwhile), and when the request never came through. */
static env_headers_status py_headers(void *fe, void *fm, ar_dir dir, bool eos)
{
    py_filter *f = fm;
    f->fe = fe;
    if (dir == AR_DIR_REQUEST) {
        f->app = resolve_app(f);
        if (!f->app || !f->app->on_request) {
            f->state = ST_REQ_DONE;
            return ENV_HEADERS_CONTINUE;
        }
    } else if (f->state == ST_IDLE || f->state == ST_LOCAL_REPLY || f->state >= ST_RESP_BUFFERING ||
               f->call.task || !f->app || !f->app->on_response) {
        /* ST_IDLE: the request never reached the filter - Envoy answers a request
         * it could not parse (400, 431) and resets the stream right after, so
         * the reply must go out as it is, never wait for a hook */
        return ENV_HEADERS_CONTINUE;
    }
    const py_app *a = f->app;
    int wants_body = dir == AR_DIR_REQUEST ? a->request_body : a->response_body;
    if (wants_body && !eos) {
        raise_buffer_limit(fe, a->body_limit);
        f->state = ST_OF(dir, ST_REQ_BUFFERING);
        return ENV_HEADERS_STOP_ITERATION;
    }
    return post_phase(f, dir, 0) > 0 ? ENV_HEADERS_CONTINUE : ENV_HEADERS_STOP_ITERATION;
}

/* A body chunk of `dir`: buffered for the phase, held while it is pending.
 * After our local reply the request body is dropped (the response is ours). */
static env_body_status py_body(void *fe, void *fm, ar_dir dir, bool eos)
{
    py_filter *f = fm;
    f->fe = fe;
    if (f->state == ST_OF(dir, ST_REQ_BUFFERING)) return buffering_body(f, dir, eos);
    if (f->state == ST_OF(dir, ST_REQ_PENDING)) return ENV_BODY_STOP_BUFFER; /* until the answer */
    if (f->state == ST_LOCAL_REPLY && dir == AR_DIR_REQUEST) return ENV_BODY_STOP_NO_BUFFER;
    return ENV_BODY_CONTINUE;
}

/* Trailers of `dir` end its body: the buffered phase is posted now. */
static env_trailers_status py_trailers(void *fe, void *fm, ar_dir dir)
{
    py_filter *f = fm;
    f->fe = fe;
    if (f->state == ST_OF(dir, ST_REQ_BUFFERING))
        return post_phase(f, dir, 1) > 0 ? ENV_TRAILERS_CONTINUE : ENV_TRAILERS_STOP;
    if (f->state == ST_OF(dir, ST_REQ_PENDING) ||
        (f->state == ST_LOCAL_REPLY && dir == AR_DIR_REQUEST))
        return ENV_TRAILERS_STOP;
    return ENV_TRAILERS_CONTINUE;
}

/* ------------------------------------------------------------ answers */

static void replace_body(void *fe, ar_dir dir, mod_buf body)
{
    env_body_type bt = dir == AR_DIR_REQUEST ? ENV_BODY_BUFFERED_REQUEST : ENV_BODY_BUFFERED_RESPONSE;
    size_t old = envoy_dynamic_module_callback_http_get_body_size(fe, bt);
    if (old) envoy_dynamic_module_callback_http_drain_body(fe, bt, old);
    if (body.length) envoy_dynamic_module_callback_http_append_body(fe, bt, body);
    char num[24];
    int n = snprintf(num, sizeof num, "%zu", body.length);
    envoy_dynamic_module_callback_http_set_header(fe, HDRS(dir), MB("content-length"),
                                                  (mod_buf){num, (size_t)n});
    envoy_dynamic_module_callback_http_set_header(fe, HDRS(dir), MB("transfer-encoding"),
                                                  (mod_buf){NULL, 0});
}

/* Applies a successful answer.  Returns 1 when it sent a local reply. */
static int apply_answer(py_filter *f, ar_dir dir, const char *ans, size_t len)
{
    void *fe = f->fe;
    env_header_type ht = HDRS(dir);
    rbuf r = {(const unsigned char *)ans, (const unsigned char *)ans + len, 0};
    size_t n = mp_read_array(&r);
    uint64_t kind = mp_read_uint(&r);
    if (r.bad || n < 3) goto bad;
    if (kind == 0) {
        size_t nops = mp_read_array(&r);
        int reroute = 0;
        if (r.bad || nops % 3) goto bad;
        for (size_t i = 0; i < nops; i += 3) {
            uint64_t op = mp_read_uint(&r);
            mod_buf k = mp_read_bytes(&r);
            mod_buf v = mp_read_bytes(&r);
            if (r.bad || !k.ptr || !k.length) goto bad;
            if (k.ptr[0] == ':' || (k.length == 4 && memcmp(k.ptr, "host", 4) == 0)) reroute = 1;
            if (op == 0) envoy_dynamic_module_callback_http_set_header(fe, ht, k, v);
            else if (op == 1) envoy_dynamic_module_callback_http_add_header(fe, ht, k, v);
            else envoy_dynamic_module_callback_http_set_header(fe, ht, k, (mod_buf){NULL, 0});
        }
        mod_buf body = mp_read_bytes(&r);
        if (r.bad) goto bad;
        if (body.ptr) replace_body(fe, dir, body);
        /* a new :path / authority: the router picks the route again */
        if (reroute && dir == AR_DIR_REQUEST) envoy_dynamic_module_callback_http_clear_route_cache(fe);
        return 0;
    }
    if (kind == 1 && n >= 4) {
        uint64_t status = mp_read_uint(&r);
        size_t nh = mp_read_array(&r);
        if (r.bad || nh % 2 || nh > 2 * 256 || status < 100 || status > 999) goto bad;
        mod_hdr hs[256];
        for (size_t i = 0; i < nh / 2; i++) {
            mod_buf k = mp_read_bytes(&r);
            mod_buf v = mp_read_bytes(&r);
            hs[i] = (mod_hdr){k.ptr ? k.ptr : "", k.length, v.ptr ? v.ptr : "", v.length};
        }
        mod_buf body = mp_read_bytes(&r);
        if (r.bad) goto bad;
        f->state = ST_LOCAL_REPLY;
        /* Envoy copies everything; `f` may be gone after this call */
        envoy_dynamic_module_callback_http_send_response(
            fe, (uint32_t)status, hs, nh / 2, (mod_buf){body.ptr ? body.ptr : "", body.length},
            MB("aioresty_python_filter"));
        return 1;
    }
bad:
    ar_envoy_log(ENV_LOG_ERROR, "aioresty: python filter '%s': malformed answer (%zu bytes)",
                 f->app->spec, len);
    if (f->app->fail_open) return 0;
    local_reply(f, 500, "answer", "aioresty filter error\n");
    return 1;
}

/* The module's timer fired before the runtime answered: the task was
 * aborted (the runtime cancels the hooks when it gets to them), its late
 * answer is stale, and the failure policy applies as for rc 3. */
static void host_timeout(py_filter *f, ar_dir dir)
{
    ar_envoy_log(ENV_LOG_WARN,
                 "aioresty: python filter '%s' (%s): no answer within %u ms (+%d ms): timeout",
                 f->app->spec, DIR_NAME(dir), f->app->timeout_ms, HOST_TIMEOUT_MARGIN_MS);
    if (!f->app->fail_open) local_reply(f, 500, "timeout", "aioresty filter failed\n");
    else phase_done(f, dir);
}

static void py_scheduled(void *fe, void *fm, uint64_t id)
{
    py_filter *f = fm;
    ar_dir dir = f->state == ST_REQ_PENDING ? AR_DIR_REQUEST : AR_DIR_RESPONSE;
    ar_task *t = NULL;
    f->fe = fe;
    switch (ar_call_event(&f->call, id, &t)) {
    case AR_EVENT_TIMEOUT:
        host_timeout(f, dir);
        return;
    case AR_EVENT_ANSWER:
        break;
    default:
        return;
    }
    /* `t` is this function's to release */
    int rc = ar_task_rc(t);
    size_t len = 0;
    const char *ans = ar_task_response(t, &len);
    int replied = 0;
    if (rc != 0) {
        /* the runtime logged it: one line (rate-limited) with the hook's traceback */
        if (!f->app->fail_open) {
            local_reply(f, 500, rc == AR_RC_TIMEOUT ? "timeout" : "error", "aioresty filter failed\n");
            replied = 1;
        }
    } else if (ans && len) {
        replied = apply_answer(f, dir, ans, len);
    }
    if (!replied) phase_done(f, dir);  /* `f` may be gone after this call */
    ar_task_release(t);
}

static void py_filter_destroy(void *fm)
{
    py_filter *f = fm;
    ar_call_end(&f->call);  /* the stream is gone (client abort, reset): the runtime cancels */
    free(f);
}

const ar_mode ar_mode_python = {
    .name = "python",
    .config_new = py_config_new,
    .config_destroy = py_config_destroy,
    .route_new = py_route_new,
    .route_destroy = py_config_destroy,
    .filter_new = py_filter_new,
    .filter_destroy = py_filter_destroy,
    .headers = py_headers,
    .body = py_body,
    .trailers = py_trailers,
    .scheduled = py_scheduled,
};
