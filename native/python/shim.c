/*
 * shim.c - libaioresty.so and libresty_ffi_python.so (lua-resty-ffi's name
 * for its Python loader), the runtime libraries hosts load by name.
 *
 * They link no libpython.  On the first call they choose the Python to embed
 * (venv.h): the venv ($AIORESTY_VENV, $VIRTUAL_ENV, else the one they are
 * installed in), its interpreter (pyvenv.cfg) and that interpreter's own
 * libpython, found at run time and checked against the venv's version; they
 * load it RTLD_GLOBAL, then the loader proper built for its X.Y next to this
 * file, libaioresty_python<X.Y>.so (loader.c: its Py* symbols resolve
 * against that libpython), hand it the choice and forward every call to it.
 * So one wheel runs with any CPython X.Y of its tag (Debian's, pyenv's, ...)
 * and one lib directory serves several X.Y (a checkout's aioresty/_lib is
 * shared by .venv and .venv-3.13).  Anything that does not fit (a bad venv,
 * no shared libpython, a version mismatch, another libpython already in the
 * process, no loader for that X.Y) fails libffi_init with one line saying
 * why; Python is never started with a libpython that is not the venv's.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "venv.h"

#define EXPORT __attribute__((visibility("default")))

#if defined(__x86_64__)
#define AR_MULTIARCH "x86_64-linux-gnu"
#elif defined(__aarch64__)
#define AR_MULTIARCH "aarch64-linux-gnu"
#else
#define AR_MULTIARCH ""
#endif

typedef int (*init_fn)(char *, void *);
typedef int (*shutdown_fn)(void);
typedef int (*configure_fn)(const ar_python *);
typedef const char *(*version_fn)(void);

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static void *g_loader;
static init_fn g_init;
static ar_python g_py;

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        fprintf(stderr, AR_LOG __VA_ARGS__);                                                       \
        fputc('\n', stderr);                                                                       \
        return -1;                                                                                 \
    } while (0)

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    char *end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
        *--end = '\0';
    return s;
}

/* "3.13.0" / "3.13.0.final.0" -> xy "3.13"; version kept up to the 3rd field. */
static void split_version(const char *val, char *version, size_t vlen, char *xy, size_t xylen)
{
    const char *d1 = strchr(val, '.');
    const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
    const char *d3 = d2 ? strchr(d2 + 1, '.') : NULL;
    size_t n = d2 ? (size_t)(d2 - val) : strlen(val);
    size_t nv = d3 ? (size_t)(d3 - val) : strlen(val);
    if (n < xylen) {
        memcpy(xy, val, n);
        xy[n] = '\0';
    }
    if (nv < vlen) {
        memcpy(version, val, nv);
        version[nv] = '\0';
    }
}

/* X.Y of <dir>/lib/python3.N (the only one), for a venv whose pyvenv.cfg has no version. */
static void xy_from_lib(const char *dir, char *xy, size_t xylen)
{
    char lib[PATH_MAX + 8];
    snprintf(lib, sizeof lib, "%s/lib", dir);
    DIR *d = opendir(lib);
    if (!d) return;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strncmp(e->d_name, "python3.", 8) && strlen(e->d_name) - 6 < xylen) {
            snprintf(xy, xylen, "%s", e->d_name + 6);
            n++;
        }
    }
    closedir(d);
    if (n != 1) xy[0] = '\0';
}

/* home and version of the venv's pyvenv.cfg; -1 after saying why. */
static int read_pyvenv(const char *venv, const char *what, char *home, size_t homelen)
{
    char cfg[PATH_MAX + 16], line[PATH_MAX + 64];
    snprintf(cfg, sizeof cfg, "%s/pyvenv.cfg", venv);
    FILE *f = fopen(cfg, "r");
    if (!f) FAIL("%s '%s' is not a venv: cannot read %s: %s", what, venv, cfg, strerror(errno));
    home[0] = '\0';
    while (fgets(line, sizeof line, f)) {
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = '\0';
        const char *k = trim(line), *val = trim(eq + 1);
        if (!strcmp(k, "home"))
            snprintf(home, homelen, "%s", val);
        else if ((!strcmp(k, "version") || !strcmp(k, "version_info")) && !g_py.xy[0])
            split_version(val, g_py.version, sizeof g_py.version, g_py.xy, sizeof g_py.xy);
    }
    fclose(f);
    if (!home[0]) FAIL("%s '%s' is not a usable venv: %s has no 'home ='", what, venv, cfg);
    if (!g_py.xy[0]) xy_from_lib(venv, g_py.xy, sizeof g_py.xy);
    if (!g_py.xy[0])
        FAIL("%s '%s': cannot tell its Python version (no 'version' in %s, no single "
             "lib/python3.N)", what, venv, cfg);
    return 0;
}

/* The venv (or prefix) and interpreter to run: fills g_py except libpython. */
static int choose_interpreter(const char *own_dir)
{
    char home[PATH_MAX + 80], what[64], cfgpath[PATH_MAX + 16];
    const char *var = "AIORESTY_VENV", *v = getenv(var);
    struct stat st;

    memset(&g_py, 0, sizeof g_py);
    g_py.abi = AR_PYTHON_ABI;
    if (!v || !*v) {
        var = "VIRTUAL_ENV";
        v = getenv(var);
    }
    if (v && *v) {
        snprintf(what, sizeof what, "$%s", var);
        if (stat(v, &st) < 0)
            FAIL("%s '%s' does not exist (%s): set it to a venv with aioresty installed",
                 what, v, strerror(errno));
        if (!S_ISDIR(st.st_mode)) FAIL("%s '%s' is not a directory", what, v);
        if (v[0] == '/')
            snprintf(g_py.venv, sizeof g_py.venv, "%s", v);
        else if (!realpath(v, g_py.venv))
            FAIL("%s '%s': %s", what, v, strerror(errno));
        snprintf(cfgpath, sizeof cfgpath, "%s/pyvenv.cfg", g_py.venv);
        if (!ar_is_file(cfgpath))
            FAIL("%s '%s' is not a venv (no pyvenv.cfg in it): set it to a venv with aioresty "
                 "installed", what, v);
        g_py.explicit_venv = 1;
    } else {
        /* installed as <venv>/lib/pythonX.Y/site-packages/aioresty/_lib/lib*.so */
        char dir[PATH_MAX], cand[PATH_MAX + 16];
        snprintf(what, sizeof what, "venv");
        snprintf(dir, sizeof dir, "%s", own_dir);
        for (;;) {
            snprintf(cand, sizeof cand, "%s/pyvenv.cfg", dir);
            if (ar_is_file(cand)) {
                snprintf(g_py.venv, sizeof g_py.venv, "%s", dir);
                break;
            }
            char *slash = strrchr(dir, '/');
            if (!slash || slash == dir) break;
            *slash = '\0';
        }
    }

    if (g_py.venv[0]) {
        if (read_pyvenv(g_py.venv, what, home, sizeof home) < 0) return -1;
        snprintf(g_py.exe, sizeof g_py.exe, "%s/bin/python3", g_py.venv);
    } else {
        /* no venv: the prefix of <prefix>/lib/pythonX.Y/{site,dist}-packages/aioresty/_lib */
        char prefix[PATH_MAX];
        snprintf(prefix, sizeof prefix, "%s", own_dir);
        const char *lib = strstr(prefix, "/lib/python3.");
        const char *tail = lib ? strchr(lib + 5, '/') : NULL;
        if (!lib || !tail || (strncmp(tail, "/site-packages/", 15) && strncmp(tail, "/dist-packages/", 15)))
            FAIL("no venv to run in: set AIORESTY_VENV to a venv with aioresty installed "
                 "(%s is in no venv)", own_dir);
        size_t n = (size_t)(tail - (lib + 11));
        if (n >= sizeof g_py.xy) FAIL("cannot tell the Python version of %s", own_dir);
        memcpy(g_py.xy, lib + 11, n);
        g_py.xy[n] = '\0';
        prefix[lib - prefix] = '\0';
        snprintf(home, sizeof home, "%s/bin", prefix);
        snprintf(g_py.exe, sizeof g_py.exe, "%s/python%s", home, g_py.xy);
        if (!ar_is_file(g_py.exe))
            FAIL("no venv to run in and no %s: set AIORESTY_VENV to a venv with aioresty "
                 "installed", g_py.exe);
    }
    if (!realpath(home, g_py.home)) {
        if (errno == EACCES)
            FAIL("the Python of %s '%s' is out of reach: %s: permission denied for uid %d "
                 "(nginx workers run as nobody when the master is root: make that "
                 "interpreter readable by them)", what, g_py.venv, home, (int)geteuid());
        FAIL("the Python of %s '%s' is missing: %s: %s (recreate the venv, or set "
             "AIORESTY_VENV to another)", what, g_py.venv[0] ? g_py.venv : "(none)", home,
             strerror(errno));
    }
    return 0;
}

/* Py_GetVersion() "3.11.2 (main, ...)" is of version "3.11.2" (or of X.Y when unknown). */
static int version_matches(const char *got, const char *want)
{
    size_t n = strlen(want);
    return !strncmp(got, want, n) && (got[n] == ' ' || got[n] == '\0' || (!strchr(want + 2, '.') && got[n] == '.'));
}

/* Finds the interpreter's libpython and loads it RTLD_GLOBAL (g_py.libpython). */
static int load_libpython(void)
{
    const char *dirs[] = {"lib", "lib/" AR_MULTIARCH, "lib64"};
    char cand[PATH_MAX + 64], tried[3 * PATH_MAX], real[PATH_MAX];
    const char *env = getenv("AIORESTY_LIBPYTHON");
    const char *want = g_py.version[0] ? g_py.version : g_py.xy;
    size_t used = 0;

    cand[0] = tried[0] = '\0';
    if (env && *env) {
        if (!ar_is_file(env)) FAIL("$AIORESTY_LIBPYTHON '%s' is not a file", env);
        snprintf(cand, sizeof cand, "%s", env);
    } else {
        for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
            if (i == 1 && !AR_MULTIARCH[0]) continue;
            char path[sizeof cand];
            snprintf(path, sizeof path, "%s/../%s/libpython%s.so.1.0", g_py.home, dirs[i], g_py.xy);
            if (ar_is_file(path)) {
                snprintf(cand, sizeof cand, "%s", path);
                break;
            }
            int w = snprintf(tried + used, sizeof tried - used, "%s%s", used ? ", " : "", path);
            if (w > 0 && (size_t)w < sizeof tried - used) used += (size_t)w;
        }
        if (!cand[0])
            FAIL("the Python %s in %s has no shared libpython (looked for %s): aioresty "
                 "embeds Python in the proxy and needs a Python built with --enable-shared "
                 "(pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared), or set AIORESTY_LIBPYTHON",
                 want, g_py.home, tried);
    }
    if (!realpath(cand, real)) FAIL("%s: %s", cand, strerror(errno));

    /* a libpython already in the process (the host is a Python, LD_PRELOAD) must be this one */
    Dl_info di;
    char have[PATH_MAX];
    void *sym = dlsym(RTLD_DEFAULT, "Py_GetVersion");
    if (sym && dladdr(sym, &di) && di.dli_fname && realpath(di.dli_fname, have) &&
        strcmp(have, real) != 0)
        FAIL("the process already has %s loaded (another Python, LD_PRELOAD?), not %s of the "
             "venv '%s': not starting Python", have, real, g_py.venv[0] ? g_py.venv : "(none)");

    void *h = dlopen(real, RTLD_NOW | RTLD_LOCAL);
    if (!h) FAIL("cannot load %s: %s", real, dlerror());
    version_fn ver;
    *(void **)&ver = dlsym(h, "Py_GetVersion");
    const char *got = ver ? ver() : "?";
    if (!ver || !version_matches(got, want)) {
        char gotv[32];
        snprintf(gotv, sizeof gotv, "%.*s", (int)strcspn(got, " "), got);
        dlclose(h);
        FAIL("%s is Python %s, but the %s '%s' is of Python %s in %s: not starting Python "
             "(set AIORESTY_LIBPYTHON to that interpreter's libpython)", real, gotv,
             g_py.venv[0] ? "venv" : "prefix", g_py.venv[0] ? g_py.venv : g_py.home, want,
             g_py.home);
    }
    if (!dlopen(real, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL))
        FAIL("cannot promote %s to the global scope: %s", real, dlerror());
    snprintf(g_py.libpython, sizeof g_py.libpython, "%s", real);
    return 0;
}

/* The loaders in dir, ", "-separated, into list. */
static void list_loaders(const char *dir, char *list, size_t listlen)
{
    size_t used = 0, pl = strlen(AR_LOADER_PREFIX);
    snprintf(list, listlen, "none");
    DIR *d = opendir(dir);
    if (!d) return;
    for (struct dirent *e; (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (len < pl + 3 || strncmp(e->d_name, AR_LOADER_PREFIX, pl) ||
            strcmp(e->d_name + len - 3, ".so"))
            continue;
        int w = snprintf(list + used, listlen - used, "%s%s", used ? ", " : "", e->d_name);
        if (w > 0 && (size_t)w < listlen - used) used += (size_t)w;
    }
    closedir(d);
}

/* Loads the Python loader (caller holds g_lock); 0 on success. */
static int load_loader(void)
{
    char dir[PATH_MAX], path[PATH_MAX + NAME_MAX + 2], list[2048];
    if (ar_own_dir((void *)&load_loader, dir, sizeof dir) < 0)
        FAIL("cannot find the directory of the Python loader");
    if (choose_interpreter(dir) < 0) return -1;
    snprintf(path, sizeof path, "%s/" AR_LOADER_PREFIX "%s.so", dir, g_py.xy);
    if (!ar_is_file(path)) {
        list_loaders(dir, list, sizeof list);
        FAIL("no Python loader in %s for Python %s (of the %s '%s'): expected %s; built there: "
             "%s.  Install aioresty into that venv (pip install aioresty; in a checkout: make "
             "venv PYTHON=%s/python3), or set AIORESTY_VENV to a venv of a Python it was built "
             "for", dir, g_py.xy, g_py.venv[0] ? "venv" : "prefix",
             g_py.venv[0] ? g_py.venv : g_py.home, path, list, g_py.home);
    }
    if (load_libpython() < 0) return -1;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) FAIL("cannot load the Python loader %s: %s", path, dlerror());
    configure_fn configure;
    *(void **)&configure = dlsym(h, "aioresty_python_configure");
    *(void **)&g_init = dlsym(h, "libffi_init");
    if (!configure || !g_init) FAIL("%s is not a Python loader of this aioresty", path);
    if (configure(&g_py) < 0) return -1;
    g_loader = h;
    return 0;
}

EXPORT int libffi_init(char *cfg, void *tq)
{
    pthread_mutex_lock(&g_lock);
    int rc = g_loader || load_loader() == 0 ? 0 : 1;
    pthread_mutex_unlock(&g_lock);
    return rc ? rc : g_init(cfg, tq);
}

/* Stops every aioresty runtime of the process (loader.c); 0 if Python was
 * never started.  Also when the loader was loaded through the other name. */
EXPORT int aioresty_python_shutdown(void)
{
    shutdown_fn fn = NULL;
    pthread_mutex_lock(&g_lock);
    void *h = g_loader;
    if (!h) {
        /* loaded through the other shim: the same loader, already in the process */
        char dir[PATH_MAX], path[PATH_MAX + NAME_MAX + 2];
        if (ar_own_dir((void *)&aioresty_python_shutdown, dir, sizeof dir) == 0) {
            DIR *d = opendir(dir);
            for (struct dirent *e; d && !h && (e = readdir(d));) {
                if (strncmp(e->d_name, AR_LOADER_PREFIX, strlen(AR_LOADER_PREFIX))) continue;
                snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
                h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
            }
            if (d) closedir(d);
        }
    }
    if (h) *(void **)&fn = dlsym(h, "aioresty_python_shutdown");
    pthread_mutex_unlock(&g_lock);
    return fn ? fn() : 0;
}
