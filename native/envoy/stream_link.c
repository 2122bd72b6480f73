/*
 * stream_link.c - the part of an Envoy stream shared with other threads
 * (ar_link, stream.h) and the batching of runtime wakes per worker
 * event-loop iteration.
 *
 * Threads: ar_link_new, ar_link_detach, ar_link_post and
 * ar_link_flush_wakes run on the stream's worker thread; ref, unref, commit
 * and the sink on any thread.  Ownership: a link is freed (and its
 * scheduler deleted) by whoever drops the last reference (stream.h lists
 * the holders).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "stream.h"

struct ar_link {
    atomic_int refs;
    pthread_mutex_t mu;
    int detached;               /* guarded by mu */
    void *sched;                /* Envoy's scheduler; deleted with the last reference */
};

ar_link *ar_link_new(void *fe)
{
    ar_link *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    atomic_init(&l->refs, 1);
    pthread_mutex_init(&l->mu, NULL);
    l->sched = envoy_dynamic_module_callback_http_filter_scheduler_new(fe);
    return l;
}

void ar_link_ref(ar_link *l)
{
    atomic_fetch_add(&l->refs, 1);
}

void ar_link_unref(ar_link *l)
{
    if (atomic_fetch_sub_explicit(&l->refs, 1, memory_order_acq_rel) != 1) return;
    /* last reference: no commit can follow; a queued one holds a weak ref */
    if (l->sched) envoy_dynamic_module_callback_http_filter_scheduler_delete(l->sched);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

void ar_link_commit(ar_link *l, uint64_t event_id)
{
    pthread_mutex_lock(&l->mu);
    if (!l->detached && l->sched)
        envoy_dynamic_module_callback_http_filter_scheduler_commit(l->sched, event_id);
    pthread_mutex_unlock(&l->mu);
}

/* ---- one wake per runtime per worker event-loop iteration ----
 *
 * Posting from a worker does not wake the runtime at once: the queue goes on
 * this thread's list, and the first post of the iteration commits
 * AR_LINK_FLUSH_EVENT on its own stream (the carrier).  Envoy runs that
 * same-thread post after the events already active in this iteration, so
 * every request read in the iteration is queued before the runtime wakes,
 * and it wakes once for all of them.  The list holds a queue reference per
 * entry and the carrier link a reference; both end in ar_link_flush_wakes,
 * which also runs when the carrier's stream is destroyed first (its commit
 * would be dropped). */
#define WAKES_MAX 8

static __thread struct {
    ar_queue *q[WAKES_MAX];
    int n;
    ar_link *carrier;
} t_wakes;

void ar_link_flush_wakes(void)
{
    ar_link *carrier = t_wakes.carrier;
    int n = t_wakes.n;
    t_wakes.carrier = NULL;
    t_wakes.n = 0;
    for (int i = 0; i < n; i++) {
        ar_queue_wake(t_wakes.q[i]);
        ar_queue_unref(t_wakes.q[i]);
    }
    if (carrier) ar_link_unref(carrier);
}

static void defer_wake(ar_link *l, ar_queue *q)
{
    for (int i = 0; i < t_wakes.n; i++)
        if (t_wakes.q[i] == q) return;      /* its wake is already coming */
    if (t_wakes.n == WAKES_MAX) {
        ar_queue_wake(q);                   /* many runtimes: no batching for this one */
        return;
    }
    ar_queue_ref(q);
    t_wakes.q[t_wakes.n++] = q;
    if (!t_wakes.carrier) {
        ar_link_ref(l);
        t_wakes.carrier = l;
        ar_link_commit(l, AR_LINK_FLUSH_EVENT);
    }
}

void ar_link_detach(ar_link *l)
{
    if (t_wakes.carrier == l) ar_link_flush_wakes();
    pthread_mutex_lock(&l->mu);
    l->detached = 1;
    pthread_mutex_unlock(&l->mu);
}

static void on_task_complete(ar_task *t, void *ctx)
{
    (void)ctx;
    ar_link *l = ar_task_host_data(t);
    ar_link_commit(l, ar_task_id(t) << 1);
    ar_link_unref(l);                       /* the task's reference */
}

const ar_sink ar_link_sink = {on_task_complete, NULL};

int ar_link_post(ar_link *l, ar_queue *q, ar_task *t)
{
    int wake = 0;
    ar_link_ref(l);                         /* the sink may run before post returns */
    int rc = ar_task_post_nowake(q, t, &wake);
    if (rc != AR_OK) {
        ar_link_unref(l);                   /* cannot reach 0: the caller holds one */
        return rc;
    }
    if (wake) defer_wake(l, q);
    return rc;
}
