/* core_internal.h - what task_queue.c and registry.c share; not installed. */
#ifndef AIORESTY_CORE_INTERNAL_H
#define AIORESTY_CORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "aioresty_core.h"

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
};

/* task_queue.c */
ar_queue *ar_queue_create(int max_queue);   /* refs = 2: creator + runtime side */
void ar_queue_close(ar_queue *q);           /* no more posts; wake the runtime */

/* registry.c: the queue's last reference is gone (dlclose an unpinned lib). */
void ar_registry_queue_freed(ar_queue *q);

#endif
