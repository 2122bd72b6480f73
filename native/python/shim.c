/*
 * shim.c - libaioresty.so and libresty_ffi_python.so (lua-resty-ffi's name
 * for its Python loader), the runtime libraries hosts load by name.
 *
 * They link no libpython, so one lib directory serves every interpreter
 * aioresty was built for there (a source checkout's aioresty/_lib is shared
 * by .venv and .venv-3.13).  The Python loader proper (loader.c) is built
 * once per interpreter as libaioresty_python<X.Y>-<key>.so (venv.h: <key>
 * identifies the base interpreter's bin directory) and linked to that
 * interpreter's libpython.  The first call picks the one of the interpreter
 * of the venv to run in, next to this file, and forwards every call to it;
 * without a venv, the only loader there.  No matching loader: libffi_init
 * fails, saying which interpreter is missing and how to build for it.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <unistd.h>

#include "venv.h"

#define EXPORT __attribute__((visibility("default")))

typedef int (*init_fn)(char *, void *);
typedef int (*shutdown_fn)(void);

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static void *g_loader;
static init_fn g_init;

static int is_loader_name(const char *n, const char *key)
{
    size_t len = strlen(n), pl = strlen(AR_LOADER_PREFIX);
    if (len < pl + 3 || strncmp(n, AR_LOADER_PREFIX, pl) || strcmp(n + len - 3, ".so")) return 0;
    if (!key) return 1;
    char suffix[16];
    snprintf(suffix, sizeof suffix, "-%s.so", key);
    size_t sl = strlen(suffix);
    return len > sl && !strcmp(n + len - sl, suffix);
}

/* The loaders in dir (those for `key` if given): how many, the first one's
 * name in `one`, all of them ", "-separated in `list`. */
static int list_loaders(const char *dir, const char *key, char *one, size_t onelen, char *list,
                        size_t listlen)
{
    int n = 0;
    size_t used = 0;
    list[0] = '\0';
    DIR *d = opendir(dir);
    if (!d) return 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!is_loader_name(e->d_name, key)) continue;
        if (n++ == 0) snprintf(one, onelen, "%s", e->d_name);
        int w = snprintf(list + used, listlen - used, "%s%s", used ? ", " : "", e->d_name);
        if (w > 0 && (size_t)w < listlen - used) used += (size_t)w;
    }
    closedir(d);
    return n;
}

/* The path of the Python loader for this process into out; 0 on success,
 * else -1 after saying why on stderr (unless quiet). */
static int resolve_loader(char *out, size_t outlen, int quiet)
{
    char dir[PATH_MAX], venv[PATH_MAX], home[PATH_MAX], real[PATH_MAX], xy[16], key[9];
    char name[NAME_MAX + 1] = "", other[NAME_MAX + 1], list[2048];
    int n;

    if (ar_own_dir((void *)&resolve_loader, dir, sizeof dir) < 0) {
        if (!quiet) fprintf(stderr, AR_LOG "cannot find the directory of the Python loader\n");
        return -1;
    }
    ar_find_venv((void *)&resolve_loader, venv, sizeof venv);
    if (!venv[0]) {
        n = list_loaders(dir, NULL, name, sizeof name, list, sizeof list);
        if (n != 1 && !quiet)
            fprintf(stderr,
                    AR_LOG "no venv to run in (set AIORESTY_VENV or VIRTUAL_ENV) and %s "
                    "Python loader in %s (%s)\n",
                    n ? "more than one" : "no", dir, list[0] ? list : "none");
    } else {
        int is_venv = ar_venv_python(venv, home, sizeof home, xy, sizeof xy);
        if (ar_home_key(home, key, real, sizeof real) < 0) {
            if (quiet) return -1;
            if (errno == EACCES)
                fprintf(stderr,
                        AR_LOG "the Python of %s '%s' is out of reach: %s: permission denied "
                        "for uid %d (nginx workers run as nobody when the master is root: "
                        "make that interpreter readable by them)\n",
                        is_venv ? "venv" : "prefix", venv, home, (int)geteuid());
            else
                fprintf(stderr,
                        AR_LOG "the Python of %s '%s' is missing: %s: %s (recreate the venv, "
                        "or set AIORESTY_VENV to another)\n",
                        is_venv ? "venv" : "prefix", venv, home, strerror(errno));
            return -1;
        }
        if (xy[0]) {
            snprintf(name, sizeof name, AR_LOADER_PREFIX "%s-%s.so", xy, key);
            snprintf(out, outlen, "%s/%s", dir, name);
            n = ar_is_file(out);
        } else {
            n = list_loaders(dir, key, name, sizeof name, list, sizeof list);
        }
        if (n != 1 && !quiet) {
            list_loaders(dir, NULL, other, sizeof other, list, sizeof list);
            fprintf(stderr,
                    AR_LOG "no Python loader in %s for the interpreter of %s '%s' "
                    "(Python %s in %s): expected %s; built there: %s.  Install aioresty "
                    "into that venv (pip install; in a checkout: make venv PYTHON=%s/python3), "
                    "or set AIORESTY_VENV to a venv of an interpreter it was built for\n",
                    dir, is_venv ? "venv" : "prefix", venv, xy[0] ? xy : "?", real,
                    xy[0] ? name : AR_LOADER_PREFIX "<X.Y>-" "<key>.so",
                    list[0] ? list : "none", real);
        }
    }
    if (n != 1) return -1;
    if ((size_t)snprintf(out, outlen, "%s/%s", dir, name) >= outlen) return -1;
    return 0;
}

/* Loads the Python loader (caller holds g_lock); 0 on success. */
static int load_loader(void)
{
    char path[PATH_MAX + NAME_MAX + 2];
    if (resolve_loader(path, sizeof path, 0) < 0) return -1;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, AR_LOG "cannot load the Python loader %s: %s\n", path, dlerror());
        return -1;
    }
    *(void **)&g_init = dlsym(h, "libffi_init");
    if (!g_init) {
        fprintf(stderr, AR_LOG "%s has no libffi_init\n", path);
        return -1;
    }
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
    char path[PATH_MAX + NAME_MAX + 2];
    shutdown_fn fn = NULL;
    pthread_mutex_lock(&g_lock);
    void *h = g_loader;
    if (!h && resolve_loader(path, sizeof path, 1) == 0) h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (h) *(void **)&fn = dlsym(h, "aioresty_python_shutdown");
    pthread_mutex_unlock(&g_lock);
    return fn ? fn() : 0;
}
