/*
 * stream.h - the shared stream layer of libaioresty_envoy.so: what every
 * filter mode (bridge.c, lua/, python/) does with an Envoy stream, written
 * once.
 *
 *   stream_link.c  the part of a stream shared with other threads (ar_link:
 *                  the http-filter scheduler, reference counted) and the
 *                  one-wake-per-iteration batching of posts
 *   stream.c       one runtime call of a stream (ar_call: post, event,
 *                  abandon, end), bodies (size, slices, copy), the module's
 *                  own local error reply, continuing a stopped stream, the
 *                  texts of posting errors, logging to Envoy's log
 *   timeouts.c     the per-call timeout thread (timeouts.h)
 *   metrics.c      the metrics table as Envoy stats (metrics.h)
 *
 * Threads.  A filter (and the ar_call inside it) is created, used and freed
 * on its worker thread only; every function here runs there unless it says
 * "any thread".  What other threads need (completion sinks on runtime
 * threads, the timeout thread) is the link.
 *
 * Ownership - who frees what:
 *   - ar_link: reference counted.  The filter holds one (from the first
 *     post until ar_call_end), each posted task one (taken by ar_link_post,
 *     dropped by ar_link_sink after its commit), each armed timeout one
 *     (timeouts.c), the wake batch's carrier one.  The scheduler is deleted
 *     exactly once, with the last reference, so no commit can ever follow
 *     the delete.  `mu` orders commits against the filter's destroy: after
 *     ar_link_detach returns, no commit for this stream is in flight or will
 *     happen (a worker dispatcher torn down at SIGTERM is never posted to; a
 *     reset stream never gets `scheduled`).
 *   - ar_task of an ar_call: the host reference belongs to the worker side
 *     and is released on the worker: by the mode after ar_call_event handed
 *     it over (AR_EVENT_ANSWER), else by ar_call_abandon / ar_call_end
 *     (which also abort it, so the runtime cancels the handler).  The
 *     runtime's reference is the core's business.  Request bytes are copied
 *     by ar_task_new; answer bytes are the task's (read before the release).
 *   - the call's timeout entry and its link reference: freed by exactly one
 *     of the timeout thread (after it fired) or ar_timeout_cancel.
 *
 * Events.  The sink of a task commits event `task id << 1`; its timeout
 * commits `task id << 1 | 1`; UINT64_MAX is AR_LINK_FLUSH_EVENT (the hall
 * passes it to ar_link_flush_wakes, never to a mode).
 */
#ifndef AIORESTY_STREAM_H
#define AIORESTY_STREAM_H

#include <pthread.h>
#include <stdint.h>

#include "aioresty_core.h"
#include "envoy_abi.h"

/* A module-owned buffer of a string literal. */
#define MB(s) ((mod_buf){(s), sizeof(s) - 1})
/* A symbol Envoy (or a test through ffi) looks up in the .so. */
#define EXPORT __attribute__((visibility("default")))

/* The direction of a stream a hook or a body belongs to. */
typedef enum { AR_DIR_REQUEST = 0, AR_DIR_RESPONSE = 1 } ar_dir;

/* ---- logging (any thread) ---- */

/* One line in Envoy's log (truncated to 1 KiB). */
void ar_envoy_log(env_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- the module's own threads (stream.c; any thread) ---- */

/* Initialises *cv timed on CLOCK_MONOTONIC and starts fn(NULL) on a
 * detached thread named `name`, with every signal blocked (signals belong
 * to Envoy).  0, or -1 with *cv destroyed again. */
int ar_thread_start(void *(*fn)(void *), const char *name, pthread_cond_t *cv);

/* ---- links (stream_link.c) ---- */

typedef struct ar_link ar_link;

/* Worker thread, inside a hook of the stream `fe`: NULL on out-of-memory. */
ar_link *ar_link_new(void *fe);
void ar_link_ref(ar_link *l);                        /* any thread */
void ar_link_unref(ar_link *l);                      /* any thread; the last one frees */
void ar_link_commit(ar_link *l, uint64_t event_id);  /* any thread */
void ar_link_detach(ar_link *l);                     /* worker, in filter destroy */

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

/* ---- one runtime call of a stream (stream.c) ---- */

typedef struct ar_call {
    ar_link *link;      /* the filter's reference; NULL before the first post */
    ar_task *task;      /* the pending call (host reference), or NULL */
    uint64_t task_id;   /* ar_task_id(task), set by the post */
    int has_timer;      /* the call's timeout is armed */
} ar_call;

/* Posts method(req) to q for the stream fe (the link is created at the
 * first post; the request bytes are copied).  timeout_ms > 0 arms the
 * call's timeout (event task_id << 1 | 1).  AR_OK: c->task is the pending
 * call.  Otherwise nothing is pending and the code says why (AR_ENOMEM,
 * AR_EFULL, AR_ECLOSED, ...).  q's reference stays the caller's. */
int ar_call_post(ar_call *c, void *fe, ar_queue *q, const char *method, size_t method_len,
                 const char *req, size_t req_len, double timeout_ms);

typedef enum {
    AR_EVENT_STALE,     /* no pending call, or another call's event */
    AR_EVENT_EARLY,     /* this call's, but not yet/no longer meaningful: ignore */
    AR_EVENT_ANSWER,    /* answered: *answer is the task, now the caller's to release */
    AR_EVENT_TIMEOUT,   /* timed out: the call was abandoned (aborted, released) */
} ar_event;

/* What the scheduled event `id` means for the call. */
ar_event ar_call_event(ar_call *c, uint64_t id, ar_task **answer);

/* The pending call, if any, is given up (local reply, stream gone): its
 * timeout disarmed, the task aborted unless answered, and released; a late
 * answer's event is then STALE. */
void ar_call_abandon(ar_call *c);

/* In filter destroy: detaches the link (no commit after this), abandons the
 * call and drops the filter's link reference. */
void ar_call_end(ar_call *c);

/* The short code of a posting error (x-aioresty-error): full, closed, nomem,
 * invalid.  The words a Lua call returns are the core's ar_strerror. */
const char *ar_post_error_code(int rc);

/* ---- bodies: what Envoy buffered, then the slice being received ---- */

size_t ar_body_size(void *fe, ar_dir dir);

/* Calls fn for every non-empty slice, buffered then received.  -1 on
 * out-of-memory (fn may have run for some slices), else 0. */
int ar_body_each(void *fe, ar_dir dir, void (*fn)(const env_buf *slice, void *ud), void *ud);

/* As ar_body_each, for the bytes [skip, skip + want) of the body only. */
int ar_body_range(void *fe, ar_dir dir, size_t skip, size_t want,
                  void (*fn)(const env_buf *slice, void *ud), void *ud);

/* Copies at most cap bytes of the body into dst: the number copied, or
 * SIZE_MAX on out-of-memory. */
size_t ar_body_copy(void *fe, ar_dir dir, char *dst, size_t cap);

/* 1 when the body is one slice or none: *one is it (borrowed; {NULL, 0} for
 * none), the common case a caller need not copy.  0 otherwise.  *total is
 * the body's size either way. */
int ar_body_one(void *fe, ar_dir dir, env_buf *one, size_t *total);

/* ---- replies and continuing ---- */

/* The module's own local reply: `status`, [x-aioresty-error: code unless
 * NULL], content-type: text/plain, `body`; `details` names the mode in
 * Envoy's access log.  The filter may be destroyed inside the call. */
void ar_reply_error(void *fe, uint32_t status, const char *code, const char *body,
                    const char *details);

/* Continues a stream stopped in `dir` (the filter may be destroyed inside). */
void ar_stream_continue(void *fe, ar_dir dir);

#endif
