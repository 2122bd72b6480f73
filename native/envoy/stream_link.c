/* stream_link.c - see stream_link.h. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "envoy_abi.h"
#include "stream_link.h"

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

void ar_link_detach(ar_link *l)
{
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
    ar_link_ref(l);                         /* the sink may run before post returns */
    int rc = ar_task_post(q, t);
    if (rc != AR_OK) ar_link_unref(l);      /* cannot reach 0: the caller holds one */
    return rc;
}
