/*
 * aioresty_core.h - the native task-queue core of aioresty.
 *
 * Three audiences, three sections:
 *
 *   1. Runtimes (any language): lua-resty-ffi's runtime C ABI, unchanged.
 *      A runtime library exports `int libffi_init(char *cfg, void *tq)` and
 *      serves the queue `tq` with ngx_http_lua_ffi_task_poll / _get_req /
 *      _respond.  Go, Rust or C runtimes written for lua-resty-ffi load as is.
 *   2. Async runtimes (aioresty's Python runtime): extensions on the same
 *      queue - a wake-up eventfd, a non-blocking batch drain that also
 *      reports aborted tasks, the method name and id of each task.
 *   3. Hosts (the C test host, the Envoy module, the nginx adapter, Lua via
 *      LuaJIT ffi): load runtimes through the registry, create and post
 *      tasks, get each answer back through a completion sink.
 *
 * Threads.  Every function here is thread-safe.  Hosts post from their own
 * threads; runtimes poll/drain/respond from theirs; a task's completion sink
 * runs on the thread that called ngx_http_lua_ffi_respond.
 *
 * Ownership - who frees what:
 *   - ar_queue (the `tq`): reference counted.  The registry holds one
 *     reference while the runtime is loaded; the runtime side holds one until
 *     ngx_http_lua_ffi_task_poll returned NULL (or ar_queue_drain returned
 *     -1): after that the runtime must not touch tq again.  Hosts that keep
 *     the pointer take their own reference (ar_queue_ref / ar_queue_unref).
 *     Each posted task holds one too, until the task is freed: a runtime may
 *     still answer tasks it took after poll returned NULL.
 *   - ar_task: reference counted, two references once posted: the host's and
 *     the runtime's.  The runtime's reference ends inside
 *     ngx_http_lua_ffi_respond (do not touch the task after it).  The host's
 *     ends with ar_task_release.  The task is freed with the last reference.
 *   - request bytes: copied into the task by ar_task_new, NUL-terminated,
 *     owned by the task; ngx_http_lua_ffi_get_req returns a borrowed pointer
 *     valid until the runtime responds.
 *   - response bytes: malloc'ed by the runtime and handed over by
 *     ngx_http_lua_ffi_respond; owned by the task from then on and freed
 *     (with free()) together with it.  ar_task_response returns a borrowed
 *     pointer valid until the host releases the task.
 *   - cfg passed to libffi_init: owned by the registry, valid only during the
 *     call; a runtime that needs it later must copy it.
 *   - the completion sink (ar_sink) and its ctx: owned by the host and must
 *     outlive every task posted with it.  ar_task_done turns true just
 *     before the sink runs, so seeing an answer does not mean the sink has
 *     returned: keep what the sink touches alive for the host's lifetime, or
 *     reference-count it from host_data and drop that reference inside the
 *     sink (as the Envoy module does).  host_data is opaque to the core.
 */
#ifndef AIORESTY_CORE_H
#define AIORESTY_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AR_API __attribute__((visibility("default")))

typedef struct ar_queue ar_queue;
typedef struct ar_task ar_task;

/* ---------------------------------------------------------------------------
 * 1. lua-resty-ffi runtime ABI (exact semantics of lua-resty-ffi)
 * ------------------------------------------------------------------------ */

/* Signature a runtime library exports.  0 = success.  `tq` is an ar_queue. */
typedef int (*ar_libffi_init_fn)(char *cfg, void *tq);

/* Blocks until a task is queued.  Returns NULL once the runtime was unloaded
 * and every task posted before the unload was handed out: stop using tq. */
AR_API void *ngx_http_lua_ffi_task_poll(void *tq);

/* The request bytes of a task (owned by the task, NUL-terminated). `len` may
 * be NULL. */
AR_API char *ngx_http_lua_ffi_get_req(void *task, int *len);

/* Answers a task.  rc 0 = success.  rsp is malloc'ed by the runtime (or NULL)
 * and is freed by the core; rsp_len 0 with a non-NULL rsp means rsp is a
 * NUL-terminated string.  Runs the task's completion sink on this thread,
 * then drops the runtime's reference: the task must not be used afterwards.
 * A second respond on the same task is ignored (and its rsp freed). */
AR_API void ngx_http_lua_ffi_respond(void *task, int rc, char *rsp, int rsp_len);

/* ---------------------------------------------------------------------------
 * 2. Extensions for async runtimes
 * ------------------------------------------------------------------------ */

/* The queue's wake-up eventfd (non-blocking).  It becomes readable when the
 * queue goes from "nothing to drain" to "something to drain" (tasks, abort
 * notices, or the unload); it is written only on that transition.  Calling it
 * also turns on abort notices for tasks already handed out.  The fd is owned
 * by the queue. */
AR_API int ar_queue_fd(ar_queue *q);

/* Non-blocking batch drain, for the thread that watches ar_queue_fd.
 * Resets the eventfd, moves up to `cap` queued tasks into `tasks` (the runtime
 * now holds them and must respond to each) and up to `acap` ids of aborted,
 * already handed-out tasks into `aborted` (*naborted = count; may be NULL
 * when acap is 0).  Returns the number of tasks, or -1 when the queue was
 * unloaded and is empty: the runtime's reference is dropped, stop using q.
 * If a cap was hit the eventfd is re-armed so the caller comes back. */
AR_API int ar_queue_drain(ar_queue *q, ar_task **tasks, int cap, uint64_t *aborted, int acap,
                          int *naborted);

/* The method the Lua side called (`runtime:<method>(req)`); never NULL. */
AR_API const char *ar_task_method(const ar_task *t, size_t *len);

/* The request bytes (same as ngx_http_lua_ffi_get_req, with a size_t). */
AR_API const char *ar_task_request(const ar_task *t, size_t *len);

/* Process-unique id of a posted task (used in abort notices). */
AR_API uint64_t ar_task_id(const ar_task *t);

/* 1 once the host gave up waiting (client gone, timeout). */
AR_API int ar_task_aborted(const ar_task *t);

/* Why libffi_init failed, for the host's load error: a runtime calls it on
 * its tq before returning non-zero, and the registry appends the message
 * (copied; the queue owns the copy) to the error ar_runtime_load reports. */
AR_API void ar_queue_set_error(ar_queue *q, const char *msg);

/* The message set by ar_queue_set_error, copied into out (NUL-terminated,
 * cut to outlen - 1); returns its length, 0 when none. */
AR_API size_t ar_queue_error(ar_queue *q, char *out, size_t outlen);

/* ---------------------------------------------------------------------------
 * 3. Hosts
 * ------------------------------------------------------------------------ */

/* Error codes (negative). */
enum {
    AR_OK = 0,
    AR_EFULL = -1,     /* max_queue tasks are already waiting */
    AR_ECLOSED = -2,   /* the runtime was unloaded */
    AR_ENOMEM = -3,
    AR_EINVAL = -4,
    AR_ELOAD = -5,     /* library not found / no libffi_init / init failed */
};

/* The words of an error code, as lua-resty-ffi's Lua side says them
 * ("post failed, queue full", "task queue is finished", ...): the one text
 * every host and adapter returns for it.  Never NULL. */
AR_API const char *ar_strerror(int code);

/* The rc values aioresty's own runtimes answer with (docs/core.md "Answer
 * codes"); lua-resty-ffi leaves rc to each runtime, 0 meaning success.  The
 * Python runtime (aioresty._native), the Envoy module and Lua read them
 * from here. */
enum {
    AR_RC_OK = 0,
    AR_RC_ERROR = 1,        /* the handler raised */
    AR_RC_NO_METHOD = 2,    /* no handler for the called method */
    AR_RC_TIMEOUT = 3,      /* the call ran longer than its timeout */
    AR_RC_BAD_REQUEST = 4,  /* the payload could not be decoded by the handler's codec */
    AR_RC_BAD_RESULT = 5,   /* the result could not be encoded (or is over AR_ANSWER_MAX) */
    AR_RC_CANCELLED = 6,    /* the caller went away, or the runtime was shut down */
};

/* Completion sink: `complete` runs exactly once per successfully posted task,
 * on the thread that answered it, after the response is stored.  It must be
 * quick and must not block (hand the task over to the host's own thread).
 * The host still owns its reference: it reads the answer and releases the
 * task later, on its own thread. */
typedef struct ar_sink {
    void (*complete)(ar_task *t, void *ctx);
    void *ctx;
} ar_sink;

/* Load flags. */
enum {
    AR_LOAD_GLOBAL = 1, /* dlopen the runtime library RTLD_GLOBAL (is_global) */
    AR_LOAD_UNPIN = 2,  /* dlclose it once the runtime acknowledged its unload */
    AR_LOAD_OPTIONS = 4, /* the caller gave is_global/unpin explicitly: a load of an
                            already loaded key with other flags is warned about */
};

/* Registry.  Returns the runtime's queue for the key `lib&cfg`, loading it on
 * first use: dlopen (the file ar_runtime_path names, found as below),
 * dlsym libffi_init, call it with a private copy of cfg.  The caller gets a
 * new reference (ar_queue_unref).  max_queue <= 0 means 65536 (and "no
 * preference" for a loaded key).  The first load's max_queue and flags win:
 * a later load of the same key asking for others (max_queue > 0; flags with
 * AR_LOAD_OPTIONS) gets the loaded runtime and one warning naming both.
 * On failure returns NULL and writes a message into err (errlen bytes).  A
 * failed load is remembered per key: loads of that key within its backoff
 * (1 s, doubling per failed attempt up to 10 s) fail at once with the same
 * message plus "(failed Xs ago; next attempt in Ys)", without running the
 * runtime's libffi_init again. */
AR_API ar_queue *ar_runtime_load(const char *lib, const char *cfg, int max_queue, int flags,
                                 char *err, size_t errlen);

/* Unload: no new posts (AR_ECLOSED), the tasks already queued are still
 * handed out, then the runtime sees NULL / -1.  Removes the entry from the
 * registry, so the next ar_runtime_load of the same key loads afresh.
 * Idempotent. */
AR_API void ar_runtime_unload(ar_queue *q);

/* Unloads every runtime in the registry (host shutdown). */
AR_API void ar_runtime_unload_all(void);

/* Which file `lib` is (docs/core.md "Runtime libraries"), in this order:
 *   - a path (it has a '/'): absolute as given; relative to the first entry
 *     of $AIORESTY_LIB_PATH, never to the proxy's working directory;
 *   - a name: its file name as LuaJIT's ffi.load makes it ("echo" and
 *     "echo.so" -> "libecho.so", "libecho.so" as is), looked up in each
 *     $AIORESTY_LIB_PATH directory (':'-separated), then by the dynamic
 *     linker (LD_LIBRARY_PATH, ld.so.cache, ...), and only then next to
 *     libaioresty_core.so (the runtimes aioresty bundles).
 * The registry logs the file each runtime was loaded from. */

/* The file the loaded runtime of q came from (absolute) into out; AR_OK, or
 * AR_ECLOSED when q is not a loaded runtime's queue. */
AR_API int ar_runtime_path(ar_queue *q, char *out, size_t outlen);

/* Limits, the same on every host and mode (docs/core.md "Limits"); hosts
 * and Lua read them from here (ar_limits).  A method name is
 * 0..AR_METHOD_MAX bytes without NUL.  An answer longer than AR_ANSWER_MAX
 * bytes (the stock Envoy bridge carries at most that) is replaced by the
 * core with rc AR_RC_TOO_LARGE and a message naming the method and the size
 * (the rc aioresty apps answer a result they cannot encode with).  A queue holds
 * at most max_queue waiting tasks, AR_DEFAULT_MAX_QUEUE unless loaded with
 * another.  Every call of every host is bounded: AR_DEFAULT_TIMEOUT_MS when
 * neither the call nor its runtime sets a timeout. */
enum {
    AR_METHOD_MAX = 127,
    AR_ANSWER_MAX = 32 * 1024 * 1024,
    AR_RC_TOO_LARGE = AR_RC_BAD_RESULT,
    AR_DEFAULT_MAX_QUEUE = 65536,
    AR_DEFAULT_TIMEOUT_MS = 60000,  /* a call's bound when nothing sets one */
};
typedef struct ar_limits_t {
    int method_max, answer_max, rc_too_large, default_max_queue, default_timeout_ms;
} ar_limits_t;
AR_API void ar_limits(ar_limits_t *out);

/* One log line from the core ("aioresty: ..." on stderr, which the proxies
 * put in their log; hosts may route it elsewhere with ar_set_logger).
 * Levels: 0 debug, 1 info, 2 warning, 3 error. */
typedef void (*ar_logger_fn)(int level, const char *line);
typedef int (*ar_log_enabled_fn)(int level);
AR_API void ar_log(int level, const char *line);
AR_API int ar_log_enabled(int level);               /* 1: the host keeps this level */
AR_API void ar_set_logger(ar_logger_fn fn);
AR_API void ar_set_log_enabled(ar_log_enabled_fn fn);

/* A queue outside the registry, for in-process hosts that start a runtime
 * on it themselves (aioresty.testing): the caller holds one reference and
 * the runtime side one (dropped as for a loaded runtime).  Stop it with
 * ar_runtime_unload.  NULL on out-of-memory.  max_queue <= 0 means 65536. */
AR_API ar_queue *ar_queue_new(int max_queue);

AR_API void ar_queue_ref(ar_queue *q);
AR_API void ar_queue_unref(ar_queue *q);
AR_API int ar_queue_closed(const ar_queue *q);    /* 1 after unload */
AR_API int ar_queue_pending(ar_queue *q);         /* tasks waiting to be taken */

/* A new task (host reference only).  Copies method and request.  host_data is
 * the host's, untouched by the core.  NULL on out-of-memory. */
AR_API ar_task *ar_task_new(const char *method, size_t method_len, const char *req, size_t req_len,
                            const ar_sink *sink, void *host_data);

/* Posts a task.  AR_OK: the runtime now holds its reference and the sink will
 * run once.  AR_EFULL / AR_ECLOSED: nothing happened, the sink will not run,
 * the host still owns the task (release it). */
AR_API int ar_task_post(ar_queue *q, ar_task *t);

/* As ar_task_post, but wakes no one: on AR_OK *wake is 1 when the runtime
 * may sleep with this task queued, and the host then owes it one
 * ar_queue_wake(q), soon.  For hosts that post many tasks per event-loop
 * iteration (the Envoy module) and wake each runtime once at its end. */
AR_API int ar_task_post_nowake(ar_queue *q, ar_task *t, int *wake);

/* Wakes q's runtime: its eventfd if a wake is still pending, and the threads
 * waiting in ngx_http_lua_ffi_task_poll (one per queued task).  Any thread. */
AR_API void ar_queue_wake(ar_queue *q);

/* Host gives up waiting: marks the task aborted and, if the runtime already
 * took it and watches abort notices, queues a notice for it.  The sink still
 * runs when the runtime answers.  Does not release the host's reference. */
AR_API void ar_task_abort(ar_task *t);

AR_API int ar_task_done(const ar_task *t);       /* 1 once answered */
AR_API int ar_task_rc(const ar_task *t);
/* The answer; NULL when the runtime answered NULL.  Length resolved (the
 * NUL-terminated form of a 0 rsp_len is measured). */
AR_API const char *ar_task_response(const ar_task *t, size_t *len);
AR_API void *ar_task_host_data(const ar_task *t);
AR_API void ar_task_release(ar_task *t);

/* The stock Envoy bridge's call authority (native/envoy/bridge.c): the Lua
 * adapter names a runtime by "<id>.<secret>" - the registry entry's id
 * (process-unique, never reused) and a per-process 128-bit random secret -
 * so a request from outside the process (a route that lets clients pick the
 * bridge cluster) can name no runtime, and nothing parses a pointer.
 * ar_bridge_authority writes q's authority into out (AR_OK; AR_ECLOSED when
 * q is not loaded).  ar_bridge_resolve returns a new reference to the queue
 * an authority names, or NULL with *why: AR_BRIDGE_MALFORMED,
 * AR_BRIDGE_FORBIDDEN (wrong secret) or AR_BRIDGE_UNKNOWN (no such runtime,
 * or unloaded).  Any thread. */
enum { AR_BRIDGE_MALFORMED = 1, AR_BRIDGE_FORBIDDEN = 2, AR_BRIDGE_UNKNOWN = 3 };
#define AR_BRIDGE_AUTHORITY_MAX 64
AR_API int ar_bridge_authority(ar_queue *q, char *out, size_t outlen);
AR_API ar_queue *ar_bridge_resolve(const char *authority, size_t len, int *why);

/* The process is exiting (atexit): the hosts' objects may be gone already
 * (nginx closed its Lua VM, Envoy destroyed its workers), so from now on
 * answers are stored but no completion sink runs, and ar_log writes to
 * stderr instead of the host's logger.  Runtimes can then be unloaded at
 * exit (their shutdown hooks run) without touching a host.
 * Irreversible; any thread. */
AR_API void ar_hosts_gone(void);

/* ---------------------------------------------------------------------------
 * 4. Metrics (metrics.c; docs/operations.md "Metrics")
 *
 * One process-wide table, the single source every exporter reads: the
 * Envoy module copies it into Envoy stats, nginx renders it on its
 * Prometheus endpoint (summed over workers), Python reads it too.  The core
 * records every call itself: a post counts in calls_total (or in
 * rejected_total when the queue refused it), its answer in answers_total by
 * rc and in call_time_us (from the post to the respond, in microseconds);
 * in_flight is posted minus answered.  Methods are labelled as called, up
 * to AR_METRIC_METHODS distinct ones per runtime; later ones share the
 * method "(other)".  The runtime label is the registry key up to its first
 * blank ("aioresty&shop.handlers", "echo"), "" for ar_queue_new queues.
 * Runtimes add their loop lag; applications add their own metrics
 * (app_* families) through ar_metric_series.  Any thread.
 * ------------------------------------------------------------------------ */

enum { AR_METRIC_COUNTER = 0, AR_METRIC_GAUGE = 1, AR_METRIC_HISTOGRAM = 2 };
enum {
    AR_METRIC_METHODS = 64,      /* distinct method labels per runtime */
    AR_METRIC_APP_SERIES = 1024, /* application series per process */
    AR_METRIC_BUCKETS_MAX = 32,  /* histogram bounds (+Inf is implied) */
    AR_METRIC_LABELS_MAX = 3,
};

/* The families, in a fixed order (ar_sample.family indexes this table).
 * Exported names are "aioresty_" + name on Prometheus, "aioresty." + name
 * in Envoy.  labels: the label names, in the order of ar_sample.values. */
typedef struct ar_family {
    const char *name;
    int kind;                    /* AR_METRIC_* */
    int nlabels;
    const char *labels[AR_METRIC_LABELS_MAX];
    const char *help;
} ar_family;
AR_API int ar_metric_families(const ar_family **out);   /* returns the count */

/* The call histogram's bucket upper bounds in microseconds (ascending;
 * +Inf is implied): *out points at a static table, the count is returned. */
AR_API int ar_metric_call_bounds(const double **out);

/* One series as an exporter sees it.  Every pointer is valid during the
 * callback only.  Counters and gauges: `value`.  Histograms: counts[i] for
 * bounds[i] (not cumulative), counts[nbounds] for +Inf, and `sum`. */
typedef struct ar_sample {
    int family;
    const char *values[AR_METRIC_LABELS_MAX];
    double value;
    int nbounds;
    const double *bounds;
    const uint64_t *counts;
    double sum;
} ar_sample;
typedef void (*ar_sample_fn)(const ar_sample *s, void *ud);

/* Every series with its totals (counters and histograms since the process
 * started or the runtime loaded; gauges as they are now). */
AR_API void ar_metrics_each(ar_sample_fn fn, void *ud);

/* As ar_metrics_each, but counters and histogram counts/sums are what was
 * added since the previous ar_metrics_take (series without a change are
 * skipped; gauges always come).  For the one exporter that needs deltas
 * (the Envoy module); calls are serialised. */
AR_API void ar_metrics_take(ar_sample_fn fn, void *ud);

/* The table as Prometheus text (version 0.0.4) into out: the length the
 * whole text needs (as snprintf; out holds a NUL-terminated prefix when cap
 * is smaller). */
AR_API size_t ar_metrics_prometheus(char *out, size_t cap);

/* The runtime of q reports its event loop's lag (loop_lag_us). */
AR_API void ar_queue_set_loop_lag(ar_queue *q, double us);

/* An application series: family app_counter_total / app_gauge /
 * app_histogram by kind, labels runtime (q's, "" when q is NULL), name and
 * labels (the application's own "k=v,k=v" text).  Histograms take bounds
 * (ascending, 1..AR_METRIC_BUCKETS_MAX).  The same arguments give the same
 * handle.  Returns a handle >= 0, or -1 when the table is full
 * (AR_METRIC_APP_SERIES), on a bad argument or out of memory. */
AR_API int ar_metric_series(ar_queue *q, int kind, const char *name, const char *labels,
                            const double *bounds, int nbounds);
/* Counter: adds value (>= 0).  Gauge: adds value.  Histogram: observes it. */
AR_API void ar_metric_add(int handle, double value);
/* Gauge: sets it. */
AR_API void ar_metric_set(int handle, double value);

/* Diagnostics, for leak tests. */
AR_API long ar_tasks_alive(void);
AR_API long ar_queues_alive(void);

#ifdef __cplusplus
}
#endif
#endif /* AIORESTY_CORE_H */
