/*
 * _native.c - aioresty._native: the runtime thread's glue to the core queue
 * (CPython C-API; measured 1.5x faster than cffi for this hot path).
 *
 * The runtime's loop thread calls the runtime half (drain, respond...).
 * Task pointers travel through Python as ints; each one handed out by drain()
 * must be answered exactly once with respond(), after which it is gone (the
 * core frees it).  The host_* half is an in-process host for aioresty.testing,
 * called on the test's own loop thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "aioresty_core.h"

#define DRAIN_CAP 512

static ar_queue *queue_arg(PyObject *o)
{
    void *p = PyLong_AsVoidPtr(o);
    if (!p && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "NULL task queue");
    return p;
}

static PyObject *nat_queue_fd(PyObject *self, PyObject *tq)
{
    (void)self;
    ar_queue *q = queue_arg(tq);
    if (!q) return NULL;
    return PyLong_FromLong(ar_queue_fd(q));
}

/* drain(tq) -> ([(task, id, method, payload, aborted), ...], [aborted_id, ...])
 *              or None once the queue was unloaded and is empty. */
static PyObject *nat_drain(PyObject *self, PyObject *tq)
{
    (void)self;
    ar_task *tasks[DRAIN_CAP];
    uint64_t aborted[DRAIN_CAP];
    int na = 0;
    ar_queue *q = queue_arg(tq);
    if (!q) return NULL;
    int n = ar_queue_drain(q, tasks, DRAIN_CAP, aborted, DRAIN_CAP, &na);
    if (n < 0) Py_RETURN_NONE;
    PyObject *lt = PyList_New(n), *la = PyList_New(na);
    if (!lt || !la) goto fail;
    /* Calls in one batch mostly share a method: reuse the previous str. */
    PyObject *last_m = NULL;
    const char *last_mp = NULL;
    size_t last_ml = 0;
    for (int i = 0; i < n; i++) {
        size_t ml, rl;
        const char *m = ar_task_method(tasks[i], &ml);
        const char *r = ar_task_request(tasks[i], &rl);
        PyObject *it = PyTuple_New(5);
        if (!it) goto fail;
        PyList_SET_ITEM(lt, i, it);
        PyObject *meth;
        if (last_m && ml == last_ml && memcmp(m, last_mp, ml) == 0) {
            meth = Py_NewRef(last_m);
        } else {
            meth = PyUnicode_DecodeUTF8(m, (Py_ssize_t)ml, "replace");
            last_m = meth;
            last_mp = m;
            last_ml = ml;
        }
        PyObject *task = PyLong_FromVoidPtr(tasks[i]);
        PyObject *id = PyLong_FromUnsignedLongLong(ar_task_id(tasks[i]));
        PyObject *payload = PyBytes_FromStringAndSize(r, (Py_ssize_t)rl);
        PyObject *ab = PyBool_FromLong(ar_task_aborted(tasks[i]));
        PyTuple_SET_ITEM(it, 0, task);
        PyTuple_SET_ITEM(it, 1, id);
        PyTuple_SET_ITEM(it, 2, meth);
        PyTuple_SET_ITEM(it, 3, payload);
        PyTuple_SET_ITEM(it, 4, ab);
        if (!task || !id || !meth || !payload) goto fail;
    }
    for (int i = 0; i < na; i++) {
        PyObject *id = PyLong_FromUnsignedLongLong(aborted[i]);
        if (!id) goto fail;
        PyList_SET_ITEM(la, i, id);
    }
    return Py_BuildValue("(NN)", lt, la);
fail:
    /* Out of memory with tasks in hand: answer them so no host waits forever. */
    for (int i = 0; i < n; i++) ngx_http_lua_ffi_respond(tasks[i], AR_ENOMEM, NULL, 0);
    Py_XDECREF(lt);
    Py_XDECREF(la);
    return NULL;
}

/* respond(task, rc, data) - data: bytes-like, str (UTF-8) or None (nil).
 * Returns: the task was answered (out of memory answers AR_ENOMEM).  Raises
 * (bad arguments, a str that is not UTF-8, over 2 GiB): NOT answered - the
 * caller still owes the answer (aioresty/runtime.py's _reply does it). */
static PyObject *nat_respond(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    const char *buf = NULL;
    Py_ssize_t len = 0;
    Py_buffer view = {0};
    int have_view = 0;
    char *rsp = NULL;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "respond(task, rc, data)");
        return NULL;
    }
    void *task = PyLong_AsVoidPtr(args[0]);
    long rc = PyLong_AsLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    if (!task) {
        PyErr_SetString(PyExc_ValueError, "NULL task");
        return NULL;
    }
    PyObject *data = args[2];
    if (data == Py_None) {
        buf = NULL;
    } else if (PyBytes_CheckExact(data)) {
        buf = PyBytes_AS_STRING(data);
        len = PyBytes_GET_SIZE(data);
    } else if (PyUnicode_Check(data)) {
        buf = PyUnicode_AsUTF8AndSize(data, &len);
        if (!buf) return NULL;
    } else {
        if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
        have_view = 1;
        buf = view.buf;
        len = view.len;
    }
    if (len > INT32_MAX) {
        if (have_view) PyBuffer_Release(&view);
        PyErr_SetString(PyExc_OverflowError, "response larger than 2 GiB");
        return NULL;
    }
    if (data != Py_None) {
        /* The host frees it (free()); NUL-terminated so rsp_len 0 reads "". */
        rsp = malloc((size_t)len + 1);
        if (!rsp) {                       /* answered all the same: returns normally */
            if (have_view) PyBuffer_Release(&view);
            ngx_http_lua_ffi_respond(task, AR_ENOMEM, NULL, 0);
            Py_RETURN_NONE;
        }
        if (len) memcpy(rsp, buf, (size_t)len);
        rsp[len] = '\0';
    }
    if (have_view) PyBuffer_Release(&view);
    ngx_http_lua_ffi_respond(task, (int)rc, rsp, (int)len);
    Py_RETURN_NONE;
}

/* set_thread_name(name): the calling thread's OS name (top -H, /proc/.../comm),
 * cut to the kernel's 15 bytes. */
static PyObject *nat_set_thread_name(PyObject *self, PyObject *name)
{
    (void)self;
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(name, &len);
    if (!s) return NULL;
    char buf[16];
    size_t n = (size_t)len < sizeof buf - 1 ? (size_t)len : sizeof buf - 1;
    memcpy(buf, s, n);
    buf[n] = '\0';
    pthread_setname_np(pthread_self(), buf);    /* only ERANGE, excluded above */
    Py_RETURN_NONE;
}

static PyObject *nat_unload(PyObject *self, PyObject *tq)
{
    (void)self;
    ar_queue *q = queue_arg(tq);
    if (!q) return NULL;
    /* the registry lock: a load holds it while it waits for the GIL */
    Py_BEGIN_ALLOW_THREADS
    ar_runtime_unload(q);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *nat_hosts_gone(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    ar_hosts_gone();
    Py_RETURN_NONE;
}

static PyObject *nat_queue_closed(PyObject *self, PyObject *tq)
{
    (void)self;
    ar_queue *q = queue_arg(tq);
    if (!q) return NULL;
    return PyBool_FromLong(ar_queue_closed(q));
}

static PyObject *nat_queue_ref(PyObject *self, PyObject *tq)
{
    (void)self;
    ar_queue *q = queue_arg(tq);
    if (!q) return NULL;
    ar_queue_ref(q);
    Py_RETURN_NONE;
}

static PyObject *nat_queue_unref(PyObject *self, PyObject *tq)
{
    (void)self;
    ar_queue *q = queue_arg(tq);
    if (!q) return NULL;
    ar_queue_unref(q);
    Py_RETURN_NONE;
}

/* queue_new() -> tq: a queue outside the registry (aioresty.testing); the
 * caller's reference is dropped with queue_unref, the runtime's at drain -1. */
static PyObject *nat_queue_new(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    ar_queue *q = ar_queue_new(0);
    if (!q) return PyErr_NoMemory();
    return PyLong_FromVoidPtr(q);
}

/* set_error(tq, msg): why libffi_init fails, for the host's load error. */
static PyObject *nat_set_error(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_error(tq, msg)");
        return NULL;
    }
    ar_queue *q = queue_arg(args[0]);
    if (!q) return NULL;
    const char *msg = PyUnicode_AsUTF8(args[1]);
    if (!msg) return NULL;
    ar_queue_set_error(q, msg);
    Py_RETURN_NONE;
}

/* log(level, line): one line into the proxy's log (core ar_log; 0 debug,
 * 1 info, 2 warning, 3 error).  The GIL is released: the host's logger may
 * take its own locks. */
static PyObject *nat_log(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "log(level, line)");
        return NULL;
    }
    int level = (int)PyLong_AsLong(args[0]);
    if (level == -1 && PyErr_Occurred()) return NULL;
    const char *line = PyUnicode_AsUTF8(args[1]);
    if (!line) return NULL;
    Py_BEGIN_ALLOW_THREADS
    ar_log(level, line);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* log_enabled(level) -> whether the proxy keeps lines of that level. */
static PyObject *nat_log_enabled(PyObject *self, PyObject *arg)
{
    (void)self;
    int level = (int)PyLong_AsLong(arg);
    if (level == -1 && PyErr_Occurred()) return NULL;
    return PyBool_FromLong(ar_log_enabled(level));
}

/* ------------------------------------------------------------ local host
 * An in-process host for aioresty.testing: posts tasks to a queue the way
 * the proxies do and collects the answers on the caller's loop.
 *   - the completion sink runs on the runtime thread (inside respond): it only
 *     appends the task to `done` (room reserved at post time, so it never
 *     allocates) and writes the eventfd on the empty -> non-empty transition;
 *   - the host's reference of each task is dropped by host_collect, on the
 *     caller's thread, after copying the answer out;
 *   - the local_host outlives every task posted with it: host_free refuses
 *     while tasks are in flight. */
typedef struct local_host {
    pthread_mutex_t mu;
    ar_task **done;             /* answered, not yet collected; owned here */
    size_t ndone;
    size_t cap;                 /* room in done: >= tasks in flight */
    size_t inflight;            /* posted and not yet collected */
    int efd;                    /* readable while done is non-empty */
    ar_sink sink;
} local_host;

static void lh_complete(ar_task *t, void *ctx)
{
    local_host *h = ctx;
    pthread_mutex_lock(&h->mu);
    h->done[h->ndone++] = t;                 /* cap >= inflight >= ndone */
    int first = h->ndone == 1;
    pthread_mutex_unlock(&h->mu);
    if (first) {
        uint64_t one = 1;
        ssize_t n;
        do {
            n = write(h->efd, &one, sizeof one);
        } while (n < 0 && errno == EINTR);
    }
}

static local_host *host_arg(PyObject *o)
{
    void *p = PyLong_AsVoidPtr(o);
    if (!p && !PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "NULL host");
    return p;
}

/* host_new() -> (host, fd) */
static PyObject *nat_host_new(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    local_host *h = calloc(1, sizeof *h);
    if (!h) return PyErr_NoMemory();
    h->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (h->efd < 0) {
        free(h);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    pthread_mutex_init(&h->mu, NULL);
    h->sink.complete = lh_complete;
    h->sink.ctx = h;
    return Py_BuildValue("(Ni)", PyLong_FromVoidPtr(h), h->efd);
}

/* host_post(host, tq, method, payload) -> task, or raises ConnectionError
 * (runtime unloaded), BlockingIOError (queue full). */
static PyObject *nat_host_post(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 || !PyBytes_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "host_post(host, tq, method, payload: bytes)");
        return NULL;
    }
    local_host *h = host_arg(args[0]);
    if (!h) return NULL;
    ar_queue *q = queue_arg(args[1]);
    if (!q) return NULL;
    Py_ssize_t ml;
    const char *m = PyUnicode_AsUTF8AndSize(args[2], &ml);
    if (!m) return NULL;
    pthread_mutex_lock(&h->mu);
    if (h->cap < h->inflight + 1) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        ar_task **d = realloc(h->done, cap * sizeof *d);
        if (!d) {
            pthread_mutex_unlock(&h->mu);
            return PyErr_NoMemory();
        }
        h->done = d;
        h->cap = cap;
    }
    h->inflight++;
    pthread_mutex_unlock(&h->mu);
    ar_task *t = ar_task_new(m, (size_t)ml, PyBytes_AS_STRING(args[3]),
                             (size_t)PyBytes_GET_SIZE(args[3]), &h->sink, NULL);
    int rc = t ? ar_task_post(q, t) : AR_ENOMEM;
    if (rc == AR_OK) return PyLong_FromVoidPtr(t);
    pthread_mutex_lock(&h->mu);
    h->inflight--;
    pthread_mutex_unlock(&h->mu);
    if (t) ar_task_release(t);
    if (rc == AR_ECLOSED) PyErr_SetString(PyExc_ConnectionError, "the runtime was unloaded");
    else if (rc == AR_EFULL) PyErr_SetString(PyExc_BlockingIOError, "the task queue is full");
    else PyErr_NoMemory();
    return NULL;
}

/* host_abort(task): the caller gave up (only for tasks not yet collected). */
static PyObject *nat_host_abort(PyObject *self, PyObject *task)
{
    (void)self;
    void *t = PyLong_AsVoidPtr(task);
    if (!t) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "NULL task");
        return NULL;
    }
    ar_task_abort(t);
    Py_RETURN_NONE;
}

/* host_collect(host) -> [(task, rc, bytes | None), ...]; releases each task. */
static PyObject *nat_host_collect(PyObject *self, PyObject *arg)
{
    (void)self;
    local_host *h = host_arg(arg);
    if (!h) return NULL;
    uint64_t v;
    while (read(h->efd, &v, sizeof v) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&h->mu);
    size_t n = h->ndone;
    ar_task **mine = n ? malloc(n * sizeof *mine) : NULL;
    if (n && !mine) {
        pthread_mutex_unlock(&h->mu);
        return PyErr_NoMemory();          /* left in place: the next collect gets them */
    }
    if (n) memcpy(mine, h->done, n * sizeof *mine);
    h->ndone = 0;
    h->inflight -= n;
    pthread_mutex_unlock(&h->mu);
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; i < n; i++) {
        ar_task *t = mine[i];
        PyObject *item = NULL;
        if (out) {
            size_t len;
            const char *r = ar_task_response(t, &len);
            PyObject *body = r ? PyBytes_FromStringAndSize(r, (Py_ssize_t)len) : Py_NewRef(Py_None);
            item = body ? Py_BuildValue("(NiN)", PyLong_FromVoidPtr(t), ar_task_rc(t), body) : NULL;
            if (item) {
                PyList_SET_ITEM(out, (Py_ssize_t)i, item);
            } else {
                Py_CLEAR(out);
            }
        }
        ar_task_release(t);
    }
    free(mine);
    return out;
}

/* host_free(host): only once nothing is in flight; False otherwise. */
static PyObject *nat_host_free(PyObject *self, PyObject *arg)
{
    (void)self;
    local_host *h = host_arg(arg);
    if (!h) return NULL;
    pthread_mutex_lock(&h->mu);
    size_t busy = h->inflight;
    pthread_mutex_unlock(&h->mu);
    if (busy) Py_RETURN_FALSE;
    close(h->efd);
    pthread_mutex_destroy(&h->mu);
    free(h->done);
    free(h);
    Py_RETURN_TRUE;
}

/* ---- metrics (core section 4) ---- */

/* metric_series(tq | 0, kind, name, labels, bounds) -> handle, -1 when refused */
static PyObject *nat_metric_series(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    double bounds[AR_METRIC_BUCKETS_MAX];
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "metric_series(tq, kind, name, labels, bounds)");
        return NULL;
    }
    void *q = PyLong_AsVoidPtr(args[0]);
    if (!q && PyErr_Occurred()) return NULL;
    int kind = (int)PyLong_AsLong(args[1]);
    if (kind == -1 && PyErr_Occurred()) return NULL;
    const char *name = PyUnicode_AsUTF8(args[2]);
    const char *labels = name ? PyUnicode_AsUTF8(args[3]) : NULL;
    if (!labels) return NULL;
    PyObject *seq = PySequence_Fast(args[4], "bounds must be a sequence of numbers");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > AR_METRIC_BUCKETS_MAX) n = AR_METRIC_BUCKETS_MAX + 1;   /* refused below */
    for (Py_ssize_t i = 0; i < n && i < AR_METRIC_BUCKETS_MAX; i++) {
        bounds[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (bounds[i] == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    return PyLong_FromLong(ar_metric_series(q, kind, name, labels, bounds, (int)n));
}

/* metric_add(handle, value) / metric_set(handle, value) */
static PyObject *metric_update(PyObject *const *args, Py_ssize_t nargs, int set)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "metric_add/metric_set(handle, value)");
        return NULL;
    }
    int h = (int)PyLong_AsLong(args[0]);
    if (h == -1 && PyErr_Occurred()) return NULL;
    double v = PyFloat_AsDouble(args[1]);
    if (v == -1.0 && PyErr_Occurred()) return NULL;
    if (set)
        ar_metric_set(h, v);
    else
        ar_metric_add(h, v);
    Py_RETURN_NONE;
}

static PyObject *nat_metric_add(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return metric_update(args, nargs, 0);
}

static PyObject *nat_metric_set(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    return metric_update(args, nargs, 1);
}

/* set_loop_lag(tq, us) */
static PyObject *nat_set_loop_lag(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_loop_lag(tq, us)");
        return NULL;
    }
    ar_queue *q = queue_arg(args[0]);
    if (!q) return NULL;
    double us = PyFloat_AsDouble(args[1]);
    if (us == -1.0 && PyErr_Occurred()) return NULL;
    ar_queue_set_loop_lag(q, us);
    Py_RETURN_NONE;
}

/* metrics_text() -> the process's table as Prometheus text */
static PyObject *nat_metrics_text(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    size_t cap = 16384, need;
    for (;;) {
        char *buf = malloc(cap);
        if (!buf) return PyErr_NoMemory();
        Py_BEGIN_ALLOW_THREADS
        need = ar_metrics_prometheus(buf, cap);
        Py_END_ALLOW_THREADS
        if (need < cap) {
            PyObject *r = PyUnicode_DecodeUTF8(buf, (Py_ssize_t)need, "replace");
            free(buf);
            return r;
        }
        free(buf);
        cap = need + 4096;                  /* it grew meanwhile: try again */
    }
}

/* metric_families() -> ((name, kind, (label, ...)), ...): the core's table */
static PyObject *nat_metric_families(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    const ar_family *f;
    int n = ar_metric_families(&f);
    PyObject *t = PyTuple_New(n);
    if (!t) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *labels = PyTuple_New(f[i].nlabels);
        if (!labels) {
            Py_DECREF(t);
            return NULL;
        }
        for (int j = 0; j < f[i].nlabels; j++) {
            PyObject *s = PyUnicode_FromString(f[i].labels[j]);
            if (!s) {
                Py_DECREF(labels);
                Py_DECREF(t);
                return NULL;
            }
            PyTuple_SET_ITEM(labels, j, s);
        }
        PyObject *item = Py_BuildValue("(siN)", f[i].name, f[i].kind, labels);
        if (!item) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, item);
    }
    return t;
}

/* metric_call_bounds() -> the call histogram's bounds (microseconds) */
static PyObject *nat_metric_call_bounds(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    const double *b;
    int n = ar_metric_call_bounds(&b);
    PyObject *t = PyTuple_New(n);
    if (!t) return NULL;
    for (int i = 0; i < n; i++) {
        PyObject *v = PyFloat_FromDouble(b[i]);
        if (!v) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, v);
    }
    return t;
}

static PyMethodDef methods[] = {
    {"queue_ref", nat_queue_ref, METH_O, "queue_ref(tq) -> keep the queue alive"},
    {"queue_unref", nat_queue_unref, METH_O, "queue_unref(tq) -> drop a queue_ref"},
    {"queue_fd", nat_queue_fd, METH_O, "queue_fd(tq) -> the queue's wake-up eventfd"},
    {"drain", nat_drain, METH_O, "drain(tq) -> (tasks, aborted_ids) or None when unloaded"},
    {"respond", (PyCFunction)(void (*)(void))nat_respond, METH_FASTCALL,
     "respond(task, rc, data) -> answer a drained task exactly once"},
    {"set_thread_name", nat_set_thread_name, METH_O,
     "set_thread_name(name) -> name the calling OS thread (15 bytes kept)"},
    {"unload", nat_unload, METH_O, "unload(tq) -> unload the runtime (stops intake)"},
    {"hosts_gone", nat_hosts_gone, METH_NOARGS, "hosts_gone() -> no completion sink runs again"},
    {"queue_closed", nat_queue_closed, METH_O, "queue_closed(tq) -> True once unloaded"},
    {"queue_new", nat_queue_new, METH_NOARGS, "queue_new() -> a queue outside the registry"},
    {"set_error", (PyCFunction)(void (*)(void))nat_set_error, METH_FASTCALL,
     "set_error(tq, msg) -> say why libffi_init fails"},
    {"log", (PyCFunction)(void (*)(void))nat_log, METH_FASTCALL,
     "log(level, line) -> one line into the proxy's log"},
    {"log_enabled", nat_log_enabled, METH_O, "log_enabled(level) -> the proxy keeps it"},
    {"metric_series", (PyCFunction)(void (*)(void))nat_metric_series, METH_FASTCALL,
     "metric_series(tq, kind, name, labels, bounds) -> handle (-1: refused)"},
    {"metric_add", (PyCFunction)(void (*)(void))nat_metric_add, METH_FASTCALL,
     "metric_add(handle, value) -> counter add / gauge add / histogram observe"},
    {"metric_set", (PyCFunction)(void (*)(void))nat_metric_set, METH_FASTCALL,
     "metric_set(handle, value) -> set a gauge"},
    {"set_loop_lag", (PyCFunction)(void (*)(void))nat_set_loop_lag, METH_FASTCALL,
     "set_loop_lag(tq, us) -> the runtime's event-loop lag"},
    {"metrics_text", nat_metrics_text, METH_NOARGS, "metrics_text() -> Prometheus text"},
    {"metric_families", nat_metric_families, METH_NOARGS,
     "metric_families() -> ((name, kind, labels), ...) of the core's table"},
    {"metric_call_bounds", nat_metric_call_bounds, METH_NOARGS,
     "metric_call_bounds() -> the call histogram's bounds in microseconds"},
    {"host_new", nat_host_new, METH_NOARGS, "host_new() -> (host, fd): an in-process host"},
    {"host_post", (PyCFunction)(void (*)(void))nat_host_post, METH_FASTCALL,
     "host_post(host, tq, method, payload) -> task"},
    {"host_abort", nat_host_abort, METH_O, "host_abort(task) -> the caller gave up"},
    {"host_collect", nat_host_collect, METH_O, "host_collect(host) -> [(task, rc, body)]"},
    {"host_free", nat_host_free, METH_O, "host_free(host) -> False while tasks are in flight"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "aioresty._native", "aioresty's glue to the native task queue", -1,
    methods, NULL, NULL, NULL, NULL,
};

/* The core's constants Python shares (aioresty_core.h is their one source). */
PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    static const struct { const char *name; int value; } ints[] = {
        {"RC_OK", AR_RC_OK}, {"RC_ERROR", AR_RC_ERROR}, {"RC_NO_METHOD", AR_RC_NO_METHOD},
        {"RC_TIMEOUT", AR_RC_TIMEOUT}, {"RC_BAD_REQUEST", AR_RC_BAD_REQUEST},
        {"RC_BAD_RESULT", AR_RC_BAD_RESULT}, {"RC_CANCELLED", AR_RC_CANCELLED},
        {"METHOD_MAX", AR_METHOD_MAX}, {"ANSWER_MAX", AR_ANSWER_MAX},
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (PyModule_AddIntConstant(m, ints[i].name, ints[i].value) < 0) {
            Py_DECREF(m);
            return NULL;
        }
    }
    return m;
}
