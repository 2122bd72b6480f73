/*
 * testhost.c - ar_testhost: a stand-in for a proxy.  dlopen()s
 * libaioresty_core.so RTLD_LOCAL (as Envoy and nginx load modules), loads
 * runtimes through the registry, posts tasks from its own threads and gets
 * every answer back through a completion sink.  Driven by a tiny script on
 * stdin, one command per line, one result line per command on stdout:
 *
 *   load NAME LIB CFG [MAX_QUEUE] [FLAGS]   CFG "-" = NULL     -> ok | err MSG
 *   call NAME METHOD PAYLOAD [TIMEOUT_MS]   post + wait         -> result
 *   post NAME ID METHOD PAYLOAD             post, do not wait   -> ok | err
 *   wait ID [TIMEOUT_MS]                    wait for a post     -> result
 *   abort ID                                abort + release     -> ok
 *   unload NAME                                                 -> ok
 *   pending NAME                                                -> pending N
 *   stress NAME METHOD THREADS CALLS SIZE WINDOW  echo check    -> stress ...
 *   bstress ...                             the same, posting as the Envoy module
 *                                           does: no wake per post, one per round
 *   bench NAME METHOD THREADS SECONDS SIZE WINDOW               -> bench {json}
 *   signals                                 dispositions of INT TERM HUP PIPE
 *   pyshutdown                              aioresty_python_shutdown() -> pyshutdown RC
 *   forkload LIB CFG                        load in a forked child -> forkload ok|err MSG
 *   sleep MS | alive | exit
 *
 * result: "done rc=R nil=0|1 len=N crc=CRC32 hex=HEX" | "timeout" | "err post CODE"
 * PAYLOAD: empty | text:STR | hex:HEX | rep:HH:N (byte HH N times) | rand:N
 *
 * usage: ar_testhost CORE_LIB_PATH < script
 */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "aioresty_core.h"

/* ---- the core, resolved with dlsym as a proxy module would ---- */
static struct {
    ar_queue *(*load)(const char *, const char *, int, int, char *, size_t);
    void (*unload)(ar_queue *);
    void (*unload_all)(void);
    void (*queue_unref)(ar_queue *);
    int (*pending)(ar_queue *);
    ar_task *(*task_new)(const char *, size_t, const char *, size_t, const ar_sink *, void *);
    int (*post)(ar_queue *, ar_task *);
    int (*post_nowake)(ar_queue *, ar_task *, int *);
    void (*queue_wake)(ar_queue *);
    void (*abort)(ar_task *);
    int (*done)(const ar_task *);
    int (*rc)(const ar_task *);
    const char *(*response)(const ar_task *, size_t *);
    void (*release)(ar_task *);
    long (*tasks_alive)(void);
    long (*queues_alive)(void);
} core;

static int bind_core(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "ar_testhost: %s\n", dlerror());
        return -1;
    }
#define BIND(field, sym)                                                    \
    do {                                                                    \
        *(void **)&core.field = dlsym(h, sym);                              \
        if (!core.field) {                                                  \
            fprintf(stderr, "ar_testhost: missing %s\n", sym);              \
            return -1;                                                      \
        }                                                                   \
    } while (0)
    BIND(load, "ar_runtime_load");
    BIND(unload, "ar_runtime_unload");
    BIND(unload_all, "ar_runtime_unload_all");
    BIND(queue_unref, "ar_queue_unref");
    BIND(pending, "ar_queue_pending");
    BIND(task_new, "ar_task_new");
    BIND(post, "ar_task_post");
    BIND(post_nowake, "ar_task_post_nowake");
    BIND(queue_wake, "ar_queue_wake");
    BIND(abort, "ar_task_abort");
    BIND(done, "ar_task_done");
    BIND(rc, "ar_task_rc");
    BIND(response, "ar_task_response");
    BIND(release, "ar_task_release");
    BIND(tasks_alive, "ar_tasks_alive");
    BIND(queues_alive, "ar_queues_alive");
#undef BIND
    return 0;
}

/* ---- completion: a sink per waiting thread group ---- */
typedef struct waitgroup {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int waiters;     /* threads (about to be) blocked on cv */
    ar_sink sink;
} waitgroup;

/* Runtime thread.  Signals only when somebody sleeps: a busy host thread
 * finds the answer by itself (it checks ar_task_done after announcing
 * itself in `waiters`, and the task was marked done before this runs). */
static void on_complete(ar_task *t, void *ctx)
{
    waitgroup *wg = ctx;
    (void)t;
    atomic_thread_fence(memory_order_seq_cst);
    if (!atomic_load(&wg->waiters)) return;
    pthread_mutex_lock(&wg->mu);
    pthread_cond_broadcast(&wg->cv);
    pthread_mutex_unlock(&wg->mu);
}

static void wg_init(waitgroup *wg)
{
    pthread_mutex_init(&wg->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&wg->cv, &ca);
    pthread_condattr_destroy(&ca);
    atomic_init(&wg->waiters, 0);
    wg->sink.complete = on_complete;
    wg->sink.ctx = wg;
}

static void wg_destroy(waitgroup *wg)
{
    pthread_cond_destroy(&wg->cv);
    pthread_mutex_destroy(&wg->mu);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Waits until t is answered; 0 = done, -1 = timed out (timeout_ms < 0: forever). */
static int wait_task(waitgroup *wg, ar_task *t, long timeout_ms)
{
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    if (timeout_ms >= 0) {
        dl.tv_sec += timeout_ms / 1000;
        dl.tv_nsec += (timeout_ms % 1000) * 1000000L;
        if (dl.tv_nsec >= 1000000000L) {
            dl.tv_sec++;
            dl.tv_nsec -= 1000000000L;
        }
    }
    int rc = 0;
    pthread_mutex_lock(&wg->mu);
    atomic_fetch_add(&wg->waiters, 1);
    while (!core.done(t)) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&wg->cv, &wg->mu);
        } else if (pthread_cond_timedwait(&wg->cv, &wg->mu, &dl) == ETIMEDOUT) {
            rc = core.done(t) ? 0 : -1;
            break;
        }
    }
    atomic_fetch_sub(&wg->waiters, 1);
    pthread_mutex_unlock(&wg->mu);
    return rc;
}

/* ---- payloads ---- */
static uint32_t crc32_of(const unsigned char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

/* Parses PAYLOAD into a malloc'ed buffer (caller frees). */
static char *make_payload(const char *spec, size_t *len)
{
    char *buf;
    *len = 0;
    if (!strcmp(spec, "empty")) return calloc(1, 1);
    if (!strncmp(spec, "text:", 5)) {
        *len = strlen(spec + 5);
        return strdup(spec + 5);
    }
    if (!strncmp(spec, "hex:", 4)) {
        size_t n = strlen(spec + 4) / 2;
        buf = malloc(n + 1);
        if (!buf) return NULL;
        for (size_t i = 0; i < n; i++) {
            int hi = hexval(spec[4 + 2 * i]), lo = hexval(spec[5 + 2 * i]);
            if (hi < 0 || lo < 0) {
                free(buf);
                return NULL;
            }
            buf[i] = (char)(hi * 16 + lo);
        }
        *len = n;
        return buf;
    }
    if (!strncmp(spec, "rep:", 4)) {
        int hi = hexval(spec[4]), lo = hexval(spec[5]);
        size_t n = strtoul(spec + 7, NULL, 10);
        if (hi < 0 || lo < 0 || spec[6] != ':') return NULL;
        buf = malloc(n + 1);
        if (!buf) return NULL;
        memset(buf, hi * 16 + lo, n);
        *len = n;
        return buf;
    }
    if (!strncmp(spec, "rand:", 5)) {
        size_t n = strtoul(spec + 5, NULL, 10);
        uint32_t x = 2463534242u;
        buf = malloc(n + 1);
        if (!buf) return NULL;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            buf[i] = (char)(x & 0xff);
        }
        *len = n;
        return buf;
    }
    return NULL;
}

static void print_result(ar_task *t)
{
    size_t len = 0;
    const char *r = core.response(t, &len);
    printf("done rc=%d nil=%d len=%zu crc=%08x hex=", core.rc(t), r == NULL, len,
           crc32_of((const unsigned char *)(r ? r : ""), r ? len : 0));
    size_t show = len <= 65536 ? len : 64;
    for (size_t i = 0; i < show; i++) printf("%02x", (unsigned char)r[i]);
    printf("\n");
}

/* ---- named runtimes and pending posts ---- */
#define MAX_NAMED 64
static struct {
    char name[64];
    ar_queue *q;
} g_rt[MAX_NAMED];
static struct {
    char id[64];
    ar_task *t;
} g_posts[1024];
static waitgroup g_wg;

static ar_queue *find_rt(const char *name)
{
    for (int i = 0; i < MAX_NAMED; i++)
        if (g_rt[i].q && !strcmp(g_rt[i].name, name)) return g_rt[i].q;
    return NULL;
}

static int post_one(ar_queue *q, const char *method, const char *spec, waitgroup *wg,
                    ar_task **out)
{
    size_t len;
    char *p = make_payload(spec, &len);
    if (!p) return AR_EINVAL;
    ar_task *t = core.task_new(method, strlen(method), p, len, &wg->sink, NULL);
    free(p);
    if (!t) return AR_ENOMEM;
    int rc = core.post(q, t);
    if (rc != AR_OK) {
        core.release(t);
        return rc;
    }
    *out = t;
    return AR_OK;
}

/* ---- stress / bench ---- */
typedef struct worker {
    pthread_t th;
    ar_queue *q;
    const char *method;
    int id, window;
    int batched;            /* post without waking, one ar_queue_wake per round */
    size_t size;
    long calls;             /* stress: total calls; bench: 0 */
    uint64_t until_ns;      /* bench: stop posting after this */
    long ok, mismatch, errors, done;
    uint64_t *lat;          /* bench latencies (ns) */
    long nlat, cap;
} worker;

/* One waitgroup per worker slot, alive until exit: a sink may still be
 * running (it runs after the task is marked done) when the worker that
 * posted the task has seen the answer and moved on. */
#define MAX_WORKERS 64
static waitgroup g_worker_wg[MAX_WORKERS];

static void *worker_main(void *arg)
{
    worker *w = arg;
    waitgroup *wgp = &g_worker_wg[w->id];
#define wg (*wgp)
    ar_task **slot = calloc((size_t)w->window, sizeof *slot);
    uint64_t *t0 = calloc((size_t)w->window, sizeof *t0);
    char **payload = calloc((size_t)w->window, sizeof *payload);
    long posted = 0;
    for (int i = 0; i < w->window; i++) {
        payload[i] = malloc(w->size + 1);
        for (size_t j = 0; j < w->size; j++)
            payload[i][j] = (char)((unsigned)(w->id * 131 + i * 7 + (int)j) & 0xff);
    }
    for (;;) {
        /* fill free slots */
        int wake_owed = 0;
        for (int i = 0; i < w->window; i++) {
            if (slot[i]) continue;
            if (w->calls ? posted >= w->calls : now_ns() >= w->until_ns) continue;
            /* stamp the slot so every payload in flight is distinct */
            if (w->size >= 8) memcpy(payload[i], &posted, sizeof posted);
            ar_task *t = core.task_new(w->method, strlen(w->method), payload[i], w->size,
                                       &wg.sink, NULL);
            int owed = 0;
            int rc = w->batched ? core.post_nowake(w->q, t, &owed) : core.post(w->q, t);
            wake_owed |= owed;
            if (rc != AR_OK) {
                core.release(t);
                w->errors++;
                posted++;
                continue;
            }
            slot[i] = t;
            t0[i] = now_ns();
            posted++;
        }
        if (wake_owed) core.queue_wake(w->q);
        int busy = 0;
        pthread_mutex_lock(&wg.mu);
        atomic_fetch_add(&wg.waiters, 1);
        for (;;) {
            int any_done = 0;
            busy = 0;
            for (int i = 0; i < w->window; i++) {
                if (!slot[i]) continue;
                busy = 1;
                if (core.done(slot[i])) any_done = 1;
            }
            if (!busy || any_done) break;
            pthread_cond_wait(&wg.cv, &wg.mu);
        }
        atomic_fetch_sub(&wg.waiters, 1);
        pthread_mutex_unlock(&wg.mu);
        if (!busy) break;
        for (int i = 0; i < w->window; i++) {
            ar_task *t = slot[i];
            if (!t || !core.done(t)) continue;
            uint64_t dt = now_ns() - t0[i];
            size_t len;
            const char *r = core.response(t, &len);
            if (core.rc(t) != 0) {
                w->errors++;
            } else if (len == w->size && (w->size == 0 || !memcmp(r, payload[i], len))) {
                w->ok++;
            } else {
                w->mismatch++;
            }
            if (w->nlat < w->cap) w->lat[w->nlat++] = dt;
            w->done++;
            core.release(t);
            slot[i] = NULL;
        }
    }
    for (int i = 0; i < w->window; i++) free(payload[i]);
    free(payload);
    free(slot);
    free(t0);
    return NULL;
#undef wg
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void run_workers(ar_queue *q, const char *method, int threads, long calls, double secs,
                        size_t size, int window, int bench, int batched)
{
    if (threads < 1 || threads > MAX_WORKERS) {
        printf("err threads must be 1..%d\n", MAX_WORKERS);
        return;
    }
    worker *ws = calloc((size_t)threads, sizeof *ws);
    uint64_t start = now_ns();
    for (int i = 0; i < threads; i++) {
        ws[i].q = q;
        ws[i].method = method;
        ws[i].id = i;
        ws[i].window = window;
        ws[i].batched = batched;
        ws[i].size = size;
        ws[i].calls = bench ? 0 : calls;
        ws[i].until_ns = start + (uint64_t)(secs * 1e9);
        ws[i].cap = bench ? 4000000 : 0;
        ws[i].lat = bench ? malloc((size_t)ws[i].cap * sizeof(uint64_t)) : NULL;
        pthread_create(&ws[i].th, NULL, worker_main, &ws[i]);
    }
    long ok = 0, mismatch = 0, errors = 0, done = 0, nlat = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ws[i].th, NULL);
        ok += ws[i].ok;
        mismatch += ws[i].mismatch;
        errors += ws[i].errors;
        done += ws[i].done;
        nlat += ws[i].nlat;
    }
    double elapsed = (double)(now_ns() - start) / 1e9;
    if (!bench) {
        printf("stress ok=%ld mismatch=%ld errors=%ld\n", ok, mismatch, errors);
    } else {
        uint64_t *all = malloc((size_t)(nlat ? nlat : 1) * sizeof *all);
        long k = 0;
        for (int i = 0; i < threads; i++) {
            memcpy(all + k, ws[i].lat, (size_t)ws[i].nlat * sizeof *all);
            k += ws[i].nlat;
        }
        qsort(all, (size_t)nlat, sizeof *all, cmp_u64);
        double p50 = nlat ? (double)all[nlat / 2] / 1e3 : 0;
        double p99 = nlat ? (double)all[(long)((double)nlat * 0.99)] / 1e3 : 0;
        printf("bench {\"calls\": %ld, \"seconds\": %.3f, \"calls_per_s\": %.1f, "
               "\"p50_us\": %.2f, \"p99_us\": %.2f, \"errors\": %ld, \"mismatch\": %ld}\n",
               done, elapsed, (double)done / elapsed, p50, p99, errors, mismatch);
        free(all);
    }
    for (int i = 0; i < threads; i++) free(ws[i].lat);
    free(ws);
}

/* The host's own signal handler: the loader must leave it in place. */
static void on_signal(int sig) { (void)sig; }

/* ---- the script ---- */
static int run_line(char *line)
{
    char *argv[16];
    int argc = 0;
    for (char *tok = strtok(line, " \t\r\n"); tok && argc < 16; tok = strtok(NULL, " \t\r\n"))
        argv[argc++] = tok;
    if (argc == 0 || argv[0][0] == '#') return 0;
    const char *cmd = argv[0];

    if (!strcmp(cmd, "load") && argc >= 4) {
        char err[512] = "";
        int slot = -1;
        for (int i = 0; i < MAX_NAMED; i++)
            if (!g_rt[i].q) {
                slot = i;
                break;
            }
        const char *cfg = strcmp(argv[3], "-") ? argv[3] : NULL;
        ar_queue *q = core.load(argv[2], cfg, argc > 4 ? atoi(argv[4]) : 0,
                                argc > 5 ? atoi(argv[5]) : 0, err, sizeof err);
        if (!q || slot < 0) {
            printf("err %s\n", q ? "too many runtimes" : err);
            return 0;
        }
        snprintf(g_rt[slot].name, sizeof g_rt[slot].name, "%s", argv[1]);
        g_rt[slot].q = q;
        printf("ok\n");
    } else if (!strcmp(cmd, "call") && argc >= 4) {
        ar_queue *q = find_rt(argv[1]);
        ar_task *t;
        int rc = q ? post_one(q, argv[2], argv[3], &g_wg, &t) : AR_EINVAL;
        if (rc != AR_OK) {
            printf("err post %d\n", rc);
            return 0;
        }
        if (wait_task(&g_wg, t, argc > 4 ? atol(argv[4]) : -1) < 0) {
            core.abort(t);
            printf("timeout\n");
        } else {
            print_result(t);
        }
        core.release(t);
    } else if (!strcmp(cmd, "post") && argc >= 5) {
        ar_queue *q = find_rt(argv[1]);
        int slot = -1;
        for (int i = 0; i < 1024; i++)
            if (!g_posts[i].t) {
                slot = i;
                break;
            }
        ar_task *t;
        int rc = q && slot >= 0 ? post_one(q, argv[3], argv[4], &g_wg, &t) : AR_EINVAL;
        if (rc != AR_OK) {
            printf("err post %d\n", rc);
            return 0;
        }
        snprintf(g_posts[slot].id, sizeof g_posts[slot].id, "%s", argv[2]);
        g_posts[slot].t = t;
        printf("ok\n");
    } else if ((!strcmp(cmd, "wait") || !strcmp(cmd, "abort")) && argc >= 2) {
        int slot = -1;
        for (int i = 0; i < 1024; i++)
            if (g_posts[i].t && !strcmp(g_posts[i].id, argv[1])) {
                slot = i;
                break;
            }
        if (slot < 0) {
            printf("err no such post\n");
            return 0;
        }
        ar_task *t = g_posts[slot].t;
        if (!strcmp(cmd, "abort")) {
            core.abort(t);
            printf("ok\n");
        } else if (wait_task(&g_wg, t, argc > 2 ? atol(argv[2]) : -1) < 0) {
            printf("timeout\n");
            return 0;               /* still pending: wait again or abort */
        } else {
            print_result(t);
        }
        core.release(t);
        g_posts[slot].t = NULL;
    } else if (!strcmp(cmd, "unload") && argc >= 2) {
        for (int i = 0; i < MAX_NAMED; i++)
            if (g_rt[i].q && !strcmp(g_rt[i].name, argv[1])) {
                core.unload(g_rt[i].q);
                core.queue_unref(g_rt[i].q);
                g_rt[i].q = NULL;
            }
        printf("ok\n");
    } else if (!strcmp(cmd, "pending") && argc >= 2) {
        ar_queue *q = find_rt(argv[1]);
        printf("pending %d\n", q ? core.pending(q) : -1);
    } else if ((!strcmp(cmd, "stress") || !strcmp(cmd, "bstress") || !strcmp(cmd, "bench")) &&
               argc >= 7) {
        ar_queue *q = find_rt(argv[1]);
        if (!q) {
            printf("err no such runtime\n");
            return 0;
        }
        int bench = !strcmp(cmd, "bench");
        run_workers(q, argv[2], atoi(argv[3]), bench ? 0 : atol(argv[4]),
                    bench ? atof(argv[4]) : 0, strtoul(argv[5], NULL, 10), atoi(argv[6]), bench,
                    !strcmp(cmd, "bstress"));
    } else if (!strcmp(cmd, "sleep") && argc >= 2) {
        usleep((useconds_t)atol(argv[1]) * 1000);
        printf("ok\n");
    } else if (!strcmp(cmd, "signals")) {
        static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGPIPE};
        printf("signals");
        for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) {
            struct sigaction sa;
            sigaction(sigs[i], NULL, &sa);
            printf(" %d=%s", sigs[i], sa.sa_handler == SIG_DFL ? "dfl" :
                   sa.sa_handler == SIG_IGN ? "ign" : sa.sa_handler == on_signal ? "host" : "other");
        }
        printf("\n");
    } else if (!strcmp(cmd, "pyshutdown")) {
        /* as a host would at exit: the loader is already loaded, find it */
        void *h = dlopen("libaioresty.so", RTLD_NOW | RTLD_NOLOAD);
        int (*fn)(void) = NULL;
        if (h) *(void **)&fn = dlsym(h, "aioresty_python_shutdown");
        printf("pyshutdown %d\n", fn ? fn() : -100);
        if (h) dlclose(h);
    } else if (!strcmp(cmd, "forkload") && argc >= 3) {
        int fds[2];
        char msg[600] = "";
        if (pipe(fds) != 0) {
            printf("err pipe\n");
            return 0;
        }
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
            char err[512] = "";
            const char *cfg = strcmp(argv[2], "-") ? argv[2] : NULL;
            ar_queue *q = core.load(argv[1], cfg, 0, 0, err, sizeof err);
            int n = snprintf(msg, sizeof msg, "%s", q ? "ok" : err);
            (void)!write(fds[1], msg, (size_t)n);
            _exit(0);
        }
        close(fds[1]);
        ssize_t n = read(fds[0], msg, sizeof msg - 1);
        msg[n > 0 ? n : 0] = '\0';
        close(fds[0]);
        waitpid(pid, NULL, 0);
        printf("forkload %s\n", msg);
    } else if (!strcmp(cmd, "alive")) {
        printf("alive tasks=%ld queues=%ld\n", core.tasks_alive(), core.queues_alive());
    } else if (!strcmp(cmd, "exit")) {
        return 1;
    } else {
        printf("err bad command '%s'\n", cmd);
    }
    return 0;
}

int main(int argc, char **argv)
{
    char line[1 << 17];
    if (argc < 2) {
        fprintf(stderr, "usage: ar_testhost CORE_LIB_PATH < script\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);      /* as a proxy would; SIGINT stays default */
    signal(SIGPIPE, SIG_IGN);
    if (bind_core(argv[1]) < 0) return 2;
    wg_init(&g_wg);
    for (int i = 0; i < MAX_WORKERS; i++) wg_init(&g_worker_wg[i]);
    while (fgets(line, sizeof line, stdin)) {
        if (run_line(line)) break;
    }
    /* Orderly shutdown: unload everything, give runtimes time to see it. */
    for (int i = 0; i < MAX_NAMED; i++)
        if (g_rt[i].q) {
            core.queue_unref(g_rt[i].q);
            g_rt[i].q = NULL;
        }
    for (int i = 0; i < 1024; i++)
        if (g_posts[i].t) {
            core.abort(g_posts[i].t);
            core.release(g_posts[i].t);
        }
    core.unload_all();
    for (int i = 0; i < 200 && (core.queues_alive() || core.tasks_alive()); i++) usleep(10000);
    printf("exit tasks=%ld queues=%ld\n", core.tasks_alive(), core.queues_alive());
    wg_destroy(&g_wg);
    for (int i = 0; i < MAX_WORKERS; i++) wg_destroy(&g_worker_wg[i]);
    return 0;
}
