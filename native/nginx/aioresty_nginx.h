/*
 * aioresty_nginx.h - the per-worker waker of aioresty's nginx-lua adapter.
 *
 * Stock nginx-lua cannot take callbacks from foreign threads, so completions
 * reach the worker's event loop through a file descriptor: one unix-socket
 * connection per worker process.  A background ngx.timer holds the nginx
 * end as a cosocket (receiveany); this library holds the other end.
 *
 *   runtime thread                          nginx worker (Lua, one thread)
 *   --------------                          ------------------------------
 *   ngx_http_lua_ffi_respond(task)
 *     -> sink: append {task,id,rc,rsp}
 *        to the completion list;
 *        write one wake byte only when  ->  receiveany() returns
 *        "wake pending" flips 0 -> 1        arn_drain(): clear the flag, swap
 *                                           the list out, post each waiter's
 *                                           ngx.semaphore, release the tasks
 *
 * Threads.  arn_complete (the sink) runs on runtime threads; every other
 * function is called from the worker's single Lua thread only.
 *
 * Ownership - who frees what:
 *   - A task posted with arn_post: the runtime holds its own reference until
 *     it responds; the host reference taken by arn_post belongs to the waker
 *     from then on and is handed to the Lua thread inside the arn_done entry
 *     returned by arn_drain.  The Lua thread must call ar_task_release on
 *     every drained task exactly once (it does so right after copying the
 *     response).  Lua must never release a task it got from arn_post: a
 *     waiter that gives up calls ar_task_abort and lets the drain release it.
 *   - The arn_done arrays belong to the waker.  The array returned by
 *     arn_drain(_parked) is valid until the next of either; its rsp pointers are
 *     borrowed from the tasks (valid until each task is released).
 *   - The socket file exists only between arn_listen and arn_accept (it is
 *     unlinked, and its private 0700 directory removed, as soon as the
 *     worker's own connection is accepted), and an atexit handler removes it
 *     if the process exits in between.
 *
 * Processes.  The waker belongs to the process that first used it.  After a
 * fork every entry point notices the changed pid, forgets the parent's state
 * (without touching the parent's tasks) and starts afresh.
 */
#ifndef AIORESTY_NGINX_H
#define AIORESTY_NGINX_H

#include <stddef.h>
#include <stdint.h>

#include "aioresty_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* One completion, filled on the runtime thread by the sink.  Layout is
 * mirrored by the ffi.cdef in lua/aioresty/nginx.lua: keep them in sync. */
typedef struct arn_done {
    ar_task *task;   /* the host reference: release it (ar_task_release) */
    const char *rsp; /* borrowed from task; NULL when the runtime sent NULL */
    size_t len;
    int32_t id;      /* the Lua waiter id given to arn_post */
    int32_t rc;
} arn_done;

/* Creates a task with the waker's sink, reserves room for its completion and
 * posts it.  AR_OK: *out is the task (its host reference now belongs to the
 * waker, see above).  Otherwise (AR_EFULL, AR_ECLOSED, AR_ENOMEM, AR_EINVAL)
 * nothing was posted and no task is left behind. */
AR_API int arn_post(ar_queue *q, const char *method, size_t mlen, const char *req, size_t rlen,
                    int32_t id, ar_task **out);

/* As arn_post, but wakes no one (ar_task_post_nowake): when the runtime may
 * sleep with the task queued, q goes on a list of queues owed a wake-up (it
 * holds a reference to each) and *flush is set to 1: the caller then owes one
 * arn_flush_wakes() soon, e.g. once at the end of its event-loop iteration,
 * so that N calls posted in one iteration wake each runtime once.  *flush is
 * left alone otherwise.  (When the list is full, q is woken at once.) */
AR_API int arn_post_nowake(ar_queue *q, const char *method, size_t mlen, const char *req,
                           size_t rlen, int32_t id, ar_task **out, int *flush);

/* Wakes every queue arn_post_nowake put on the list (ar_queue_wake) and drops
 * the list's references.  Returns how many were woken. */
AR_API int arn_flush_wakes(void);

/* Creates a private directory (mkdtemp under basedir, or $TMPDIR or /tmp
 * when basedir is NULL/empty; mode 0700, owned by the worker's user) with a
 * listening socket in it.  Writes the socket path into path.  0 or -errno. */
AR_API int arn_listen(const char *basedir, char *path, size_t pathlen);

/* Accepts the connection the worker itself just made to the arn_listen
 * socket (verified with SO_PEERCRED), installs it as the wake fd, then
 * closes the listener and removes the socket file and its directory.
 * Forces one wake so nothing posted while disconnected is missed.
 * 0 or -errno. */
AR_API int arn_accept(void);

/* Takes every completion so far: *out points at `return value` entries,
 * valid until the next arn_drain.  Clears "wake pending" first, so a
 * completion racing with the drain is either in this batch or writes a new
 * wake byte. */
AR_API int arn_drain(arn_done **out);

/* As arn_drain, but takes only the completions of parked calls (id < 0,
 * parked_calls.h) and leaves every other one, and "wake pending", for the
 * next arn_drain.  *out is valid until the next arn_drain or
 * arn_drain_parked. */
AR_API int arn_drain_parked(arn_done **out);

/* ar_task_abort / ar_task_release, re-exported so the Lua adapter needs no
 * declaration of its own for core functions (see lua/aioresty/nginx.lua). */
AR_API void arn_abort(ar_task *t);
AR_API void arn_release(ar_task *t);

/* Unconditional wake byte (graceful exit: unblock the reader). */
AR_API int arn_kick(void);

/* Closes the wake connection (the reader went away) and any listener. */
AR_API void arn_disconnect(void);

/* Tasks posted and not drained yet. */
AR_API long arn_outstanding(void);

/* Counters: posted, completed, wakes written, drains, drained. */
AR_API int arn_stats(char *buf, size_t len);

/* The optional accelerator (native/nginx/accel, docs/nginx.md "The
 * accelerator"): an nginx module that owns an eventfd per worker and resumes
 * waiting coroutines itself.  It calls this library only through the
 * function table arn_accel_ops() returns (Lua hands the pointer over), so it
 * needs no link to it and always uses the copy Lua loaded.  Every function
 * in the table is called on the worker's Lua thread. */
/* 2: post became post_nowake + flush_wakes (one wake per loop iteration). */
#define ARN_ACCEL_ABI 2
typedef struct arn_accel_ops {
    uint32_t abi;  /* ARN_ACCEL_ABI */
    uint32_t size; /* sizeof(arn_accel_ops) */
    int (*post_nowake)(ar_queue *q, const char *method, size_t mlen, const char *req,
                       size_t rlen, int32_t id, ar_task **out, int *flush); /* arn_post_nowake */
    int (*flush_wakes)(void);                             /* arn_flush_wakes */
    int (*drain)(arn_done **out);                         /* arn_drain */
    void (*release)(ar_task *t);                          /* arn_release */
    void (*abort)(ar_task *t);                            /* arn_abort */
    size_t (*take_logs)(const char **out, unsigned long *dropped); /* arn_take_logs */
    int (*set_wake_eventfd)(int fd);                      /* arn_set_wake_eventfd */
} arn_accel_ops;
AR_API const arn_accel_ops *arn_accel_ops_get(void);

/* Wake through an eventfd instead of the unix-socket connection: the sink
 * writes an 8-byte 1 when "wake pending" flips 0 -> 1.  The fd stays the
 * caller's (the accelerator's): arn_disconnect never closes it; -1 detaches
 * it (the accelerator does so before closing it at worker exit).  Forces one
 * wake.  0 or -errno. */
AR_API int arn_set_wake_eventfd(int fd);

/* The core's log lines (ar_log: aioresty's own and Python logging) go to
 * nginx's error log: arn_set_log_level (Lua thread, before the first
 * runtime loads) installs a logger that queues each line kept by ngx_level
 * (the error_log's filter, NGX_LOG_* numbering: 4 error, 5 warn, 6 notice,
 * 7 info, 8 debug) and wakes the worker; arn_take_logs (Lua thread) hands
 * the queued records over - [level 0-3][uint32 length][bytes], valid until
 * the next call - and how many lines were dropped (at most 1 MiB waits).
 * The first line queued after a take writes its own wake, so a wake's
 * handler may take the logs before or after arn_drain.
 * Lines still queued when the worker exits go to stderr. */
AR_API size_t arn_take_logs(const char **out, unsigned long *dropped);
AR_API void arn_set_log_level(int ngx_level);

#ifdef __cplusplus
}
#endif
#endif /* AIORESTY_NGINX_H */
