/*
 * stream.c - the per-stream work every filter mode shares (stream.h): one
 * runtime call (post, its events, abandon, end), bodies, the module's own
 * local error reply, continuing a stopped stream, posting error texts and
 * logging.
 *
 * Threads: the worker thread of the stream, except ar_envoy_log and
 * ar_thread_start (any thread).  Ownership: see stream.h; nothing here keeps memory past a call
 * except the ar_call's task and link, which ar_call_event / ar_call_abandon
 * / ar_call_end give back.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stream.h"
#include "timeouts.h"

void ar_envoy_log(env_log_level level, const char *fmt, ...)
{
    char b[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n >= sizeof b) n = (int)sizeof b - 1;
    envoy_dynamic_module_callback_log(level, (mod_buf){b, (size_t)n});
}

int ar_thread_start(void *(*fn)(void *), const char *name, pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_t th;
    int rc = pthread_create(&th, &at, fn, NULL);
    pthread_attr_destroy(&at);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        pthread_cond_destroy(cv);
        return -1;
    }
    pthread_setname_np(th, name);
    return 0;
}

/* ------------------------------------------------------------ calls */

int ar_call_post(ar_call *c, void *fe, ar_queue *q, const char *method, size_t method_len,
                 const char *req, size_t req_len, double timeout_ms)
{
    if (!c->link && !(c->link = ar_link_new(fe))) return AR_ENOMEM;
    ar_task *t = ar_task_new(method, method_len, req, req_len, &ar_link_sink, c->link);
    if (!t) return AR_ENOMEM;
    int rc = ar_link_post(c->link, q, t);
    if (rc != AR_OK) {
        ar_task_release(t);         /* not posted: the sink never runs; the task is only ours */
        return rc;
    }
    c->task = t;
    c->task_id = ar_task_id(t);     /* assigned by the post */
    /* bounded even when the runtime never answers (on out-of-memory the
     * runtime's own timeout is all that is left) */
    c->has_timer = timeout_ms > 0 && ar_timeout_add(c->link, c->task_id << 1 | 1, timeout_ms) == 0;
    return AR_OK;
}

static void cancel_timer(ar_call *c)
{
    if (c->has_timer) ar_timeout_cancel(c->link, c->task_id << 1 | 1);
    c->has_timer = 0;
}

void ar_call_abandon(ar_call *c)
{
    if (!c->task) return;
    cancel_timer(c);
    if (!ar_task_done(c->task)) ar_task_abort(c->task);     /* the runtime cancels the handler */
    ar_task_release(c->task);
    c->task = NULL;
}

ar_event ar_call_event(ar_call *c, uint64_t id, ar_task **answer)
{
    ar_task *t = c->task;
    if (!t || (id >> 1) != c->task_id) return AR_EVENT_STALE;  /* late event of an abandoned call */
    if (id & 1) {
        if (ar_task_done(t)) return AR_EVENT_EARLY;             /* the answer's event is on its way */
        c->has_timer = 0;                                       /* the timer thread freed its entry */
        ar_call_abandon(c);
        return AR_EVENT_TIMEOUT;
    }
    if (!ar_task_done(t)) return AR_EVENT_EARLY;
    cancel_timer(c);
    c->task = NULL;
    *answer = t;
    return AR_EVENT_ANSWER;
}

void ar_call_end(ar_call *c)
{
    if (c->link) ar_link_detach(c->link);   /* no commit after this point */
    ar_call_abandon(c);                     /* the stream is gone (reset, client abort) */
    if (c->link) ar_link_unref(c->link);    /* the filter's reference */
    c->link = NULL;
}

const char *ar_post_error_code(int rc)
{
    return rc == AR_EFULL     ? "full"
           : rc == AR_ECLOSED ? "closed"
           : rc == AR_ENOMEM  ? "nomem"
                              : "invalid";
}


/* ------------------------------------------------------------ bodies */

static const env_body_type k_body_kinds[2][2] = {
    [AR_DIR_REQUEST] = {ENV_BODY_BUFFERED_REQUEST, ENV_BODY_RECEIVED_REQUEST},
    [AR_DIR_RESPONSE] = {ENV_BODY_BUFFERED_RESPONSE, ENV_BODY_RECEIVED_RESPONSE},
};

size_t ar_body_size(void *fe, ar_dir dir)
{
    return envoy_dynamic_module_callback_http_get_body_size(fe, k_body_kinds[dir][0]) +
           envoy_dynamic_module_callback_http_get_body_size(fe, k_body_kinds[dir][1]);
}

int ar_body_each(void *fe, ar_dir dir, void (*fn)(const env_buf *slice, void *ud), void *ud)
{
    for (int k = 0; k < 2; k++) {
        env_body_type kind = k_body_kinds[dir][k];
        size_t n = envoy_dynamic_module_callback_http_get_body_chunks_size(fe, kind);
        if (n == 0) continue;
        env_buf few[4];
        env_buf *v = n <= 4 ? few : calloc(n, sizeof *v);
        if (!v) return -1;
        if (envoy_dynamic_module_callback_http_get_body_chunks(fe, kind, v))
            for (size_t i = 0; i < n; i++)
                if (v[i].length) fn(&v[i], ud);
        if (v != few) free(v);
    }
    return 0;
}

typedef struct {
    size_t skip, want;
    void (*fn)(const env_buf *slice, void *ud);
    void *ud;
} range_ctx;

static void range_slice(const env_buf *s, void *ud)
{
    range_ctx *c = ud;
    if (c->want == 0) return;
    if (c->skip >= s->length) {
        c->skip -= s->length;
        return;
    }
    env_buf part = {s->ptr + c->skip, s->length - c->skip};
    if (part.length > c->want) part.length = c->want;
    c->skip = 0;
    c->want -= part.length;
    c->fn(&part, c->ud);
}

int ar_body_range(void *fe, ar_dir dir, size_t skip, size_t want,
                  void (*fn)(const env_buf *slice, void *ud), void *ud)
{
    range_ctx c = {skip, want, fn, ud};
    return ar_body_each(fe, dir, range_slice, &c);
}

static void append_slice(const env_buf *s, void *ud)
{
    char **w = ud;
    memcpy(*w, s->ptr, s->length);
    *w += s->length;
}

size_t ar_body_copy(void *fe, ar_dir dir, char *dst, size_t cap)
{
    char *w = dst;
    return ar_body_range(fe, dir, 0, cap, append_slice, &w) == 0 ? (size_t)(w - dst) : SIZE_MAX;
}

int ar_body_one(void *fe, ar_dir dir, env_buf *one, size_t *total)
{
    size_t nslices = 0;
    *one = (env_buf){NULL, 0};
    *total = 0;
    for (int k = 0; k < 2; k++) {
        env_body_type kind = k_body_kinds[dir][k];
        size_t n = envoy_dynamic_module_callback_http_get_body_chunks_size(fe, kind);
        if (n == 0) continue;
        if (n == 1 && nslices == 0) {
            env_buf b[1];
            if (envoy_dynamic_module_callback_http_get_body_chunks(fe, kind, b)) *one = b[0];
        }
        nslices += n;
        *total += envoy_dynamic_module_callback_http_get_body_size(fe, kind);
    }
    return nslices <= 1 && one->length == *total;
}

/* ------------------------------------------------------------ replies */

void ar_reply_error(void *fe, uint32_t status, const char *code, const char *body,
                    const char *details)
{
    mod_hdr h[2];
    size_t nh = 0;
    if (code) h[nh++] = (mod_hdr){"x-aioresty-error", 16, code, strlen(code)};
    h[nh++] = (mod_hdr){"content-type", 12, "text/plain", 10};
    envoy_dynamic_module_callback_http_send_response(fe, status, h, nh,
                                                     (mod_buf){body, strlen(body)},
                                                     (mod_buf){details, strlen(details)});
}

void ar_stream_continue(void *fe, ar_dir dir)
{
    if (dir == AR_DIR_REQUEST) envoy_dynamic_module_callback_http_filter_continue_decoding(fe);
    else envoy_dynamic_module_callback_http_filter_continue_encoding(fe);
}
