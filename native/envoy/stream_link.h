/*
 * stream_link.h - the part of an Envoy stream shared with other threads,
 * used by every filter mode that posts tasks (bridge.c, pyfilter.c,
 * luamod.c).
 *
 * A link owns the stream's http-filter scheduler.  It is reference counted:
 * the filter holds one (from ar_link_new until filter destroy), each posted
 * task one (taken with ar_link_ref before ar_task_post, dropped by the
 * completion sink after its commit), and any other holder its own (an armed
 * timeout of timeouts.c).  The scheduler is deleted exactly once, with the last
 * reference, so no commit can ever follow the delete.  `mu` orders commits
 * against the filter's destroy: after ar_link_detach returns, no commit for
 * this stream is in flight or will happen (a worker dispatcher torn down at
 * SIGTERM is never posted to; a reset stream never gets `scheduled`).
 *
 * Tasks posted with ar_link_sink carry the link as host_data; the sink
 * commits event id ar_task_id(t) << 1 (bit 0 is free for other events of the
 * same stream, e.g. the timeouts of timeouts.h; UINT64_MAX is AR_LINK_FLUSH_EVENT).  The filter itself stays
 * single-threaded: only the worker touches it.
 */
#ifndef AIORESTY_STREAM_LINK_H
#define AIORESTY_STREAM_LINK_H

#include <stdint.h>

#include "aioresty_core.h"

typedef struct ar_link ar_link;

/* Worker thread, inside a hook of the stream `fe`: NULL on out-of-memory. */
ar_link *ar_link_new(void *fe);
void ar_link_ref(ar_link *l);              /* any thread */
void ar_link_unref(ar_link *l);            /* any thread; the last one frees */
void ar_link_commit(ar_link *l, uint64_t event_id);  /* any thread */
void ar_link_detach(ar_link *l);           /* worker, in filter destroy */

/* Posts made by a worker wake their runtime once, at the end of the worker's
 * event-loop iteration: ar_link_post commits AR_LINK_FLUSH_EVENT on the first
 * posting stream of the iteration, and the scheduled hook must pass that
 * event to ar_link_flush_wakes (worker thread) instead of to the filter. */
#define AR_LINK_FLUSH_EVENT UINT64_MAX
void ar_link_flush_wakes(void);

/* Completion sink for tasks whose host_data is a link holding a reference
 * for the task: commits ar_task_id(t) << 1, then drops that reference. */
extern const ar_sink ar_link_sink;

/* Posts t (created with &ar_link_sink and host_data l) to q, taking the
 * task's link reference first; on failure gives it back.  Returns
 * ar_task_post's code. */
int ar_link_post(ar_link *l, ar_queue *q, ar_task *t);

#endif
