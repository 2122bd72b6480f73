/* core_internal.h - what task_queue.c and registry.c share; not installed. */
#ifndef AIORESTY_CORE_INTERNAL_H
#define AIORESTY_CORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "aioresty_core.h"

/* metrics.c: the call metrics of one method of a runtime.  Values are
 * atomics (any thread); x_* is ar_metrics_take's shadow (under its lock).
 * What the posting threads write, what the answering threads write and the
 * shadow are on cache lines of their own (aligned_alloc): posts and answers
 * of one method run on different cores. */
enum { AR_CALL_BOUNDS = 19, AR_RC_SLOTS = 17 /* rc 0..15, then "other" */ };
typedef struct ar_method_stats {
    char name[AR_METHOD_MAX + 1];
    size_t len;
    _Alignas(64) atomic_uint_fast64_t calls;            /* posting threads */
    _Alignas(64) atomic_uint_fast64_t answers[AR_RC_SLOTS];     /* answering threads */
    atomic_uint_fast64_t counts[AR_CALL_BOUNDS + 1];
    atomic_uint_fast64_t sum_us;
    _Alignas(64) uint64_t x_calls, x_answers[AR_RC_SLOTS], x_counts[AR_CALL_BOUNDS + 1], x_sum;
} ar_method_stats;

/* metrics.c: a queue's part of the table. */
typedef struct ar_queue_stats {
    char runtime[128];                  /* the runtime label; set before the runtime starts */
    ar_method_stats *methods[AR_METRIC_METHODS];   /* under the queue's mu; only grows */
    int nmethods;
    ar_method_stats *other;             /* "(other)": methods past AR_METRIC_METHODS */
    atomic_uint_fast64_t rejected_full, rejected_closed;
    uint64_t x_rejected_full, x_rejected_closed;
    atomic_uint_fast64_t loop_lag_us;
    atomic_int lag_reported;
    struct ar_queue *next;              /* metrics.c's list of live queues */
} ar_queue_stats;

struct ar_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* signalled for blocked ngx_http_lua_ffi_task_poll */
    ar_task *head;              /* tasks waiting to be handed out (FIFO) */
    ar_task **tail;
    int queued;
    int max_queue;
    int pollers;                /* threads blocked in task_poll */
    int wake_pending;           /* eventfd written since the last full drain */
    int runtime_released;       /* the runtime side's reference was dropped */
    uint64_t *aborted;          /* abort notices (task ids), owned by the queue */
    size_t naborted, abort_cap;
    atomic_int closed;
    atomic_int watch_aborts;    /* the runtime uses ar_queue_fd / drain */
    atomic_int refs;
    int efd;                    /* wake-up eventfd, owned by the queue */
    void *registry_entry;       /* registry.c's bookkeeping, guarded by its lock */
    char *load_error;           /* ar_queue_set_error's copy, owned by the queue, under mu */
    ar_queue_stats stats;       /* metrics.c */
};

/* task_queue.c */
ar_queue *ar_queue_create(int max_queue);   /* refs = 2: creator + runtime side */
void ar_queue_close(ar_queue *q);           /* no more posts; wake the runtime */

/* metrics.c (threads and locks: see there) */
void ar_stats_queue_init(ar_queue *q);      /* in ar_queue_create */
void ar_stats_queue_fini(ar_queue *q);      /* with the queue's last reference */
void ar_stats_set_runtime(ar_queue *q, const char *key);   /* before the runtime starts */
ar_method_stats *ar_stats_method_locked(ar_queue *q, const char *m, size_t len);   /* q->mu */
uint64_t ar_stats_clock(void);                              /* CLOCK_MONOTONIC ns */
void ar_stats_posted(ar_method_stats *s);                   /* q->mu */
void ar_stats_answered(ar_method_stats *s, int rc, uint64_t t0);
void ar_stats_rejected_locked(ar_queue *q, int code);      /* q->mu */

/* registry.c: the queue's last reference is gone (dlclose an unpinned lib). */
void ar_registry_queue_freed(ar_queue *q);

#endif
