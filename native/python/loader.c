/*
 * loader.c - aioresty's Python loader: a runtime library exporting
 * libffi_init(cfg, tq).  Built once per Python X.Y as
 * libaioresty_python<X.Y>.so (native/python/build.mk) against that X.Y's
 * headers and linked to no libpython: hosts load it through libaioresty.so /
 * libresty_ffi_python.so (shim.c), which choose the venv and interpreter,
 * load that interpreter's own libpython RTLD_GLOBAL (the Py* symbols here
 * resolve against it), then hand the choice over (aioresty_python_configure).
 *
 * On the first libffi_init of the process it embeds CPython:
 *   - it checks the choice once more: the libpython in the process is the
 *     chosen one and of this loader's X.Y; else it fails, saying why, and
 *     never runs one Python's libpython with another one's stdlib;
 *   - isolated PyConfig, sys.executable = <venv>/bin/python3 (without a venv:
 *     the prefix's pythonX.Y); $PYTHONPATH is honoured (aioresty._boot puts
 *     it in front of sys.path); a venv chosen by $AIORESTY_VENV/$VIRTUAL_ENV
 *     is used as it is (its site-packages, its aioresty), else the aioresty
 *     package holding this library comes first on sys.path;
 *   - the host's signal dispositions are saved before and restored after, so
 *     Python never takes SIGINT/SIGTERM from the proxy;
 *   - the GIL is released before returning: Python runs only on runtime
 *     threads from then on.
 * Then it hands cfg to aioresty._boot, which starts the runtime:
 *   "pkg.module" / "pkg.module:app"    an aioresty app (async def handlers)
 *   "[dir/]module[?],func[,rest]"      a lua-resty-ffi style Python runtime:
 *                                      func(rest_ptr, tq) starts its own
 *                                      polling thread; '?' reloads the module.
 * A bad cfg (missing module, import error, missing function) makes
 * libffi_init return non-zero after logging why on stderr.
 *
 * The cfg buffer belongs to the caller and is only read during the call;
 * legacy runtimes get a pointer into it, as with lua-resty-ffi.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "venv.h"

#define AR_PY_XY Py_STRINGIFY(PY_MAJOR_VERSION) "." Py_STRINGIFY(PY_MINOR_VERSION)

#define LOG_PREFIX "[aioresty] "
#define EXPORT __attribute__((visibility("default")))

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t g_py_pid;              /* process that initialised Python */

static ar_python g_py;              /* the shim's choice (aioresty_python_configure) */
static int g_configured;

/* This library lives in <dir>/aioresty/_lib/: put <dir> first on sys.path so
 * the loader always runs the aioresty package it was built with (this also
 * covers source checkouts and editable installs). */
static void add_own_package_to_path(void)
{
    Dl_info di;
    char path[PATH_MAX], probe[PATH_MAX + 32];
    if (!dladdr((void *)&add_own_package_to_path, &di) || !di.dli_fname) return;
    if (!realpath(di.dli_fname, path)) return;
    for (int up = 0; up < 3; up++) {           /* lib*.so -> _lib -> aioresty -> dir */
        char *slash = strrchr(path, '/');
        if (!slash) return;
        *slash = '\0';
        if (up == 1) {
            snprintf(probe, sizeof probe, "%s/__init__.py", path);
            if (!ar_is_file(probe)) return;
        }
    }
    PyObject *sys_path = PySys_GetObject("path");     /* borrowed */
    PyObject *dir = PyUnicode_DecodeFSDefault(path);
    if (sys_path && dir && PySequence_Contains(sys_path, dir) == 0) PyList_Insert(sys_path, 0, dir);
    Py_XDECREF(dir);
    PyErr_Clear();
}

/* The libpython in the process is the one the shim chose, of this loader's
 * X.Y: 0, else -1 after saying why. */
static int check_interpreter(void)
{
    char lib[PATH_MAX];
    Dl_info di;
    const char *v = Py_GetVersion();
    size_t n = strlen(AR_PY_XY);

    if (!g_configured) {
        fprintf(stderr, LOG_PREFIX "this Python loader is loaded directly: load libaioresty.so "
                "or libresty_ffi_python.so, which choose the venv and its libpython\n");
        return -1;
    }
    if (strncmp(v, AR_PY_XY, n) != 0 || (v[n] != '.' && v[n] != ' ') ||
        strcmp(g_py.xy, AR_PY_XY) != 0) {
        fprintf(stderr, LOG_PREFIX "this Python loader is built for Python " AR_PY_XY ", but "
                "the %s '%s' is of Python %s and the process runs libpython %.*s: not "
                "starting Python\n", g_py.venv[0] ? "venv" : "prefix",
                g_py.venv[0] ? g_py.venv : g_py.home, g_py.xy, (int)strcspn(v, " "), v);
        return -1;
    }
    if (!dladdr((void *)&Py_InitializeFromConfig, &di) || !di.dli_fname ||
        !realpath(di.dli_fname, lib)) {
        fprintf(stderr, LOG_PREFIX "cannot tell which libpython is loaded\n");
        return -1;
    }
    if (strcmp(lib, g_py.libpython) != 0) {
        fprintf(stderr, LOG_PREFIX "the venv's libpython is %s, but this Python loader is "
                "bound to %s (another libpython loaded first?): not starting Python\n",
                g_py.libpython, lib);
        return -1;
    }
    return 0;
}

/* The shim's choice of interpreter (venv.h), before the first libffi_init.
 * Another shim of the process may call it again: it must choose the same. */
EXPORT int aioresty_python_configure(const ar_python *py)
{
    int rc = 0;
    pthread_mutex_lock(&g_lock);
    if (py->abi != AR_PYTHON_ABI) {
        fprintf(stderr, LOG_PREFIX "this Python loader and its shim are of two different "
                "aioresty builds: reinstall aioresty\n");
        rc = -1;
    } else if (g_configured && (strcmp(py->libpython, g_py.libpython) || strcmp(py->venv, g_py.venv))) {
        fprintf(stderr, LOG_PREFIX "Python already runs from the venv '%s' (%s); a load asks for "
                "'%s' (%s): one Python per process\n", g_py.venv, g_py.libpython, py->venv,
                py->libpython);
        rc = -1;
    } else if (!g_configured) {
        g_py = *py;
        g_configured = 1;
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

static int config_str(PyConfig *c, wchar_t **field, const char *s)
{
    PyStatus st = PyConfig_SetBytesString(c, field, s);
    if (PyStatus_Exception(st)) {
        fprintf(stderr, LOG_PREFIX "python config: %s\n", st.err_msg ? st.err_msg : "error");
        return -1;
    }
    return 0;
}


static int call_boot(const char *fn, PyObject *args);

/* Process exit: no host code runs after it starts (_boot.shutdown_at_exit). */
static void shutdown_at_exit(void)
{
    if (g_py_pid != getpid() || !Py_IsInitialized()) return;   /* not in a forked child */
    PyGILState_STATE gs = PyGILState_Ensure();
    call_boot("shutdown_at_exit", PyTuple_New(0));
    PyGILState_Release(gs);
}

static int start_python(void)
{
    struct sigaction saved[NSIG];
    PyConfig c;
    PyStatus st;
    const char *venv = g_py.venv;

    if (check_interpreter() < 0) return -1;

    PyConfig_InitIsolatedConfig(&c);
    c.install_signal_handlers = 0;
    c.parse_argv = 0;
    c.buffered_stdio = 0;              /* nothing is lost if the host exits; _boot makes lines whole */
    c.site_import = 1;
    if (config_str(&c, &c.program_name, "aioresty") < 0) goto fail;
    /* sys.executable inside the venv: getpath finds pyvenv.cfg beside it,
     * the stdlib from its `home`, and site adds the venv's site-packages
     * (with .pth files, so editable installs work).  Without a venv: the
     * base interpreter's, so getpath finds its own prefix. */
    if (config_str(&c, &c.executable, g_py.exe) < 0) goto fail;
    /* `import signal` installs a SIGINT handler even with
     * install_signal_handlers=0: snapshot every disposition, restore after. */
    for (int s = 1; s < NSIG; s++) sigaction(s, NULL, &saved[s]);
    st = Py_InitializeFromConfig(&c);
    PyConfig_Clear(&c);
    if (PyStatus_Exception(st)) {
        /* never Py_ExitStatusException() inside a host: it exits the proxy */
        fprintf(stderr, LOG_PREFIX "cannot start Python: %s: %s\n", st.func ? st.func : "?",
                st.err_msg ? st.err_msg : "?");
        return -1;
    }
    if (!g_py.explicit_venv) add_own_package_to_path();
    /* aioresty._boot imports asyncio (and so signal) while the snapshot is
     * still pending: import it now, then restore. */
    PyObject *boot = PyImport_ImportModule("aioresty._boot");
    if (!boot) {
        fprintf(stderr, LOG_PREFIX "cannot import aioresty (is it installed in the venv '%s'?):\n",
                venv[0] ? venv : "(none)");
        PyErr_Print();
    }
    Py_XDECREF(boot);
    for (int s = 1; s < NSIG; s++) {
        struct sigaction now;
        if (sigaction(s, NULL, &now) == 0 && now.sa_handler != saved[s].sa_handler)
            sigaction(s, &saved[s], NULL);
    }
    g_py_pid = getpid();
    /* Process exit (Envoy returning from main, an nginx worker's exit()):
     * unload every runtime so its on_shutdown hooks run, within its grace. */
    if (boot) atexit(shutdown_at_exit);
    PyEval_SaveThread();                /* release the GIL for runtime threads */
    return boot ? 0 : -1;
fail:
    PyConfig_Clear(&c);
    return -1;
}

/* Calls aioresty._boot.<fn>(*args); returns its int result, or 1 on error. */
static int call_boot(const char *fn, PyObject *args)
{
    int rc = 1;
    if (!args) {
        PyErr_Print();
        return 1;
    }
    PyObject *boot = PyImport_ImportModule("aioresty._boot");
    PyObject *func = boot ? PyObject_GetAttrString(boot, fn) : NULL;
    PyObject *res = func ? PyObject_CallObject(func, args) : NULL;
    Py_XDECREF(func);
    if (res) {
        rc = PyLong_Check(res) ? (int)PyLong_AsLong(res) : 1;
        if (PyErr_Occurred()) {
            PyErr_Print();
            rc = 1;
        }
    } else {
        fprintf(stderr, LOG_PREFIX "runtime start failed:\n");
        PyErr_Print();
    }
    Py_XDECREF(res);
    Py_XDECREF(boot);
    Py_DECREF(args);
    return rc;
}

EXPORT int libffi_init(char *cfg, void *tq)
{
    int rc;
    pthread_mutex_lock(&g_lock);
    if (!Py_IsInitialized()) {
        if (start_python() < 0) {
            pthread_mutex_unlock(&g_lock);
            return 1;
        }
    } else if (g_py_pid && g_py_pid != getpid()) {
        fprintf(stderr, LOG_PREFIX "Python was started in process %d before fork; this child (%d) "
                "cannot use it: load runtimes in the worker process only\n",
                (int)g_py_pid, (int)getpid());
        pthread_mutex_unlock(&g_lock);
        return 1;
    }
    PyGILState_STATE gs = PyGILState_Ensure();
    if (!cfg || !*cfg) {
        fprintf(stderr, LOG_PREFIX "empty cfg: expected \"pkg.module[:app]\" or "
                "\"module,func[,rest]\"\n");
        rc = 1;
    } else if (strchr(cfg, ',') && strcspn(cfg, ",") < strcspn(cfg, " \t\n")) {
        /* lua-resty-ffi form: module,func[,rest]; rest is passed as a pointer.
         * (A comma after the first blank is the app form's JSON config.) */
        const char *c1 = strchr(cfg, ',');
        const char *c2 = strchr(c1 + 1, ',');
        size_t flen = c2 ? (size_t)(c2 - c1 - 1) : strlen(c1 + 1);
        uintptr_t rest = c2 ? (uintptr_t)(c2 + 1) : 0;
        rc = call_boot("start_legacy",
                       Py_BuildValue("(s#s#KK)", cfg, (Py_ssize_t)(c1 - cfg), c1 + 1,
                                     (Py_ssize_t)flen, (unsigned long long)rest,
                                     (unsigned long long)(uintptr_t)tq));
    } else {
        rc = call_boot("start_app",
                       Py_BuildValue("(sK)", cfg, (unsigned long long)(uintptr_t)tq));
    }
    PyGILState_Release(gs);
    pthread_mutex_unlock(&g_lock);
    return rc;
}

/* Stops every aioresty runtime of the process (drains in-flight work within
 * each runtime's grace period) and joins their threads.  For hosts that want
 * an orderly exit; Python itself is left initialised. */
EXPORT int aioresty_python_shutdown(void)
{
    int rc;
    if (!Py_IsInitialized()) return 0;
    PyGILState_STATE gs = PyGILState_Ensure();
    rc = call_boot("shutdown_all", PyTuple_New(0));
    PyGILState_Release(gs);
    return rc;
}
