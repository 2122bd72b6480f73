/*
 * task_queue.c - tasks and per-runtime task queues: lua-resty-ffi's runtime
 * ABI (poll / get_req / respond) plus aioresty's extensions (eventfd wake-up,
 * batch drain, abort notices).  Ownership rules: aioresty_core.h.
 *
 * Locking: one mutex per queue guards its lists, counters and each queued or
 * handed-out task's `where`.  Task reference counts and the done/aborted flags
 * are atomics.  No global state besides two diagnostic counters.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core_internal.h"

static atomic_int g_hosts_gone;    /* ar_hosts_gone: completion sinks no longer run */

enum where { W_NEW = 0, W_QUEUED, W_TAKEN, W_ANSWERED };

struct ar_task {
    ar_task *next;          /* queue link; guarded by the queue mutex */
    ar_queue *queue;        /* set at post; the task holds a queue reference
                             * from then until it is freed, so respond and
                             * abort may touch the queue whatever its state */
    atomic_int refs;
    atomic_int done;
    atomic_int aborted;
    int where;              /* enum where; guarded by queue->mu once posted */
    uint64_t id;
    int rc;
    char *rsp;              /* runtime's malloc'ed answer, freed with the task */
    size_t rsp_len;
    const ar_sink *sink;
    void *host_data;
    ar_method_stats *stats;  /* metrics.c: set at post (NULL: not counted) */
    uint64_t t0;            /* the post's CLOCK_MONOTONIC, ns */
    char *method;           /* points into `buf` */
    size_t method_len;
    char *req;              /* points into `buf`, NUL-terminated */
    size_t req_len;
    char buf[];             /* method NUL request NUL */
};

static atomic_long g_tasks_alive;
static atomic_long g_queues_alive;
static atomic_uint_fast64_t g_next_id = 1;

long ar_tasks_alive(void) { return atomic_load(&g_tasks_alive); }
long ar_queues_alive(void) { return atomic_load(&g_queues_alive); }

/* ------------------------------------------------------------------ tasks */

ar_task *ar_task_new(const char *method, size_t method_len, const char *req, size_t req_len,
                     const ar_sink *sink, void *host_data)
{
    if (!method) method_len = 0;
    if (!req) req_len = 0;
    if (method_len > (size_t)INT32_MAX || req_len > (size_t)INT32_MAX) return NULL;
    ar_task *t = malloc(sizeof *t + method_len + 1 + req_len + 1);
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    atomic_init(&t->refs, 1);
    atomic_init(&t->done, 0);
    atomic_init(&t->aborted, 0);
    t->where = W_NEW;
    t->sink = sink;
    t->host_data = host_data;
    t->method = t->buf;
    t->method_len = method_len;
    if (method_len) memcpy(t->method, method, method_len);
    t->method[method_len] = '\0';
    t->req = t->buf + method_len + 1;
    t->req_len = req_len;
    if (req_len) memcpy(t->req, req, req_len);
    t->req[req_len] = '\0';
    atomic_fetch_add(&g_tasks_alive, 1);
    return t;
}

static void task_unref(ar_task *t)
{
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) return;
    ar_queue *q = t->queue;
    free(t->rsp);
    free(t);
    atomic_fetch_sub(&g_tasks_alive, 1);
    if (q) ar_queue_unref(q);
}

void ar_task_release(ar_task *t)
{
    if (t) task_unref(t);
}

const char *ar_task_method(const ar_task *t, size_t *len)
{
    if (len) *len = t->method_len;
    return t->method;
}

const char *ar_task_request(const ar_task *t, size_t *len)
{
    if (len) *len = t->req_len;
    return t->req;
}

uint64_t ar_task_id(const ar_task *t) { return t->id; }
int ar_task_aborted(const ar_task *t) { return atomic_load(&t->aborted); }
int ar_task_done(const ar_task *t) { return atomic_load_explicit(&t->done, memory_order_acquire); }
int ar_task_rc(const ar_task *t) { return t->rc; }
void *ar_task_host_data(const ar_task *t) { return t->host_data; }

const char *ar_task_response(const ar_task *t, size_t *len)
{
    if (len) *len = t->rsp_len;
    return t->rsp;
}

char *ngx_http_lua_ffi_get_req(void *task, int *len)
{
    ar_task *t = task;
    if (len) *len = (int)t->req_len;
    return t->req;
}

/* ----------------------------------------------------------------- queues */

ar_queue *ar_queue_create(int max_queue)
{
    ar_queue *q = calloc(1, sizeof *q);
    if (!q) return NULL;
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->efd < 0) {
        free(q);
        return NULL;
    }
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->max_queue = max_queue > 0 ? max_queue : AR_DEFAULT_MAX_QUEUE;
    q->tail = &q->head;
    /* one reference for the creator (the registry), one for the runtime side */
    atomic_init(&q->refs, 2);
    ar_stats_queue_init(q);
    atomic_fetch_add(&g_queues_alive, 1);
    return q;
}

void ar_hosts_gone(void)
{
    atomic_store(&g_hosts_gone, 1);
    ar_set_logger(NULL);                    /* log lines go to stderr from now on */
    ar_set_log_enabled(NULL);
}

ar_queue *ar_queue_new(int max_queue)
{
    return ar_queue_create(max_queue);
}

void ar_queue_set_error(ar_queue *q, const char *msg)
{
    char *copy = msg ? strdup(msg) : NULL;      /* NULL on OOM: no message */
    pthread_mutex_lock(&q->mu);
    free(q->load_error);
    q->load_error = copy;
    pthread_mutex_unlock(&q->mu);
}

size_t ar_queue_error(ar_queue *q, char *out, size_t outlen)
{
    size_t n = 0;
    pthread_mutex_lock(&q->mu);
    if (q->load_error && outlen) {
        n = strlen(q->load_error);
        if (n >= outlen) n = outlen - 1;
        memcpy(out, q->load_error, n);
        out[n] = '\0';
    }
    pthread_mutex_unlock(&q->mu);
    return n;
}

void ar_queue_ref(ar_queue *q) { atomic_fetch_add(&q->refs, 1); }

void ar_queue_unref(ar_queue *q)
{
    if (!q || atomic_fetch_sub_explicit(&q->refs, 1, memory_order_acq_rel) != 1) return;
    /* Last reference: every posted task was freed (each holds a reference),
     * so the lists are empty. */
    ar_stats_queue_fini(q);
    free(q->aborted);
    free(q->load_error);
    close(q->efd);
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    ar_registry_queue_freed(q);
    free(q);
    atomic_fetch_sub(&g_queues_alive, 1);
}

int ar_queue_closed(const ar_queue *q) { return atomic_load(&q->closed); }

int ar_queue_pending(ar_queue *q)
{
    pthread_mutex_lock(&q->mu);
    int n = q->queued;
    pthread_mutex_unlock(&q->mu);
    return n;
}

static void wake_fd(ar_queue *q)
{
    /* only a runtime that watches the fd (ar_queue_fd) needs the write;
     * task_poll runtimes are woken by the condition variable */
    if (!atomic_load(&q->watch_aborts)) return;
    uint64_t one = 1;
    ssize_t n;
    do {
        n = write(q->efd, &one, sizeof one);
    } while (n < 0 && errno == EINTR);
    /* EAGAIN means the counter is at its maximum: already readable. */
}

int ar_queue_fd(ar_queue *q)
{
    /* From now on posts write the eventfd.  A post before this one armed
     * wake_pending without writing (no one was watching): write it now. */
    if (!atomic_exchange(&q->watch_aborts, 1)) {
        pthread_mutex_lock(&q->mu);
        int pending = q->wake_pending;
        pthread_mutex_unlock(&q->mu);
        if (pending) wake_fd(q);
    }
    return q->efd;
}

/* Called with q->mu held: arm the eventfd if nothing was pending. */
static int wake_locked(ar_queue *q)
{
    if (q->wake_pending) return 0;
    q->wake_pending = 1;
    return 1;
}

/* Queues t.  With defer, wakes no one and sets *wake when the caller owes
 * the runtime an ar_queue_wake; otherwise wakes it here.
 *
 * Condition variable signals (here and in ar_queue_wake) are sent after
 * mu is unlocked: signalled under mu, the woken poller returns from the
 * futex only to block at once on the mutex we still hold (a second sleep and
 * wake-up per task).  No wake-up is lost: the pollers' predicate ("a task is
 * queued, or the queue is closed") is only changed under mu, and a poller
 * tests it and enters pthread_cond_wait without letting go of mu in between
 * (pollers++ too), so every poller counted here, under mu, is already
 * blocked on cv, or has been woken and will re-test the predicate under mu,
 * when the signal comes; one that arrives after our unlock sees the task
 * without a signal.  A surplus signal (the poller we counted took a task
 * through a spurious wake-up first) only makes another poller re-test and
 * wait again.  cv outlives the signal: the caller holds a reference to q,
 * and so does the task just queued. */
static int post(ar_queue *q, ar_task *t, int defer, int *wake_owed)
{
    int wake = 0, pollers;
    if (!q || !t || t->where != W_NEW) return AR_EINVAL;
    uint64_t t0 = ar_stats_clock();         /* outside the lock: posters share it */
    pthread_mutex_lock(&q->mu);
    if (atomic_load(&q->closed)) {
        ar_stats_rejected_locked(q, AR_ECLOSED);
        pthread_mutex_unlock(&q->mu);
        return AR_ECLOSED;
    }
    if (q->queued >= q->max_queue) {
        ar_stats_rejected_locked(q, AR_EFULL);
        pthread_mutex_unlock(&q->mu);
        return AR_EFULL;
    }
    t->stats = ar_stats_method_locked(q, t->method, t->method_len);
    t->t0 = t0;
    ar_stats_posted(t->stats);
    t->id = atomic_fetch_add(&g_next_id, 1);
    t->queue = q;
    ar_queue_ref(q);                        /* dropped when the task is freed */
    t->where = W_QUEUED;
    t->next = NULL;
    atomic_fetch_add(&t->refs, 1);          /* the runtime's reference */
    *q->tail = t;
    q->tail = &t->next;
    q->queued++;
    wake = wake_locked(q);
    pollers = q->pollers;
    pthread_mutex_unlock(&q->mu);
    /* signalled after the unlock: see the comment above post() */
    if (defer)
        *wake_owed = wake || pollers;
    else if (pollers)
        pthread_cond_signal(&q->cv);
    if (!defer && wake)
        wake_fd(q);
    return AR_OK;
}

int ar_task_post(ar_queue *q, ar_task *t)
{
    return post(q, t, 0, NULL);
}

int ar_task_post_nowake(ar_queue *q, ar_task *t, int *wake)
{
    int owed = 0;
    int rc = post(q, t, 1, &owed);
    if (wake) *wake = owed;
    return rc;
}

void ar_queue_wake(ar_queue *q)
{
    pthread_mutex_lock(&q->mu);
    /* wake_pending is still set unless the runtime drained since the post */
    int fd = q->wake_pending;
    int n = q->pollers < q->queued ? q->pollers : q->queued;
    pthread_mutex_unlock(&q->mu);
    while (n-- > 0) pthread_cond_signal(&q->cv);   /* after the unlock, as in post() */
    if (fd) wake_fd(q);
}

/* Pop the first queued task; q->mu held. */
static ar_task *pop_locked(ar_queue *q)
{
    ar_task *t = q->head;
    if (!t) return NULL;
    q->head = t->next;
    if (!q->head) q->tail = &q->head;
    t->next = NULL;
    t->where = W_TAKEN;
    q->queued--;
    return t;
}

/* The runtime side acknowledged the unload: drop its reference once. */
static void runtime_done_locked_then_unref(ar_queue *q)
{
    int drop = !q->runtime_released;
    q->runtime_released = 1;
    pthread_mutex_unlock(&q->mu);
    if (drop) ar_queue_unref(q);
}

void *ngx_http_lua_ffi_task_poll(void *tq)
{
    ar_queue *q = tq;
    ar_task *t;
    if (!q) return NULL;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        t = pop_locked(q);
        if (t) break;
        if (atomic_load(&q->closed)) {
            /* the NULL task that follows the pending ones */
            runtime_done_locked_then_unref(q);
            return NULL;
        }
        q->pollers++;
        pthread_cond_wait(&q->cv, &q->mu);
        q->pollers--;
    }
    if (!q->head && !q->naborted) q->wake_pending = 0;
    pthread_mutex_unlock(&q->mu);
    return t;
}

int ar_queue_drain(ar_queue *q, ar_task **tasks, int cap, uint64_t *aborted, int acap,
                   int *naborted)
{
    uint64_t v;
    int n = 0, na = 0, rearm = 0;
    (void)!read(q->efd, &v, sizeof v);      /* reset; EAGAIN when already 0 */
    pthread_mutex_lock(&q->mu);
    while (n < cap) {
        ar_task *t = pop_locked(q);
        if (!t) break;
        tasks[n++] = t;
    }
    if (aborted && acap > 0 && q->naborted) {
        na = q->naborted < (size_t)acap ? (int)q->naborted : acap;
        memcpy(aborted, q->aborted, (size_t)na * sizeof *aborted);
        q->naborted -= (size_t)na;
        memmove(q->aborted, q->aborted + na, q->naborted * sizeof *q->aborted);
    }
    if (naborted) *naborted = na;
    if (q->head || q->naborted) {
        rearm = 1;                          /* a cap was hit: come back */
    } else if (atomic_load(&q->closed)) {
        if (n == 0 && na == 0) {
            runtime_done_locked_then_unref(q);
            return -1;
        }
        rearm = 1;                          /* come back for the -1 */
    } else {
        q->wake_pending = 0;
    }
    pthread_mutex_unlock(&q->mu);
    if (rearm) wake_fd(q);
    return n;
}

void ar_task_abort(ar_task *t)
{
    ar_queue *q = t->queue;
    int wake = 0;
    if (atomic_exchange(&t->aborted, 1)) return;
    if (!q || atomic_load(&t->done)) return;
    pthread_mutex_lock(&q->mu);
    if (t->where == W_TAKEN && atomic_load(&q->watch_aborts)) {
        if (q->naborted == q->abort_cap) {
            size_t cap = q->abort_cap ? q->abort_cap * 2 : 16;
            uint64_t *a = realloc(q->aborted, cap * sizeof *a);
            if (!a) {                       /* notice lost; the answer still comes */
                pthread_mutex_unlock(&q->mu);
                return;
            }
            q->aborted = a;
            q->abort_cap = cap;
        }
        q->aborted[q->naborted++] = t->id;
        wake = wake_locked(q);
    }
    pthread_mutex_unlock(&q->mu);
    if (wake) wake_fd(q);
}

const char *ar_strerror(int code)
{
    switch (code) {
    case AR_OK: return "ok";
    case AR_EFULL: return "post failed, queue full";
    case AR_ECLOSED: return "task queue is finished";
    case AR_ENOMEM: return "post failed, no memory";
    case AR_EINVAL: return "post failed, invalid argument";
    case AR_ELOAD: return "runtime load failed";
    default: return "unknown error";
    }
}

void ar_limits(ar_limits_t *out)
{
    *out = (ar_limits_t){AR_METHOD_MAX, AR_ANSWER_MAX, AR_RC_TOO_LARGE, AR_DEFAULT_MAX_QUEUE,
                         AR_DEFAULT_TIMEOUT_MS};
}

/* The text that replaces an answer over AR_ANSWER_MAX (malloc'ed, or NULL). */
static char *too_large(const ar_task *t, size_t len)
{
    size_t mlen = 0;
    const char *m = ar_task_method(t, &mlen);
    size_t cap = mlen + 160;
    char *out = malloc(cap);
    if (out)
        snprintf(out, cap, "aioresty: the answer to '%.*s' is %zu bytes, over the limit of %d",
                 (int)mlen, m, len, AR_ANSWER_MAX);
    return out;
}

void ngx_http_lua_ffi_respond(void *task, int rc, char *rsp, int rsp_len)
{
    ar_task *t = task;
    ar_queue *q;
    if (!t) {
        free(rsp);
        return;
    }
    if (atomic_load(&t->done)) {            /* answered twice: keep the first */
        free(rsp);
        return;
    }
    q = t->queue;
    if (q) {
        /* The task leaves the runtime; abort notices for it are pointless now. */
        pthread_mutex_lock(&q->mu);
        t->where = W_ANSWERED;
        pthread_mutex_unlock(&q->mu);
    }
    size_t len = !rsp ? 0 : rsp_len <= 0 ? strlen(rsp) : (size_t)rsp_len;
    if (len > AR_ANSWER_MAX) {              /* the one answer-size rule (aioresty_core.h) */
        free(rsp);
        rc = AR_RC_TOO_LARGE;
        rsp = too_large(t, len);
        len = rsp ? strlen(rsp) : 0;
    }
    t->rc = rc;
    t->rsp = rsp;
    t->rsp_len = len;
    ar_stats_answered(t->stats, rc, t->t0);
    atomic_store_explicit(&t->done, 1, memory_order_release);
    /* after ar_hosts_gone no host code runs: the answer is stored, the
     * host's reference is never released (the process is exiting) */
    if (t->sink && t->sink->complete && !atomic_load(&g_hosts_gone))
        t->sink->complete(t, t->sink->ctx);
    task_unref(t);                          /* the runtime's reference */
}

void ar_queue_close(ar_queue *q)
{
    int wake;
    pthread_mutex_lock(&q->mu);
    if (atomic_exchange(&q->closed, 1)) {
        pthread_mutex_unlock(&q->mu);
        return;
    }
    wake = wake_locked(q);
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
    if (wake) wake_fd(q);
}
