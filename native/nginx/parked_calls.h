/*
 * parked_calls.h - calls from a Lua VM that does not own the worker's wake
 * loop (nginx-lua with `lua_code_cache off;`, where every request runs in a
 * fresh Lua VM).
 *
 * The stock path has one wake loop per worker process: a timer of the first
 * Lua VM that called (the owner) drains every completion.  Another VM of the
 * same process cannot wait on the owner's semaphores, so its calls are
 * *parked*: arn_post_parked posts the task with a negative waiter id; the
 * owner's drain hands each completion with a negative id to arn_park, which
 * keeps it here; the calling VM polls arn_parked_collect (which parks the
 * completions with negative ids itself: the owner's wake loop may have ended,
 * in a graceful exit) and arn_parked_take, with an ngx.sleep backoff.
 *
 * Threads.  Every function runs on the worker's single Lua thread (the owner's
 * drain and the calling VM's coroutines share it), so the table needs no lock.
 *
 * Ownership - who frees what:
 *   - the host reference of a parked call's task belongs to its entry here
 *     from arn_post_parked on; arn_parked_take hands it to the caller inside
 *     *out (release it with arn_release after copying the response);
 *   - a caller that gives up (timeout, abort, or its VM closed: the Lua side
 *     anchors the id in a cdata whose finalizer is arn_parked_forget_cell)
 *     calls arn_parked_forget: the task is aborted, and released here when
 *     its completion arrives (or at once if it already has).
 *
 * Processes.  The table and the claims belong to the process that made them;
 * a forked child starts empty (the parent's tasks are not its to release).
 */
#ifndef AIORESTY_NGINX_PARKED_CALLS_H
#define AIORESTY_NGINX_PARKED_CALLS_H

#include <stdint.h>

#include "aioresty_nginx.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a Lua VM can claim once per worker process: the first VM to ask gets
 * 1, every later one 0. */
#define ARN_CLAIM_WAKE_LOOP 1u /* the stock wake loop (and its exit sentinel) */
#define ARN_CLAIM_METRICS 2u   /* the 1 s publisher of the worker's metrics */
AR_API int arn_claim(unsigned what);
/* Gives a claim back (the claimer could not start what it claimed). */
AR_API void arn_unclaim(unsigned what);

/* arn_post with a fresh negative waiter id (written to *id); the task's host
 * reference belongs to the table from then on.  The AR_* codes of arn_post;
 * AR_ENOMEM also when the table cannot grow. */
AR_API int arn_post_parked(ar_queue *q, const char *method, size_t mlen, const char *req,
                           size_t rlen, int32_t *id);

/* The owner's drain: d is a completion with d->id < 0.  It stays here until
 * its caller takes it; if the caller is gone the task is released now. */
AR_API void arn_park(const arn_done *d);

/* 1: id's completion is in *out (the caller now owns out->task); 0: not yet;
 * -1: no such call (never posted, or taken or forgotten already). */
AR_API int arn_parked_take(int32_t id, arn_done *out);

/* The caller gave up on id (see above).  Unknown ids are ignored. */
AR_API void arn_parked_forget(int32_t id);

/* ffi.gc finalizer form: forgets *cell unless it is 0. */
AR_API void arn_parked_forget_cell(int32_t *cell);

/* Parks every completion of a parked call that arrived (arn_drain_parked +
 * arn_park), leaving the owner's completions in place.  Returns how many. */
AR_API int arn_parked_collect(void);

#ifdef __cplusplus
}
#endif

#endif
