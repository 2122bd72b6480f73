/*
 * pyfilter.c - filter mode "python" of libaioresty_envoy.so (envoy_mode.h):
 * an Envoy HTTP filter written as `async def` Python (aioresty/filters.py).
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
 * Configuration (filter_config, a StringValue; whitespace-separated tokens):
 *     "pkg.mod:app [fail=open|closed] [body_limit=BYTES] [timeout=SECONDS]"
 * `timeout` (default 10 s) is sent to the runtime, which cancels the hook
 * chain after it; the module also arms its own timer (timeouts.c) at
 * timeout + HOST_TIMEOUT_MARGIN_MS (timeout=0: no runtime-side timeout, the
 * module's bound is AR_DEFAULT_TIMEOUT_MS), so a runtime that never answers
 * still ends in the failure policy ("timeout"), and the task is aborted.
 * The app is loaded once per filter config on the main thread
 * (ar_runtime_load("aioresty", spec)); the runtime is then asked which hooks
 * the app has ("__filter_info") so a stream only pays for what is used.
 * Per-route (DynamicModuleFilterPerRoute, per_route_config_name "python"):
 *     "disabled"  or  "app=pkg.mod:other [fail=...] [body_limit=...] [timeout=...]"
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
 *   info      "RBSC": four '0'/'1' - on_request, request body, on_response,
 *             response body.
 *
 * Threads and ownership:
 *   - py_filter is created, used and freed on its worker thread only.  What
 *     the runtime thread needs (the scheduler, the "destroyed" state) is the
 *     stream's ar_link (stream_link.h), created at the first post and
 *     reference counted between the filter and each posted task's sink; a
 *     reset stream calls destroy and never `scheduled`.
 *   - the ar_task: the host reference belongs to the worker side and is
 *     released on the worker (`scheduled`, or destroy - which also aborts it
 *     so the runtime cancels the handler); the runtime's reference is the
 *     core's.  The answer bytes are the task's; read before the release.
 *   - snapshot buffers are malloc'ed and freed here; ar_task_new copies.
 *   - the phase's timer (timeouts.h): its entry and the entry's link
 *     reference are freed by exactly one of the timer thread (after it
 *     committed event `task id << 1 | 1`) or ar_timeout_cancel (worker: on
 *     the answer, or in destroy).  A timeout event for a task that is
 *     already answered is ignored (the answer's event is on its way); a
 *     timeout that wins aborts the task and releases the host reference on
 *     the worker, and the late answer's event is ignored (stale id).
 *   - py_app (queue reference from ar_runtime_load, spec copy) belongs to
 *     its py_config / py_route, freed in config_destroy / per-route destroy
 *     (main thread).  Envoy keeps both alive for every stream using them.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aioresty_core.h"
#include "envoy_mode.h"
#include "stream_link.h"
#include "timeouts.h"

#define EXPORT __attribute__((visibility("default")))
#define MB(s) ((mod_buf){(s), sizeof(s) - 1})

#define DEFAULT_BODY_LIMIT (1024 * 1024)
#define DEFAULT_TIMEOUT_MS 10000
/* The module's own bound of a phase is timeout + this margin: the runtime
 * enforces `timeout` itself (and its answer, rc 3 with the hook's traceback
 * logged, is the nicer one); the module's timer only fires when the runtime
 * did not answer in time (its loop is blocked, it is stuck). */
#define HOST_TIMEOUT_MARGIN_MS 250
#define INFO_WAIT_SECONDS 60
#define ROUTE_MAGIC 0x70795274u /* "pyRt" */

enum { EV_REQUEST = 1, EV_RESPONSE = 2 };
enum { PHASE_REQUEST = 1, PHASE_RESPONSE = 2 };

/* one App binding: the filter config's, or a per-route override */
typedef struct py_app {
    ar_queue *q;             /* own reference (ar_runtime_load); unref'd on destroy */
    char *spec;              /* malloc'ed copy */
    int on_request, request_body, on_response, response_body;
    int fail_open;
    size_t body_limit;
    uint32_t timeout_ms;
} py_app;

typedef struct py_config {
    ar_mode_base base;
    py_app app;
} py_config;

typedef struct py_route {
    uint32_t magic;
    int disabled;
    int has_app;
    py_app app;
} py_route;

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

typedef struct py_filter {
    ar_mode_base base;
    void *fe;                /* worker only */
    const py_app *app;       /* NULL: disabled here; worker only */
    int state;               /* worker only */
    ar_link *link;           /* the filter's reference; NULL before the first post */
    ar_task *task;           /* pending/answered task, host reference; worker only */
    uint64_t task_id;        /* ar_task_id(task): events are id << 1 (answer), | 1 (timeout) */
    int has_timer;           /* the module's timer of `task` is armed; worker only */
} py_filter;

/* ------------------------------------------------------------ refcount, sink */


/* ------------------------------------------------------------ msgpack out */

typedef struct wbuf {
    char *p;
    size_t len, cap;
    int oom;
} wbuf;

static void wb_reserve(wbuf *w, size_t n)
{
    if (w->oom || w->len + n <= w->cap) return;
    size_t cap = w->cap ? w->cap : 1024;
    while (cap < w->len + n) cap *= 2;
    char *np = realloc(w->p, cap);
    if (!np) {
        w->oom = 1;
        return;
    }
    w->p = np;
    w->cap = cap;
}

static void wb_put(wbuf *w, const void *d, size_t n)
{
    wb_reserve(w, n);
    if (w->oom) return;
    if (n) memcpy(w->p + w->len, d, n);
    w->len += n;
}

static void wb_byte(wbuf *w, unsigned char b)
{
    wb_put(w, &b, 1);
}

static void wb_be(wbuf *w, uint64_t v, int bytes)
{
    unsigned char b[8];
    for (int i = 0; i < bytes; i++) b[i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
    wb_put(w, b, (size_t)bytes);
}

static void mp_array(wbuf *w, size_t n)
{
    if (n < 16) {
        wb_byte(w, (unsigned char)(0x90 | n));
    } else if (n < 65536) {
        wb_byte(w, 0xdc);
        wb_be(w, n, 2);
    } else {
        wb_byte(w, 0xdd);
        wb_be(w, n, 4);
    }
}

static void mp_uint(wbuf *w, uint64_t v)
{
    if (v < 128) {
        wb_byte(w, (unsigned char)v);
    } else if (v <= 0xffffffffu) {
        wb_byte(w, 0xce);
        wb_be(w, v, 4);
    } else {
        wb_byte(w, 0xcf);
        wb_be(w, v, 8);
    }
}

static void mp_str(wbuf *w, const char *s, size_t n)
{
    if (n < 32) {
        wb_byte(w, (unsigned char)(0xa0 | n));
    } else if (n < 256) {
        wb_byte(w, 0xd9);
        wb_be(w, n, 1);
    } else if (n < 65536) {
        wb_byte(w, 0xda);
        wb_be(w, n, 2);
    } else {
        wb_byte(w, 0xdb);
        wb_be(w, n, 4);
    }
    wb_put(w, s, n);
}

static void mp_bin_header(wbuf *w, size_t n)
{
    if (n < 256) {
        wb_byte(w, 0xc4);
        wb_be(w, n, 1);
    } else if (n < 65536) {
        wb_byte(w, 0xc5);
        wb_be(w, n, 2);
    } else {
        wb_byte(w, 0xc6);
        wb_be(w, n, 4);
    }
}

/* ------------------------------------------------------------ msgpack in */

typedef struct rbuf {
    const unsigned char *p, *end;
    int bad;
} rbuf;

static uint64_t rb_be(rbuf *r, int bytes)
{
    if (r->bad || r->end - r->p < bytes) {
        r->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = (v << 8) | r->p[i];
    r->p += bytes;
    return v;
}

static int rb_peek(rbuf *r)
{
    if (r->bad || r->p >= r->end) {
        r->bad = 1;
        return -1;
    }
    return *r->p;
}

static size_t mp_read_array(rbuf *r)
{
    int c = rb_peek(r);
    if (c < 0) return 0;
    r->p++;
    if ((c & 0xf0) == 0x90) return (size_t)(c & 0x0f);
    if (c == 0xdc) return (size_t)rb_be(r, 2);
    if (c == 0xdd) return (size_t)rb_be(r, 4);
    r->bad = 1;
    return 0;
}

static uint64_t mp_read_uint(rbuf *r)
{
    int c = rb_peek(r);
    if (c < 0) return 0;
    r->p++;
    if (c < 0x80) return (uint64_t)c;
    if (c == 0xcc) return rb_be(r, 1);
    if (c == 0xcd) return rb_be(r, 2);
    if (c == 0xce) return rb_be(r, 4);
    if (c == 0xcf) return rb_be(r, 8);
    r->bad = 1;
    return 0;
}

/* str or bin; nil gives ptr NULL.  Borrowed from the answer. */
static mod_buf mp_read_bytes(rbuf *r)
{
    mod_buf b = {NULL, 0};
    int c = rb_peek(r);
    if (c < 0) return b;
    r->p++;
    size_t n;
    if (c == 0xc0) return b;
    if ((c & 0xe0) == 0xa0) n = (size_t)(c & 0x1f);
    else if (c == 0xd9 || c == 0xc4) n = (size_t)rb_be(r, 1);
    else if (c == 0xda || c == 0xc5) n = (size_t)rb_be(r, 2);
    else if (c == 0xdb || c == 0xc6) n = (size_t)rb_be(r, 4);
    else {
        r->bad = 1;
        return b;
    }
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return b;
    }
    b.ptr = (const char *)r->p;
    b.length = n;
    r->p += n;
    return b;
}

/* ------------------------------------------------------------ options */

static int parse_options(const char *conf, size_t len, py_app *a, int *disabled, int per_route,
                         char *err, size_t errlen)
{
    a->fail_open = 0;
    a->body_limit = DEFAULT_BODY_LIMIT;
    a->timeout_ms = DEFAULT_TIMEOUT_MS;
    char *copy = malloc(len + 1);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(copy, conf, len);
    copy[len] = '\0';
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, " \t\r\n;", &save); tok; tok = strtok_r(NULL, " \t\r\n;", &save)) {
        char *eq = strchr(tok, '=');
        const char *val = eq ? eq + 1 : NULL;
        if (eq) *eq = '\0';
        if (!eq && strcmp(tok, "disabled") == 0 && per_route) {
            *disabled = 1;
        } else if (!eq || strcmp(tok, "app") == 0) {
            const char *spec = eq ? val : tok;
            free(a->spec);
            a->spec = strdup(spec);
            if (!a->spec || !*spec) {
                snprintf(err, errlen, "bad app spec");
                rc = -1;
                break;
            }
        } else if (strcmp(tok, "fail") == 0) {
            if (strcmp(val, "open") == 0) a->fail_open = 1;
            else if (strcmp(val, "closed") == 0) a->fail_open = 0;
            else {
                snprintf(err, errlen, "fail= expects open or closed, got '%s'", val);
                rc = -1;
                break;
            }
        } else if (strcmp(tok, "body_limit") == 0) {
            char *end = NULL;
            errno = 0;
            unsigned long long v = strtoull(val, &end, 10);
            if (errno || !end || *end || end == val || v > (1ull << 40)) {
                snprintf(err, errlen, "bad body_limit '%s'", val);
                rc = -1;
                break;
            }
            a->body_limit = (size_t)v;
        } else if (strcmp(tok, "timeout") == 0) {
            char *end = NULL;
            errno = 0;
            double v = strtod(val, &end);
            if (errno || !end || *end || end == val || !(v >= 0) || v > 86400) {
                snprintf(err, errlen, "bad timeout '%s' (seconds, 0 = none)", val);
                rc = -1;
                break;
            }
            a->timeout_ms = (uint32_t)(v * 1000.0 + 0.5);
            if (v > 0 && a->timeout_ms == 0) a->timeout_ms = 1;
        } else {
            snprintf(err, errlen, "unknown option '%s'", tok);
            rc = -1;
            break;
        }
    }
    free(copy);
    return rc;
}

/* ------------------------------------------------------------ app loading */

/* The info query's rendezvous: shared by config_new (waiting, main thread)
 * and the sink (runtime thread); freed by whichever drops the last ref. */
typedef struct info_wait {
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} info_wait;

static void info_unref(info_wait *w)
{
    if (atomic_fetch_sub_explicit(&w->refs, 1, memory_order_acq_rel) != 1) return;
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

static void on_info_complete(ar_task *t, void *ctx)
{
    (void)ctx;
    info_wait *w = ar_task_host_data(t);
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    info_unref(w);  /* the sink's reference */
}

static const ar_sink g_info_sink = {on_info_complete, NULL};

/* Loads the runtime of a->spec and asks which hooks the app has. */
static int app_load(py_app *a, char *err, size_t errlen)
{
    a->q = ar_runtime_load("aioresty", a->spec, 0, 0, err, errlen);
    if (!a->q) return -1;
    info_wait *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    atomic_init(&w->refs, 2);  /* waiter + sink */
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    ar_task *t = ar_task_new("__filter_info", 13, "", 0, &g_info_sink, w);
    if (!t) {
        info_unref(w);
        info_unref(w);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = ar_task_post(a->q, t);
    if (rc != AR_OK) {
        ar_task_release(t);
        info_unref(w);
        info_unref(w);
        snprintf(err, errlen, "runtime of '%s' refused the info query (%d)", a->spec, rc);
        return -1;
    }
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += INFO_WAIT_SECONDS;
    pthread_mutex_lock(&w->mu);
    while (!w->done) {
        if (pthread_cond_timedwait(&w->cv, &w->mu, &dl) == ETIMEDOUT) break;
    }
    int done = w->done;
    pthread_mutex_unlock(&w->mu);
    int out = -1;
    if (!done) {
        ar_task_abort(t);
        snprintf(err, errlen, "runtime of '%s' did not answer the info query in %ds", a->spec,
                 INFO_WAIT_SECONDS);
    } else if (ar_task_rc(t) != 0) {
        size_t n = 0;
        const char *m = ar_task_response(t, &n);
        snprintf(err, errlen, "info query failed: %.*s", (int)(m ? n : 0), m ? m : "");
    } else {
        size_t n = 0;
        const char *r = ar_task_response(t, &n);
        if (r && n == 4) {
            a->on_request = r[0] == '1';
            a->request_body = r[1] == '1';
            a->on_response = r[2] == '1';
            a->response_body = r[3] == '1';
            out = 0;
        } else {
            snprintf(err, errlen, "bad info answer (aioresty version mismatch?)");
        }
    }
    ar_task_release(t);
    info_unref(w);  /* the waiter's reference */
    return out;
}

static void app_free(py_app *a)
{
    if (a->q) ar_queue_unref(a->q);  /* the runtime stays: other configs may share it */
    a->q = NULL;
    free(a->spec);
    a->spec = NULL;
}

static int app_from_conf(py_app *a, env_buf conf, int per_route, int *disabled, const char *what)
{
    char err[512] = "";
    if (parse_options(conf.ptr ? conf.ptr : "", conf.ptr ? conf.length : 0, a, disabled,
                      per_route, err, sizeof err) != 0)
        goto fail;
    if (disabled && *disabled) return 0;
    if (!a->spec) {
        snprintf(err, sizeof err, "no app given (expected \"pkg.module:app [options]\")");
        goto fail;
    }
    if (app_load(a, err, sizeof err) != 0) goto fail;
    ar_envoy_log(ENV_LOG_INFO,
                 "aioresty: python filter %s '%s': on_request=%d (body %d) on_response=%d "
                 "(body %d) fail=%s body_limit=%zu timeout_ms=%u",
                 what, a->spec, a->on_request, a->request_body, a->on_response, a->response_body,
                 a->fail_open ? "open" : "closed", a->body_limit, a->timeout_ms);
    if (!a->on_request && !a->on_response)
        ar_envoy_log(ENV_LOG_WARN, "aioresty: app '%s' has no on_request/on_response hook",
                     a->spec);
    return 0;
fail:
    ar_envoy_log(ENV_LOG_ERROR, "aioresty: python filter %s '%.*s': %s", what,
                 (int)(conf.ptr ? conf.length : 0), conf.ptr ? conf.ptr : "", err);
    app_free(a);
    return -1;
}

static void *py_config_new(void *cfg_envoy, env_buf conf)
{
    (void)cfg_envoy;
    py_config *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->base.mode = &ar_mode_python;
    if (app_from_conf(&c->app, conf, 0, NULL, "config") != 0) {
        free(c);
        return NULL;
    }
    return c;
}

static void py_config_destroy(void *cfg)
{
    py_config *c = cfg;
    app_free(&c->app);
    free(c);
}

/* Per-route configs.  Only this mode uses them: the hooks dispatch on the
 * per_route_config_name and know "python" only. */
EXPORT const void *envoy_dynamic_module_on_http_filter_per_route_config_new(env_buf name,
                                                                            env_buf conf)
{
    if (!(name.length == 6 && memcmp(name.ptr, "python", 6) == 0)) {
        ar_envoy_log(ENV_LOG_ERROR,
                     "aioresty: per-route config '%.*s' unknown (known: python)",
                     (int)name.length, name.ptr);
        return NULL;
    }
    py_route *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->magic = ROUTE_MAGIC;
    if (app_from_conf(&r->app, conf, 1, &r->disabled, "route") != 0) {
        free(r);
        return NULL;
    }
    r->has_app = !r->disabled;
    return r;
}

EXPORT void envoy_dynamic_module_on_http_filter_per_route_config_destroy(const void *p)
{
    py_route *r = (py_route *)p;
    if (!r) return;
    app_free(&r->app);
    r->magic = 0;
    free(r);
}

/* ------------------------------------------------------------ helpers */

static py_filter *as_filter(void *fm)
{
    return fm;
}

static void local_reply(py_filter *f, uint32_t status, const char *code, const char *body)
{
    f->state = ST_LOCAL_REPLY;
    mod_hdr h[] = {
        {"x-aioresty-error", 16, code, strlen(code)},
        {"content-type", 12, "text/plain", 10},
    };
    envoy_dynamic_module_callback_http_send_response(f->fe, status, h, 2,
                                                     (mod_buf){body, strlen(body)},
                                                     MB("aioresty_python_filter"));
}

static size_t body_size(void *fe, int phase)
{
    int b = phase == PHASE_REQUEST ? ENV_BODY_BUFFERED_REQUEST : ENV_BODY_BUFFERED_RESPONSE;
    int r = phase == PHASE_REQUEST ? ENV_BODY_RECEIVED_REQUEST : ENV_BODY_RECEIVED_RESPONSE;
    return envoy_dynamic_module_callback_http_get_body_size(fe, b) +
           envoy_dynamic_module_callback_http_get_body_size(fe, r);
}

/* Appends the whole body (buffered, then the chunk being received) as bin. */
static void put_body(wbuf *w, void *fe, int phase)
{
    const int kinds[2] = {
        phase == PHASE_REQUEST ? ENV_BODY_BUFFERED_REQUEST : ENV_BODY_BUFFERED_RESPONSE,
        phase == PHASE_REQUEST ? ENV_BODY_RECEIVED_REQUEST : ENV_BODY_RECEIVED_RESPONSE,
    };
    size_t total = 0;
    for (int k = 0; k < 2; k++) total += envoy_dynamic_module_callback_http_get_body_size(fe, kinds[k]);
    mp_bin_header(w, total);
    size_t off = 0;
    for (int k = 0; k < 2; k++) {
        size_t n = envoy_dynamic_module_callback_http_get_body_chunks_size(fe, kinds[k]);
        if (n == 0) continue;
        env_buf one[4];
        env_buf *v = n <= 4 ? one : calloc(n, sizeof *v);
        if (!v) {
            w->oom = 1;
            return;
        }
        if (envoy_dynamic_module_callback_http_get_body_chunks(fe, kinds[k], v)) {
            for (size_t i = 0; i < n && off < total; i++) {
                size_t l = v[i].length < total - off ? v[i].length : total - off;
                wb_put(w, v[i].ptr, l);
                off += l;
            }
        }
        if (v != one) free(v);
    }
    /* keep the declared length honest if Envoy gave fewer bytes */
    if (off < total && !w->oom) {
        wb_reserve(w, total - off);
        if (!w->oom) {
            memset(w->p + w->len, 0, total - off);
            w->len += total - off;
        }
    }
}

/* Builds the snapshot and posts it.  with_body: 0 nil, 1 the body.  Returns
 * the status the hook should return through *ret; on a posting failure the
 * failure policy is applied here. */
static int post_phase(py_filter *f, int phase, int with_body)
{
    void *fe = f->fe;
    int ht = phase == PHASE_REQUEST ? ENV_HDR_REQUEST : ENV_HDR_RESPONSE;
    size_t nh = envoy_dynamic_module_callback_http_get_headers_size(fe, ht);
    env_hdr hs_small[32];
    env_hdr *hs = nh <= 32 ? hs_small : calloc(nh, sizeof *hs);
    wbuf w = {0};
    const char *code = "nomem";
    int rc = AR_ENOMEM;
    if (!hs) goto failed;
    if (nh && !envoy_dynamic_module_callback_http_get_headers(fe, ht, hs)) nh = 0;
    mp_array(&w, 4);
    mp_uint(&w, (uint64_t)phase);
    mp_uint(&w, f->app->timeout_ms);
    mp_array(&w, nh * 2);
    for (size_t i = 0; i < nh; i++) {
        mp_str(&w, hs[i].key_ptr, hs[i].key_length);
        mp_str(&w, hs[i].value_ptr, hs[i].value_length);
    }
    if (hs != hs_small) free(hs);
    hs = NULL;
    if (with_body) put_body(&w, fe, phase);
    else wb_byte(&w, 0xc0);
    if (w.oom) goto failed;

    const char *method = phase == PHASE_REQUEST ? "__filter_request" : "__filter_response";
    if (!f->link && !(f->link = ar_link_new(fe))) goto failed;
    ar_task *t = ar_task_new(method, strlen(method), w.p, w.len, &ar_link_sink, f->link);
    free(w.p);
    w.p = NULL;
    if (!t) goto failed;
    f->task = t;
    f->state = phase == PHASE_REQUEST ? ST_REQ_PENDING : ST_RESP_PENDING;
    rc = ar_link_post(f->link, f->app->q, t);
    if (rc == AR_OK) {
        f->task_id = ar_task_id(t);  /* assigned by the post */
        /* bounded even when the runtime never answers (on out-of-memory the
         * runtime's own timeout is all that is left) */
        uint32_t ms = f->app->timeout_ms ? f->app->timeout_ms + HOST_TIMEOUT_MARGIN_MS
                                         : AR_DEFAULT_TIMEOUT_MS;
        f->has_timer = ar_timeout_add(f->link, f->task_id << 1 | 1, ms) == 0;
        return 0;
    }
    /* not posted: the sink never runs; the task is only ours */
    f->task = NULL;
    ar_task_release(t);
    code = rc == AR_EFULL ? "full" : rc == AR_ECLOSED ? "closed" : "post";
failed:
    if (hs && hs != hs_small) free(hs);
    free(w.p);
    ar_envoy_log(ENV_LOG_WARN, "aioresty: python filter '%s': cannot post (%s)", f->app->spec,
                 code);
    if (f->app->fail_open) {
        f->state = phase == PHASE_REQUEST ? ST_REQ_DONE : ST_RESP_DONE;
        return 1;  /* continue */
    }
    local_reply(f, 500, code, "aioresty filter unavailable\n");
    return -1;
}

/* ------------------------------------------------------------ request side */

static const py_app *resolve_app(py_filter *f)
{
    const py_route *r = envoy_dynamic_module_callback_get_most_specific_route_config(f->fe);
    if (r && r->magic == ROUTE_MAGIC) {
        if (r->disabled) return NULL;
        if (r->has_app) return &r->app;
    }
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

static int py_request_headers(void *fe, void *fm, bool eos)
{
    py_filter *f = as_filter(fm);
    f->fe = fe;
    f->app = resolve_app(f);
    const py_app *a = f->app;
    if (!a || !a->on_request) {
        f->state = ST_REQ_DONE;
        return ENV_HEADERS_CONTINUE;
    }
    if (a->request_body && !eos) {
        if (envoy_dynamic_module_callback_http_get_buffer_limit(fe) < a->body_limit)
            envoy_dynamic_module_callback_http_set_buffer_limit(fe, a->body_limit);
        f->state = ST_REQ_BUFFERING;
        return ENV_HEADERS_STOP_ITERATION;
    }
    int r = post_phase(f, PHASE_REQUEST, 0);
    return r > 0 ? ENV_HEADERS_CONTINUE : ENV_HEADERS_STOP_ITERATION;
}

static int py_request_body(void *fe, void *fm, bool eos)
{
    py_filter *f = as_filter(fm);
    f->fe = fe;
    switch (f->state) {
    case ST_REQ_BUFFERING:
        if (body_size(fe, PHASE_REQUEST) > f->app->body_limit) {
            local_reply(f, 413, "body-limit", "request body too large\n");
            return ENV_BODY_STOP_NO_BUFFER;
        }
        if (!eos) return ENV_BODY_STOP_BUFFER;
        return post_phase(f, PHASE_REQUEST, 1) > 0 ? ENV_BODY_CONTINUE : ENV_BODY_STOP_BUFFER;
    case ST_REQ_PENDING:
        return ENV_BODY_STOP_BUFFER;  /* held until the answer */
    case ST_LOCAL_REPLY:
        return ENV_BODY_STOP_NO_BUFFER;
    default:
        return ENV_BODY_CONTINUE;
    }
}

static int py_request_trailers(void *fe, void *fm)
{
    py_filter *f = as_filter(fm);
    f->fe = fe;
    if (f->state == ST_REQ_BUFFERING)  /* trailers end the request */
        return post_phase(f, PHASE_REQUEST, 1) > 0 ? ENV_TRAILERS_CONTINUE : ENV_TRAILERS_STOP;
    if (f->state == ST_REQ_PENDING || f->state == ST_LOCAL_REPLY) return ENV_TRAILERS_STOP;
    return ENV_TRAILERS_CONTINUE;
}

/* ------------------------------------------------------------ response side */

static int py_response_headers(void *fe, void *fm, bool eos)
{
    py_filter *f = as_filter(fm);
    f->fe = fe;
    const py_app *a = f->app;
    /* f->task: Envoy answers locally while our request task is pending */
    if (f->state == ST_LOCAL_REPLY || f->state >= ST_RESP_BUFFERING || f->task || !a ||
        !a->on_response)
        return ENV_HEADERS_CONTINUE;
    if (a->response_body && !eos) {
        if (envoy_dynamic_module_callback_http_get_buffer_limit(fe) < a->body_limit)
            envoy_dynamic_module_callback_http_set_buffer_limit(fe, a->body_limit);
        f->state = ST_RESP_BUFFERING;
        return ENV_HEADERS_STOP_ITERATION;
    }
    int r = post_phase(f, PHASE_RESPONSE, 0);
    return r > 0 ? ENV_HEADERS_CONTINUE : ENV_HEADERS_STOP_ITERATION;
}

static int py_response_body(void *fe, void *fm, bool eos)
{
    py_filter *f = as_filter(fm);
    f->fe = fe;
    switch (f->state) {
    case ST_RESP_BUFFERING:
        if (body_size(fe, PHASE_RESPONSE) > f->app->body_limit) {
            local_reply(f, 502, "body-limit", "upstream response body too large\n");
            return ENV_BODY_STOP_NO_BUFFER;
        }
        if (!eos) return ENV_BODY_STOP_BUFFER;
        return post_phase(f, PHASE_RESPONSE, 1) > 0 ? ENV_BODY_CONTINUE : ENV_BODY_STOP_BUFFER;
    case ST_RESP_PENDING:
        return ENV_BODY_STOP_BUFFER;
    default:
        return ENV_BODY_CONTINUE;
    }
}

static int py_response_trailers(void *fe, void *fm)
{
    py_filter *f = as_filter(fm);
    f->fe = fe;
    if (f->state == ST_RESP_BUFFERING)
        return post_phase(f, PHASE_RESPONSE, 1) > 0 ? ENV_TRAILERS_CONTINUE : ENV_TRAILERS_STOP;
    if (f->state == ST_RESP_PENDING) return ENV_TRAILERS_STOP;
    return ENV_TRAILERS_CONTINUE;
}

/* ------------------------------------------------------------ answers */

static void replace_body(void *fe, int phase, mod_buf body)
{
    int bt = phase == PHASE_REQUEST ? ENV_BODY_BUFFERED_REQUEST : ENV_BODY_BUFFERED_RESPONSE;
    int ht = phase == PHASE_REQUEST ? ENV_HDR_REQUEST : ENV_HDR_RESPONSE;
    size_t old = envoy_dynamic_module_callback_http_get_body_size(fe, bt);
    if (old) envoy_dynamic_module_callback_http_drain_body(fe, bt, old);
    if (body.length) envoy_dynamic_module_callback_http_append_body(fe, bt, body);
    char num[24];
    int n = snprintf(num, sizeof num, "%zu", body.length);
    envoy_dynamic_module_callback_http_set_header(fe, ht, MB("content-length"),
                                                  (mod_buf){num, (size_t)n});
    envoy_dynamic_module_callback_http_set_header(fe, ht, MB("transfer-encoding"),
                                                  (mod_buf){NULL, 0});
}

/* Applies a successful answer.  Returns 1 when it sent a local reply. */
static int apply_answer(py_filter *f, int phase, const char *ans, size_t len)
{
    void *fe = f->fe;
    int ht = phase == PHASE_REQUEST ? ENV_HDR_REQUEST : ENV_HDR_RESPONSE;
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
        if (body.ptr) replace_body(fe, phase, body);
        /* a new :path / authority: the router picks the route again */
        if (reroute && phase == PHASE_REQUEST) envoy_dynamic_module_callback_http_clear_route_cache(fe);
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

static void cancel_timer(py_filter *f)
{
    if (f->has_timer) ar_timeout_cancel(f->link, f->task_id << 1 | 1);
    f->has_timer = 0;
}

/* The module's timer fired before the runtime answered: the task is
 * aborted (the runtime cancels the hooks when it gets to them), its late
 * answer ignored, and the failure policy applies as for rc 3. */
static void host_timeout(py_filter *f, ar_task *t)
{
    int phase = f->state == ST_REQ_PENDING ? PHASE_REQUEST : PHASE_RESPONSE;
    void *fe = f->fe;
    f->has_timer = 0;   /* the timer thread freed its entry */
    f->task = NULL;
    ar_task_abort(t);
    ar_task_release(t); /* the host reference; the runtime's is the core's */
    ar_envoy_log(ENV_LOG_WARN,
                 "aioresty: python filter '%s' (%s): no answer within %u ms (+%d ms): timeout",
                 f->app->spec, phase == PHASE_REQUEST ? "request" : "response",
                 f->app->timeout_ms ? f->app->timeout_ms : AR_DEFAULT_TIMEOUT_MS,
                 f->app->timeout_ms ? HOST_TIMEOUT_MARGIN_MS : 0);
    if (!f->app->fail_open) {
        local_reply(f, 500, "timeout", "aioresty filter failed\n");
        return;
    }
    f->state = phase == PHASE_REQUEST ? ST_REQ_DONE : ST_RESP_DONE;
    /* `f` may be gone after these calls */
    if (phase == PHASE_REQUEST) envoy_dynamic_module_callback_http_filter_continue_decoding(fe);
    else envoy_dynamic_module_callback_http_filter_continue_encoding(fe);
}

static void py_scheduled(void *fe, void *fm, uint64_t id)
{
    py_filter *f = as_filter(fm);
    ar_task *t = f->task;
    if (!t || (id >> 1) != f->task_id) return;  /* late event of an abandoned task */
    f->fe = fe;
    if (id & 1) {
        if (!ar_task_done(t)) host_timeout(f, t);
        return;  /* done: the answer's event is on its way */
    }
    if (!ar_task_done(t)) return;
    cancel_timer(f);
    f->task = NULL;  /* `t` is this function's to release */
    int phase = f->state == ST_REQ_PENDING ? PHASE_REQUEST : PHASE_RESPONSE;
    int rc = ar_task_rc(t);
    size_t len = 0;
    const char *ans = ar_task_response(t, &len);
    int replied = 0;
    if (rc != 0) {
        ar_envoy_log(ENV_LOG_WARN, "aioresty: python filter '%s' (%s): rc=%d %.*s",
                     f->app->spec, phase == PHASE_REQUEST ? "request" : "response", rc,
                     (int)(ans ? (len > 400 ? 400 : len) : 0), ans ? ans : "");
        if (!f->app->fail_open) {
            /* RC_TIMEOUT = 3 (aioresty/app.py) */
            local_reply(f, 500, rc == 3 ? "timeout" : "error", "aioresty filter failed\n");
            replied = 1;
        }
    } else if (ans && len) {
        replied = apply_answer(f, phase, ans, len);
    }
    if (!replied) {
        f->state = phase == PHASE_REQUEST ? ST_REQ_DONE : ST_RESP_DONE;
        /* `f` may be gone after these calls */
        if (phase == PHASE_REQUEST) envoy_dynamic_module_callback_http_filter_continue_decoding(fe);
        else envoy_dynamic_module_callback_http_filter_continue_encoding(fe);
    }
    ar_task_release(t);
}

static void py_filter_destroy(void *fm)
{
    py_filter *f = as_filter(fm);
    if (!f) return;
    if (f->link) ar_link_detach(f->link);  /* no commit after this point */
    cancel_timer(f);                       /* frees an armed entry and its link reference */
    if (f->task) {
        /* the stream is gone (client abort, reset): the runtime cancels */
        if (!ar_task_done(f->task)) ar_task_abort(f->task);
        ar_task_release(f->task);
    }
    if (f->link) ar_link_unref(f->link);  /* the filter's reference */
    free(f);
}

const ar_mode ar_mode_python = {
    .name = "python",
    .config_new = py_config_new,
    .config_destroy = py_config_destroy,
    .filter_new = py_filter_new,
    .filter_destroy = py_filter_destroy,
    .request_headers = py_request_headers,
    .request_body = py_request_body,
    .request_trailers = py_request_trailers,
    .response_headers = py_response_headers,
    .response_body = py_response_body,
    .response_trailers = py_response_trailers,
    .scheduled = py_scheduled,
};
