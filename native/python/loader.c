/*
 * loader.c - aioresty's Python loader: a runtime library exporting
 * libffi_init(cfg, tq).  Built twice, as libaioresty.so and as
 * libresty_ffi_python.so (lua-resty-ffi's name for its Python loader).
 *
 * On the first libffi_init of the process it embeds CPython:
 *   - libpython is promoted to the global scope (hosts dlopen us RTLD_LOCAL,
 *     and extension modules such as _socket expect Py* symbols globally);
 *   - isolated PyConfig; the venv comes from $AIORESTY_VENV, else
 *     $VIRTUAL_ENV, else the venv this library is installed in (a
 *     pyvenv.cfg above it), else the base interpreter; $PYTHONPATH is
 *     honoured (aioresty._boot puts it in front of sys.path);
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

#define LOG_PREFIX "[aioresty] "
#define EXPORT __attribute__((visibility("default")))

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t g_py_pid;              /* process that initialised Python */

static void promote_libpython(void)
{
    Dl_info di;
    if (dladdr((void *)&Py_InitializeFromConfig, &di) && di.dli_fname) {
        if (!dlopen(di.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL))
            fprintf(stderr, LOG_PREFIX "cannot promote %s to global scope: %s\n", di.dli_fname,
                    dlerror());
    }
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* The venv to run in, written into out ("" = none). */
static void find_venv(char *out, size_t outlen)
{
    const char *v = getenv("AIORESTY_VENV");
    if (!v || !*v) v = getenv("VIRTUAL_ENV");
    out[0] = '\0';
    if (v && *v) {
        snprintf(out, outlen, "%s", v);
        return;
    }
    /* installed as <venv>/lib/pythonX.Y/site-packages/aioresty/_lib/lib*.so */
    Dl_info di;
    char dir[PATH_MAX], cand[PATH_MAX + 16];
    if (!dladdr((void *)&find_venv, &di) || !di.dli_fname) return;
    if (!realpath(di.dli_fname, dir)) return;
    for (;;) {
        char *slash = strrchr(dir, '/');
        if (!slash || slash == dir) return;
        *slash = '\0';
        snprintf(cand, sizeof cand, "%s/pyvenv.cfg", dir);
        if (is_file(cand)) {
            snprintf(out, outlen, "%s", dir);
            return;
        }
    }
}

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
            if (!is_file(probe)) return;
        }
    }
    PyObject *sys_path = PySys_GetObject("path");     /* borrowed */
    PyObject *dir = PyUnicode_DecodeFSDefault(path);
    if (sys_path && dir && PySequence_Contains(sys_path, dir) == 0) PyList_Insert(sys_path, 0, dir);
    Py_XDECREF(dir);
    PyErr_Clear();
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

static int start_python(void)
{
    char venv[PATH_MAX], exe[PATH_MAX + 32];
    struct sigaction saved[NSIG];
    PyConfig c;
    PyStatus st;

    promote_libpython();
    find_venv(venv, sizeof venv);

    PyConfig_InitIsolatedConfig(&c);
    c.install_signal_handlers = 0;
    c.parse_argv = 0;
    c.buffered_stdio = 0;              /* nothing is lost if the host exits */
    c.site_import = 1;
    if (config_str(&c, &c.program_name, "aioresty") < 0) goto fail;
    if (venv[0]) {
        /* sys.executable inside the venv: getpath finds pyvenv.cfg beside it,
         * the stdlib from its `home`, and site adds the venv's site-packages
         * (with .pth files, so editable installs work). */
        snprintf(exe, sizeof exe, "%s/bin/python3", venv);
        if (config_str(&c, &c.executable, exe) < 0) goto fail;
    }
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
    add_own_package_to_path();
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
    } else if (strchr(cfg, ',')) {
        /* lua-resty-ffi form: module,func[,rest]; rest is passed as a pointer */
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
