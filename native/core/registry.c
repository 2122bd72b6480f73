/*
 * registry.c - the process-wide runtime registry: one runtime per
 * `lib&cfg`, loaded by dlopen + libffi_init(cfg, tq), shared by every host
 * thread and Lua VM of the process.
 *
 * The registry lock is held while a runtime initialises, so two hosts that
 * load the same key at once get one runtime, and runtimes start one at a time.
 */
#include <dlfcn.h>
#include <link.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core_internal.h"

typedef struct entry {
    struct entry *next;         /* registry list link (while registered) */
    char *key;                  /* "lib&cfg" or "lib" */
    void *dl;                   /* dlopen handle */
    char *path;                 /* the file it was loaded from (ar_runtime_path) */
    int flags;
    int max_queue;              /* as loaded (65536 for "default") */
    int warned;                 /* an option conflict was logged (once per entry) */
    ar_queue *q;
    uint64_t id;                /* process-unique, never reused (ar_queue_lookup) */
    int registered;
} entry;

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static entry *g_entries;
static pid_t g_pid;             /* process that loaded the first runtime */
static int g_promoted;
static uint64_t g_next_id = 1;  /* under g_lock */

/* Failed loads, per key, under g_lock: the next load of the key within the
 * backoff gets the same error at once, without running the runtime's
 * libffi_init again (a broken app would otherwise start Python's import -
 * and log a traceback - on every request).  The backoff doubles from
 * AR_LOAD_RETRY_MIN to AR_LOAD_RETRY_MAX seconds per failed attempt; a load
 * that succeeds forgets the key. */
#define AR_LOAD_RETRY_MIN 1.0
#define AR_LOAD_RETRY_MAX 10.0
typedef struct failure {
    struct failure *next;
    char *key;
    char *err;                  /* the error of the last attempt */
    double at, backoff;         /* CLOCK_MONOTONIC seconds of it, seconds until the next */
} failure;
static failure *g_failures;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static failure *failure_of(const char *key)
{
    for (failure *f = g_failures; f; f = f->next)
        if (strcmp(f->key, key) == 0) return f;
    return NULL;
}

/* A load of key just failed with err: remember it (best effort). */
static void remember_failure(const char *key, const char *err)
{
    failure *f = failure_of(key);
    char *copy = strdup(err);
    if (!copy) return;
    if (!f) {
        f = calloc(1, sizeof *f);
        if (!f || !(f->key = strdup(key))) {
            free(f);
            free(copy);
            return;
        }
        f->next = g_failures;
        g_failures = f;
        f->backoff = AR_LOAD_RETRY_MIN / 2;
    }
    free(f->err);
    f->err = copy;
    f->at = now_s();
    f->backoff = f->backoff * 2 > AR_LOAD_RETRY_MAX ? AR_LOAD_RETRY_MAX : f->backoff * 2;
}

static void forget_failure(const char *key)
{
    for (failure **pp = &g_failures; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->key, key) == 0) {
            failure *f = *pp;
            *pp = f->next;
            free(f->key);
            free(f->err);
            free(f);
            return;
        }
    }
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || !errlen) return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Directory holding this library (libaioresty_core.so). */
static int own_dir(char *out, size_t outlen)
{
    Dl_info di;
    if (!dladdr((void *)&own_dir, &di) || !di.dli_fname) return -1;
    const char *slash = strrchr(di.dli_fname, '/');
    if (!slash) return -1;
    size_t n = (size_t)(slash - di.dli_fname);
    if (n + 1 > outlen) return -1;
    memcpy(out, di.dli_fname, n);
    out[n] = '\0';
    return 0;
}

/* The file name LuaJIT's ffi.load gives a library name: ".so" appended
 * when it has no '.', then "lib" prepended unless it starts with it. */
static int file_name(const char *lib, char *out, size_t outlen)
{
    const char *ext = strchr(lib, '.') ? "" : ".so";
    const char *pre = strncmp(lib, "lib", 3) == 0 ? "" : "lib";
    return (size_t)snprintf(out, outlen, "%s%s%s", pre, lib, ext) < outlen ? 0 : -1;
}

/* The first entry of $AIORESTY_LIB_PATH into out; 0, or -1 if none. */
static int first_lib_dir(char *out, size_t outlen)
{
    const char *path = getenv("AIORESTY_LIB_PATH");
    if (!path || !*path) return -1;
    size_t n = strcspn(path, ":");
    if (n == 0 || n >= outlen) return -1;
    memcpy(out, path, n);
    out[n] = '\0';
    return 0;
}

/* dlopen `lib` the way aioresty_core.h ("Which file `lib` is") says.
 * Returns the handle, or NULL with the reason in err. */
static void *open_library(const char *lib, int mode, char *err, size_t errlen)
{
    char cand[PATH_MAX], fname[NAME_MAX + 1], dir[PATH_MAX - NAME_MAX - 2];
    void *dl;
    if (strchr(lib, '/')) {
        if (lib[0] == '/') {
            if ((size_t)snprintf(cand, sizeof cand, "%s", lib) >= sizeof cand) goto toolong;
        } else {
            if (first_lib_dir(dir, sizeof dir) < 0) {
                set_err(err, errlen,
                        "relative library path '%s': relative paths are taken against the "
                        "first entry of $AIORESTY_LIB_PATH, which is not set", lib);
                return NULL;
            }
            if ((size_t)snprintf(cand, sizeof cand, "%s/%s", dir, lib) >= sizeof cand)
                goto toolong;
        }
        if (!(dl = dlopen(cand, mode)))
            set_err(err, errlen, "cannot load runtime library '%s': %s", lib, dlerror());
        return dl;
    }
    if (file_name(lib, fname, sizeof fname) < 0) goto toolong;
    const char *path = getenv("AIORESTY_LIB_PATH");
    while (path && *path) {
        size_t n = strcspn(path, ":");
        if (n > 0 && n < sizeof dir &&
            (size_t)snprintf(cand, sizeof cand, "%.*s/%s", (int)n, path, fname) < sizeof cand &&
            is_file(cand)) {
            if (!(dl = dlopen(cand, mode)))
                set_err(err, errlen, "cannot load runtime library '%s' (%s): %s", lib, cand,
                        dlerror());
            return dl;
        }
        path += n;
        if (*path == ':') path++;
    }
    /* the dynamic linker's own search: LD_LIBRARY_PATH, ld.so.cache, ... */
    if ((dl = dlopen(fname, mode))) return dl;
    char linker[512];
    snprintf(linker, sizeof linker, "%s", dlerror());
    /* last: the runtimes bundled with aioresty, next to this library */
    if (own_dir(dir, sizeof dir) == 0 &&
        (size_t)snprintf(cand, sizeof cand, "%s/%s", dir, fname) < sizeof cand && is_file(cand)) {
        if (!(dl = dlopen(cand, mode)))
            set_err(err, errlen, "cannot load runtime library '%s' (%s): %s", lib, cand,
                    dlerror());
        return dl;
    }
    set_err(err, errlen,
            "cannot load runtime library '%s': %s not in $AIORESTY_LIB_PATH (%s), nor found "
            "by the dynamic linker (%s), nor bundled with aioresty", lib, fname,
            getenv("AIORESTY_LIB_PATH") ? getenv("AIORESTY_LIB_PATH") : "not set", linker);
    return NULL;
toolong:
    set_err(err, errlen, "bad library name '%s' (too long)", lib);
    return NULL;
}

/* The absolute path dl was loaded from into out ("" if unknown). */
static void loaded_path(void *dl, char *out, size_t outlen)
{
    struct link_map *lm = NULL;
    out[0] = '\0';
    if (dlinfo(dl, RTLD_DI_LINKMAP, &lm) != 0 || !lm || !lm->l_name) return;
    char real[PATH_MAX];
    snprintf(out, outlen, "%s", realpath(lm->l_name, real) ? real : lm->l_name);
}

/* Runtime libraries resolve ngx_http_lua_ffi_* when they are dlopen'ed:
 * this library must be in the global scope by then, whatever way the host
 * loaded it (proxies load modules RTLD_LOCAL). */
static void promote_self(void)
{
    Dl_info di;
    if (g_promoted) return;
    if (dladdr((void *)&ngx_http_lua_ffi_task_poll, &di) && di.dli_fname) {
        if (dlopen(di.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL)) g_promoted = 1;
    }
}

static char *make_key(const char *lib, const char *cfg)
{
    size_t ll = strlen(lib), cl = cfg ? strlen(cfg) : 0;
    char *k = malloc(ll + 1 + cl + 1);
    if (!k) return NULL;
    memcpy(k, lib, ll);
    if (cfg) {
        k[ll] = '&';
        memcpy(k + ll + 1, cfg, cl + 1);
    } else {
        k[ll] = '\0';
    }
    return k;
}

/* A later load of a loaded key asked for other options: one warning per
 * runtime naming both (the first load's options stay).  g_lock held. */
static void warn_options_locked(entry *e, int max_queue, int flags)
{
    int want_mq = max_queue > 0 ? max_queue : e->max_queue;
    int want_fl = (flags & AR_LOAD_OPTIONS) ? (flags & 3) : e->flags;
    if (e->warned || (want_mq == e->max_queue && want_fl == e->flags)) return;
    e->warned = 1;
    char line[1024];
    snprintf(line, sizeof line,
             "runtime '%.600s' is already loaded with max_queue=%d is_global=%d unpin=%d; "
             "a load asking for max_queue=%d is_global=%d unpin=%d gets it as it is "
             "(the first load's options stay)",
             e->key, e->max_queue, !!(e->flags & AR_LOAD_GLOBAL), !!(e->flags & AR_LOAD_UNPIN),
             want_mq, !!(want_fl & AR_LOAD_GLOBAL), !!(want_fl & AR_LOAD_UNPIN));
    ar_log(2, line);
}

ar_queue *ar_runtime_load(const char *lib, const char *cfg, int max_queue, int flags, char *err,
                          size_t errlen)
{
    char path[PATH_MAX];
    entry *e;
    ar_queue *q = NULL;
    char *key = NULL, *cfg_copy = NULL, *path_copy = NULL;
    void *dl = NULL;

    if (!lib || !*lib) {
        set_err(err, errlen, "no library name given");
        return NULL;
    }
    key = make_key(lib, cfg);
    if (!key) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_lock(&g_lock);
    if (g_pid && g_pid != getpid()) {
        set_err(err, errlen,
                "runtimes were started in process %d, this is a forked child (%d): "
                "load runtimes after fork, in the worker process",
                (int)g_pid, (int)getpid());
        goto fail;
    }
    for (e = g_entries; e; e = e->next) {
        if (strcmp(e->key, key) == 0) {
            warn_options_locked(e, max_queue, flags);
            ar_queue_ref(e->q);
            q = e->q;
            pthread_mutex_unlock(&g_lock);
            free(key);
            return q;
        }
    }
    failure *prev = failure_of(key);
    if (prev) {
        double left = prev->at + prev->backoff - now_s();
        if (left > 0) {
            set_err(err, errlen, "%s (failed %.1fs ago; next attempt in %.1fs)", prev->err,
                    prev->backoff - left, left);
            goto fail;
        }
    }
    promote_self();
    dl = open_library(lib, RTLD_NOW | ((flags & AR_LOAD_GLOBAL) ? RTLD_GLOBAL : RTLD_LOCAL), err,
                      errlen);
    if (!dl) goto failed_load;
    loaded_path(dl, path, sizeof path);
    ar_libffi_init_fn init = (ar_libffi_init_fn)dlsym(dl, "libffi_init");
    if (!init) {
        set_err(err, errlen, "runtime library '%s' (%s) has no libffi_init", lib, path);
        goto failed_load;
    }
    if (max_queue <= 0) max_queue = AR_DEFAULT_MAX_QUEUE;
    e = calloc(1, sizeof *e);
    q = ar_queue_create(max_queue);
    if (cfg) cfg_copy = strdup(cfg);
    path_copy = strdup(path);
    if (!e || !q || (cfg && !cfg_copy) || !path_copy) {
        set_err(err, errlen, "out of memory");
        free(e);
        free(cfg_copy);
        free(path_copy);
        if (q) {
            ar_queue_unref(q);
            ar_queue_unref(q);
        }
        q = NULL;
        goto fail;
    }
    if (!g_pid) g_pid = getpid();
    ar_stats_set_runtime(q, key);
    int rc = init(cfg_copy, q);
    free(cfg_copy);
    if (rc != 0) {
        /* Contract: a runtime that fails its init keeps no use of tq. */
        char why[512];
        size_t wl = ar_queue_error(q, why, sizeof why);
        set_err(err, errlen, "libffi_init of '%s' (%s) with cfg '%s' failed: rc=%d%s%s", lib,
                path, cfg ? cfg : "(null)", rc, wl ? ": " : "", wl ? why : "");
        free(e);
        free(path_copy);
        ar_queue_close(q);
        ar_queue_unref(q);
        ar_queue_unref(q);
        q = NULL;
        goto failed_load;
    }
    forget_failure(key);
    e->key = key;
    e->path = path_copy;
    e->id = g_next_id++;
    e->dl = dl;
    e->flags = flags & 3;
    e->max_queue = max_queue;
    e->q = q;
    e->registered = 1;
    e->next = g_entries;
    g_entries = e;
    q->registry_entry = e;
    ar_queue_ref(q);                        /* the caller's reference */
    {
        char line[PATH_MAX + 700];
        snprintf(line, sizeof line, "runtime '%.600s' loaded from %s", key, path);
        ar_log(1, line);
    }
    pthread_mutex_unlock(&g_lock);
    return q;

failed_load:
    if (err && errlen) remember_failure(key, err);
fail:
    pthread_mutex_unlock(&g_lock);
    free(key);
    if (dl && (flags & AR_LOAD_UNPIN)) dlclose(dl);
    return NULL;
}

int ar_runtime_path(ar_queue *q, char *out, size_t outlen)
{
    int rc = AR_ECLOSED;
    if (!q || !out || !outlen) return AR_EINVAL;
    pthread_mutex_lock(&g_lock);
    entry *e = q->registry_entry;
    if (e && e->registered && e->path) {
        rc = (size_t)snprintf(out, outlen, "%s", e->path) < outlen ? AR_OK : AR_EINVAL;
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

/* Remove e from the list; g_lock held.  Returns 1 if it was registered.
 * Lock order: g_lock, then the GIL (a load runs libffi_init under g_lock);
 * so no Python thread may wait for g_lock while it holds the GIL
 * (aioresty/_native.c releases it around every call that can). */
static int unregister_locked(entry *e)
{
    entry **pp;
    if (!e->registered) return 0;
    for (pp = &g_entries; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    e->registered = 0;
    e->next = NULL;
    return 1;
}

void ar_runtime_unload(ar_queue *q)
{
    int drop = 0;
    if (!q) return;
    pthread_mutex_lock(&g_lock);
    entry *e = q->registry_entry;
    if (e) drop = unregister_locked(e);
    pthread_mutex_unlock(&g_lock);
    ar_queue_close(q);
    if (drop) ar_queue_unref(q);            /* the registry's reference */
}

void ar_runtime_unload_all(void)
{
    for (;;) {
        pthread_mutex_lock(&g_lock);
        entry *e = g_entries;
        ar_queue *q = e ? e->q : NULL;
        if (q) ar_queue_ref(q);
        pthread_mutex_unlock(&g_lock);
        if (!q) return;
        ar_runtime_unload(q);
        ar_queue_unref(q);
    }
}

/* The queue's last reference is gone.  No lock: the registry holds a
 * reference while the entry is registered, so here it is not, and no other
 * thread can reach e.  (Taking g_lock here would invert the lock order for a
 * runtime thread that drops the last reference while holding the GIL, since a
 * load holds g_lock while it takes the GIL.) */
void ar_registry_queue_freed(ar_queue *q)
{
    entry *e = q->registry_entry;
    if (!e) return;
    if (e->flags & AR_LOAD_UNPIN) dlclose(e->dl);
    free(e->key);
    free(e->path);
    free(e);
}

/* ------------------------------------------------------ bridge authority */

static char g_secret[33];       /* 32 hex chars, "" if no randomness was had */
static pthread_once_t g_secret_once = PTHREAD_ONCE_INIT;

static void make_secret(void)
{
    unsigned char raw[16];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;                         /* no secret: every resolve fails */
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof raw; i++) {
        g_secret[2 * i] = hex[raw[i] >> 4];
        g_secret[2 * i + 1] = hex[raw[i] & 15];
    }
    g_secret[32] = '\0';
}

int ar_bridge_authority(ar_queue *q, char *out, size_t outlen)
{
    pthread_once(&g_secret_once, make_secret);
    if (!g_secret[0] || !q) return AR_EINVAL;
    pthread_mutex_lock(&g_lock);
    entry *e = q->registry_entry;
    uint64_t id = e && e->registered ? e->id : 0;
    pthread_mutex_unlock(&g_lock);
    if (!id) return AR_ECLOSED;
    int n = snprintf(out, outlen, "%llu.%s", (unsigned long long)id, g_secret);
    return n > 0 && (size_t)n < outlen ? AR_OK : AR_EINVAL;
}

ar_queue *ar_bridge_resolve(const char *auth, size_t len, int *why)
{
    pthread_once(&g_secret_once, make_secret);
    *why = AR_BRIDGE_MALFORMED;
    const char *dot = auth ? memchr(auth, '.', len) : NULL;
    if (!dot || dot == auth || (size_t)(dot - auth) > 20) return NULL;
    uint64_t id = 0;
    for (const char *p = auth; p < dot; p++) {
        if (*p < '0' || *p > '9') return NULL;
        uint64_t d = (uint64_t)(*p - '0');
        if (id > (UINT64_MAX - d) / 10) return NULL;
        id = id * 10 + d;
    }
    const char *sec = dot + 1;
    size_t slen = len - (size_t)(sec - auth);
    *why = AR_BRIDGE_FORBIDDEN;
    if (!g_secret[0] || slen != 32) return NULL;
    unsigned char diff = 0;                 /* constant time: no early exit */
    for (size_t i = 0; i < 32; i++) diff |= (unsigned char)(sec[i] ^ g_secret[i]);
    if (diff) return NULL;
    *why = AR_BRIDGE_UNKNOWN;
    ar_queue *q = NULL;
    pthread_mutex_lock(&g_lock);
    for (entry *e = g_entries; e; e = e->next) {
        if (e->id == id) {
            q = e->q;
            ar_queue_ref(q);
            break;
        }
    }
    pthread_mutex_unlock(&g_lock);
    if (q) *why = 0;
    return q;
}
