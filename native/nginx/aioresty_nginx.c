/*
 * aioresty_nginx.c - per-worker waker for the nginx-lua adapter.
 * See aioresty_nginx.h for the design, threads and ownership rules.
 */
#include "aioresty_nginx.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* A growable array of completions.  Two of them: `front` is filled by the
 * sink under W.mu; `back` is read by the Lua thread between two drains.
 * arn_drain swaps them.  Capacity is reserved at post time (arn_post grows
 * front, arn_drain grows back before the swap), so the sink never allocates:
 * both arrays always have room for every task not yet drained. */
typedef struct done_vec {
    arn_done *v; /* malloc'ed, owned by the waker */
    size_t len;
    size_t cap;
} done_vec;

static struct waker {
    pid_t pid; /* process this state belongs to; 0 = not initialised */

    /* W.mu protects front, outstanding, wake_pending and conn_fd.  The sink
     * writes its wake byte while holding it, so arn_disconnect cannot close
     * (and the process reuse) the descriptor under a sink's feet. */
    pthread_mutex_t mu;
    done_vec front;     /* filled by the sink (runtime threads) */
    size_t outstanding; /* posted, not yet drained */
    int wake_pending;   /* 1 = a wake byte is on its way */
    int conn_fd;        /* our end of the wake connection, -1 = none */
    int conn_eventfd;   /* 1: conn_fd is the accelerator's eventfd (not ours to close) */

    done_vec back;           /* Lua thread only */
    int listen_fd;           /* between arn_listen and arn_accept; Lua thread */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* socket file */
    char dir[sizeof(((struct sockaddr_un *)0)->sun_path)];  /* its directory */

    atomic_ulong n_posted, n_completed, n_wakes, n_drains, n_drained;

    /* arn_post_nowake's queues owed an ar_queue_wake, one reference each
     * (taken there, dropped by arn_flush_wakes).  Lua thread only. */
    ar_queue *owed[16];
    int nowed;

    /* Log lines for the worker's error_log (arn_set_log_level), under W.mu:
     * records [level byte][4-byte length][bytes], appended by any thread,
     * taken by the Lua thread (arn_take_logs) on the next wake. */
    char *logs, *logs_back; /* malloc'ed, owned by the waker */
    size_t logs_len, logs_cap, logs_back_cap;
    unsigned long logs_dropped; /* lines refused because LOG_BUF_MAX was full */
} W = {.mu = PTHREAD_MUTEX_INITIALIZER, .conn_fd = -1, .listen_fd = -1};

static void remove_socket_file(void)
{
    if (W.path[0]) {
        unlink(W.path);
        W.path[0] = '\0';
    }
    if (W.dir[0]) {
        rmdir(W.dir);
        W.dir[0] = '\0';
    }
}

static void write_stderr_line(int level, const char *line, size_t ll);
static void flush_logs_to_stderr(void);

/* atexit: the worker exits; remove a socket file still waiting for accept,
 * and write what the Lua thread did not take to stderr. */
static void at_exit(void)
{
    if (W.pid == getpid()) {
        remove_socket_file();
        flush_logs_to_stderr();
    }
}

static void sink_complete(ar_task *t, void *ctx);
static const ar_sink SINK = {sink_complete, &W};

/* Forks seen by this library (pthread_atfork child handler): ensure_process
 * asks the kernel for the pid only after one, not on every call (getpid is a
 * system call: it was three per call, measured with strace, docs/nginx.md). */
static atomic_uint g_forks;
static unsigned g_forks_seen; /* Lua thread */

static void on_fork_child(void)
{
    atomic_fetch_add(&g_forks, 1);
}

/* Bind the waker to the calling process.  After a fork the child forgets the
 * parent's state: the arrays' contents are the parent's tasks (copies, not
 * ours to release) and the fds are the parent's connection.  Lua thread. */
static void ensure_process(void)
{
    unsigned forks = atomic_load(&g_forks);
    if (W.pid != 0 && forks == g_forks_seen)
        return;
    g_forks_seen = forks;
    pid_t me = getpid();
    if (W.pid == me)
        return;
    if (W.pid == 0) {
        atexit(at_exit); /* registered once; at_exit checks the pid */
        pthread_atfork(NULL, NULL, on_fork_child);
    } else {
        /* forked copy: no runtime thread of ours can hold W.mu here, since
         * threads do not survive fork; re-initialise it anyway. */
        pthread_mutex_init(&W.mu, NULL);
        if (W.conn_fd >= 0 && !W.conn_eventfd)
            close(W.conn_fd);
        W.conn_fd = -1;
        W.conn_eventfd = 0;
        if (W.listen_fd >= 0)
            close(W.listen_fd);
        W.listen_fd = -1;
        W.path[0] = W.dir[0] = '\0'; /* the parent's file, not ours */
        free(W.front.v);
        free(W.back.v);
        memset(&W.front, 0, sizeof W.front);
        memset(&W.back, 0, sizeof W.back);
        W.outstanding = 0;
        W.nowed = 0; /* the parent's queues and references, not ours */
        atomic_store(&W.n_posted, 0);
        atomic_store(&W.n_completed, 0);
        atomic_store(&W.n_wakes, 0);
        atomic_store(&W.n_drains, 0);
        atomic_store(&W.n_drained, 0);
    }
    W.wake_pending = 0;
    W.pid = me;
}

static int vec_reserve(done_vec *d, size_t want)
{
    if (d->cap >= want)
        return 0;
    size_t cap = d->cap ? d->cap : 64;
    while (cap < want)
        cap *= 2;
    arn_done *v = realloc(d->v, cap * sizeof *v);
    if (!v)
        return -1;
    d->v = v;
    d->cap = cap;
    return 0;
}

/* One non-blocking wake byte; caller holds W.mu.  Returns 0 when the reader
 * will wake (byte written, or unread bytes already there), -1 otherwise. */
static int write_wake_locked(void)
{
    if (W.conn_fd < 0)
        return -1;
    ssize_t n;
    if (W.conn_eventfd) {
        uint64_t one = 1;
        do {
            n = write(W.conn_fd, &one, sizeof one);
        } while (n < 0 && errno == EINTR);
        if (n == (ssize_t)sizeof one) {
            atomic_fetch_add(&W.n_wakes, 1);
            return 0;
        }
        /* EAGAIN: the counter is near overflow, i.e. unread: the reader wakes */
        return errno == EAGAIN ? 0 : -1;
    }
    do {
        n = send(W.conn_fd, "!", 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n == 1) {
        atomic_fetch_add(&W.n_wakes, 1);
        return 0;
    }
    return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
}

/* The sink: runtime thread, once per task, after the response is stored.
 * Must not block or allocate: room was reserved by arn_post. */
static void sink_complete(ar_task *t, void *ctx)
{
    struct waker *w = ctx;
    arn_done d;
    d.task = t;
    d.rsp = ar_task_response(t, &d.len);
    d.id = (int32_t)(intptr_t)ar_task_host_data(t);
    d.rc = ar_task_rc(t);

    pthread_mutex_lock(&w->mu);
    /* cap >= outstanding >= len + 1 by construction (see done_vec) */
    w->front.v[w->front.len++] = d;
    /* coalesce: only the completion that flips 0 -> 1 writes a byte.  When
     * nobody can be woken (not connected yet, reader gone) the flag stays 0
     * so a later completion tries again; arn_accept forces a drain. */
    if (!w->wake_pending && write_wake_locked() == 0)
        w->wake_pending = 1;
    pthread_mutex_unlock(&w->mu);
    atomic_fetch_add(&w->n_completed, 1);
}

/* arn_post (flush NULL: wake the runtime now) and arn_post_nowake. */
static int post_task(ar_queue *q, const char *method, size_t mlen, const char *req, size_t rlen,
                     int32_t id, ar_task **out, int *flush)
{
    if (!q || !method || !out)
        return AR_EINVAL;
    ensure_process();
    ar_task *t = ar_task_new(method, mlen, req ? req : "", req ? rlen : 0, &SINK,
                             (void *)(intptr_t)id);
    if (!t)
        return AR_ENOMEM;

    pthread_mutex_lock(&W.mu);
    int rc = vec_reserve(&W.front, W.outstanding + 1);
    if (rc == 0)
        W.outstanding++;
    pthread_mutex_unlock(&W.mu);
    if (rc != 0) {
        ar_task_release(t);
        return AR_ENOMEM;
    }

    int wake = 0;
    rc = flush ? ar_task_post_nowake(q, t, &wake) : ar_task_post(q, t);
    if (rc != AR_OK) {
        /* not posted: the sink will not run; the task is still ours */
        pthread_mutex_lock(&W.mu);
        W.outstanding--;
        pthread_mutex_unlock(&W.mu);
        ar_task_release(t);
        return rc;
    }
    atomic_fetch_add(&W.n_posted, 1);
    *out = t;
    if (wake) {
        int i = 0;
        while (i < W.nowed && W.owed[i] != q)
            i++;
        if (i < W.nowed) {
            *flush = 1; /* already owed */
        } else if (W.nowed < (int)(sizeof W.owed / sizeof W.owed[0])) {
            ar_queue_ref(q); /* q stays valid until the flush */
            W.owed[W.nowed++] = q;
            *flush = 1;
        } else {
            ar_queue_wake(q); /* no room on the list: wake it now */
        }
    }
    return AR_OK;
}

int arn_post(ar_queue *q, const char *method, size_t mlen, const char *req, size_t rlen, int32_t id,
             ar_task **out)
{
    return post_task(q, method, mlen, req, rlen, id, out, NULL);
}

int arn_post_nowake(ar_queue *q, const char *method, size_t mlen, const char *req, size_t rlen,
                    int32_t id, ar_task **out, int *flush)
{
    if (!flush)
        return AR_EINVAL;
    return post_task(q, method, mlen, req, rlen, id, out, flush);
}

int arn_flush_wakes(void)
{
    ensure_process();
    int n = W.nowed;
    W.nowed = 0;
    for (int i = 0; i < n; i++) {
        ar_queue_wake(W.owed[i]);
        ar_queue_unref(W.owed[i]);
        W.owed[i] = NULL;
    }
    return n;
}

/* arn_drain (parked_only 0) and arn_drain_parked (1): the completions into
 * W.back, *out pointing at them. */
static int take_completions(arn_done **out, int parked_only)
{
    /* back gets room for every task not yet drained.  outstanding only grows
     * on this thread (arn_post), so growing back outside the lock with the
     * value read under it is safe. */
    pthread_mutex_lock(&W.mu);
    size_t need = W.outstanding;
    pthread_mutex_unlock(&W.mu);
    W.back.len = 0;
    int grown = vec_reserve(&W.back, need) == 0;

    pthread_mutex_lock(&W.mu);
    /* clearing the flag and taking the list under one lock: a completion is
     * either in this batch or it finds the flag 0 and writes a new byte.
     * Parked-only leaves the flag: what it leaves behind is the owner's. */
    if (!parked_only)
        W.wake_pending = 0;
    if (!grown || W.front.len == 0) {
        /* nothing to take (or no memory: retried on the next wake or poll) */
        pthread_mutex_unlock(&W.mu);
        *out = W.back.v;
        return 0;
    }
    if (parked_only) {
        size_t keep = 0;
        for (size_t i = 0; i < W.front.len; i++) {
            if (W.front.v[i].id < 0)
                W.back.v[W.back.len++] = W.front.v[i];
            else
                W.front.v[keep++] = W.front.v[i];
        }
        W.front.len = keep;
    } else {
        done_vec tmp = W.front;
        W.front = W.back;
        W.back = tmp;
    }
    W.outstanding -= W.back.len;
    pthread_mutex_unlock(&W.mu);

    atomic_fetch_add(&W.n_drained, W.back.len);
    *out = W.back.v;
    return (int)W.back.len;
}

int arn_drain(arn_done **out)
{
    ensure_process();
    atomic_fetch_add(&W.n_drains, 1);
    return take_completions(out, 0);
}

int arn_drain_parked(arn_done **out)
{
    ensure_process();
    return take_completions(out, 1);
}

int arn_listen(const char *basedir, char *path, size_t pathlen)
{
    ensure_process();
    if (!path || pathlen == 0)
        return -EINVAL;
    if (W.listen_fd >= 0) {
        close(W.listen_fd);
        W.listen_fd = -1;
    }
    remove_socket_file();

    if (!basedir || !*basedir)
        basedir = getenv("TMPDIR");
    if (!basedir || !*basedir)
        basedir = "/tmp";

    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;

    char dir[sizeof W.dir];
    int n = snprintf(dir, sizeof dir, "%s/aioresty-%d-XXXXXX", basedir, (int)getpid());
    /* room for "/w.sock" after the directory */
    if (n < 0 || (size_t)n + 8 > sizeof sa.sun_path)
        return -ENAMETOOLONG;
    /* mkdtemp creates the directory with mode 0700 owned by this process's
     * user (the worker's, e.g. nobody): no other user can reach the socket */
    if (!mkdtemp(dir))
        return -errno;
    snprintf(W.dir, sizeof W.dir, "%s", dir);
    memcpy(sa.sun_path, dir, (size_t)n); /* n + 8 <= sizeof sun_path, checked */
    memcpy(sa.sun_path + n, "/w.sock", 8);

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        int e = errno;
        remove_socket_file();
        return -e;
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        int e = errno;
        close(fd);
        remove_socket_file();
        return -e;
    }
    snprintf(W.path, sizeof W.path, "%s", sa.sun_path);
    if (listen(fd, 8) < 0) {
        int e = errno;
        close(fd);
        remove_socket_file();
        return -e;
    }
    W.listen_fd = fd;
    if (strlen(W.path) + 1 > pathlen) {
        arn_disconnect();
        return -ENAMETOOLONG;
    }
    memcpy(path, W.path, strlen(W.path) + 1);
    return 0;
}

int arn_accept(void)
{
    ensure_process();
    if (W.listen_fd < 0)
        return -EINVAL;
    int found = -1, err = 0;
    /* The backlog holds our own connection; anything else (cannot normally
     * happen: the directory is private) is refused. */
    for (int i = 0; i < 8 && found < 0; i++) {
        int c = accept4(W.listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        struct ucred cr;
        socklen_t l = sizeof cr;
        if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cr, &l) == 0 && cr.pid == getpid()) {
            found = c;
        } else {
            close(c);
        }
    }
    close(W.listen_fd);
    W.listen_fd = -1;
    remove_socket_file();
    if (found < 0)
        return err ? -err : -EPERM;

    pthread_mutex_lock(&W.mu);
    if (W.conn_fd >= 0 && !W.conn_eventfd)
        close(W.conn_fd);
    W.conn_fd = found;
    W.conn_eventfd = 0;
    /* whatever completed while nobody listened: wake the reader now */
    W.wake_pending = write_wake_locked() == 0;
    pthread_mutex_unlock(&W.mu);
    return 0;
}

void arn_abort(ar_task *t)
{
    ar_task_abort(t);
}

void arn_release(ar_task *t)
{
    ar_task_release(t);
}

int arn_kick(void)
{
    ensure_process();
    pthread_mutex_lock(&W.mu);
    int rc = write_wake_locked();
    pthread_mutex_unlock(&W.mu);
    return rc == 0 ? 0 : -ENOTCONN;
}

void arn_disconnect(void)
{
    ensure_process();
    pthread_mutex_lock(&W.mu);
    if (W.conn_fd >= 0 && !W.conn_eventfd)
        close(W.conn_fd);
    W.conn_fd = -1;
    W.conn_eventfd = 0;
    W.wake_pending = 0;
    pthread_mutex_unlock(&W.mu);
    if (W.listen_fd >= 0) {
        close(W.listen_fd);
        W.listen_fd = -1;
    }
    remove_socket_file();
}

int arn_set_wake_eventfd(int fd)
{
    ensure_process();
    pthread_mutex_lock(&W.mu);
    if (W.conn_fd >= 0 && !W.conn_eventfd)
        close(W.conn_fd);
    /* under W.mu: no sink is writing to the old descriptor once we return,
     * so the accelerator may close it after detaching (fd -1) */
    W.conn_fd = fd < 0 ? -1 : fd;
    W.conn_eventfd = fd >= 0;
    W.wake_pending = 0;
    int rc = 0;
    if (fd >= 0) {
        /* whatever completed before: wake the reader now */
        rc = write_wake_locked() == 0 ? 0 : -EBADF;
        W.wake_pending = rc == 0;
    }
    pthread_mutex_unlock(&W.mu);
    return rc;
}

static const arn_accel_ops ACCEL_OPS = {
    .abi = ARN_ACCEL_ABI,
    .size = sizeof(arn_accel_ops),
    .post_nowake = arn_post_nowake,
    .flush_wakes = arn_flush_wakes,
    .drain = arn_drain,
    .release = arn_release,
    .abort = arn_abort,
    .take_logs = arn_take_logs,
    .set_wake_eventfd = arn_set_wake_eventfd,
};

const arn_accel_ops *arn_accel_ops_get(void)
{
    return &ACCEL_OPS;
}

long arn_outstanding(void)
{
    ensure_process();
    pthread_mutex_lock(&W.mu);
    long n = (long)W.outstanding;
    pthread_mutex_unlock(&W.mu);
    return n;
}

int arn_stats(char *buf, size_t len)
{
    ensure_process();
    return snprintf(buf, len,
                    "pid=%d posted=%lu completed=%lu wakes=%lu drains=%lu drained=%lu "
                    "outstanding=%ld",
                    (int)getpid(), atomic_load(&W.n_posted), atomic_load(&W.n_completed),
                    atomic_load(&W.n_wakes), atomic_load(&W.n_drains), atomic_load(&W.n_drained),
                    arn_outstanding());
}

/* ------------------------------------------------------------ logging */

#define LOG_BUF_MAX (1 << 20) /* bytes of lines waiting for the Lua thread */

static atomic_int g_ngx_log_level = 6;     /* NGX_LOG_NOTICE until told */

/* the core's 0 debug, 1 info, 2 warning, 3 error, as nginx numbers and names them */
static const struct {
    int ngx;
    const char *name;
} g_levels[] = {{8, "debug"}, {7, "info"}, {5, "warn"}, {4, "error"}};

static int clamp_level(int level)
{
    return level < 0 ? 0 : level > 3 ? 3 : level;
}

static int ngx_log_enabled(int level)
{
    return g_levels[clamp_level(level)].ngx <= atomic_load(&g_ngx_log_level);
}

/* One line on stderr the way nginx writes its log, for when no Lua thread
 * will take it (before the waker connects nothing is lost: lines wait). */
static void write_stderr_line(int level, const char *line, size_t ll)
{
    char stamp[32], head[96], small[4096];
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y/%m/%d %H:%M:%S", &tm);
    int hl = snprintf(head, sizeof head, "%s [%s] %d#%d: [aioresty] ", stamp,
                      g_levels[clamp_level(level)].name, (int)getpid(), (int)gettid());
    if (hl < 0) return;
    size_t n = (size_t)hl + ll + 1;
    char *buf = n <= sizeof small ? small : malloc(n);
    if (!buf) return;
    memcpy(buf, head, (size_t)hl);
    memcpy(buf + hl, line, ll);
    buf[n - 1] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, n);   /* one line, one write */
    (void)w;
    if (buf != small) free(buf);
}

static void flush_logs_to_stderr(void)
{
    pthread_mutex_lock(&W.mu);
    for (size_t at = 0; at + 5 <= W.logs_len;) {
        uint32_t ll;
        memcpy(&ll, W.logs + at + 1, 4);
        write_stderr_line(W.logs[at], W.logs + at + 5, ll);
        at += 5 + ll;
    }
    W.logs_len = 0;
    pthread_mutex_unlock(&W.mu);
}

/* ar_log's sink in a worker: queue the line for the Lua thread, which hands
 * it to nginx's own logger (ngx.errlog.raw_log), so it reaches every
 * error_log with nginx's format, level filter and the worker's pid. */
static void ngx_log_line(int level, const char *line)
{
    if (!ngx_log_enabled(level)) return;
    size_t ll = strlen(line);
    if (ll > LOG_BUF_MAX / 2) ll = LOG_BUF_MAX / 2;
    pthread_mutex_lock(&W.mu);
    if (W.pid != getpid() || W.logs_len + 5 + ll > LOG_BUF_MAX) {
        if (W.pid == getpid()) W.logs_dropped++;
        pthread_mutex_unlock(&W.mu);
        if (W.pid != getpid()) write_stderr_line(level, line, ll);
        return;
    }
    if (W.logs_len + 5 + ll > W.logs_cap) {
        size_t cap = W.logs_cap ? W.logs_cap : 4096;
        while (cap < W.logs_len + 5 + ll) cap *= 2;
        char *grown = realloc(W.logs, cap);
        if (!grown) {
            W.logs_dropped++;
            pthread_mutex_unlock(&W.mu);
            return;
        }
        W.logs = grown;
        W.logs_cap = cap;
    }
    uint32_t l32 = (uint32_t)ll;
    int first = W.logs_len == 0;
    W.logs[W.logs_len] = (char)clamp_level(level);
    memcpy(W.logs + W.logs_len + 1, &l32, 4);
    memcpy(W.logs + W.logs_len + 5, line, ll);
    W.logs_len += 5 + ll;
    /* The first line since the last arn_take_logs writes a wake even when a
     * completion's is pending: that wake's handler may have taken the logs
     * already and not yet drained (which clears the flag), and would leave
     * this line for whatever wakes the worker next.  The handler of this
     * byte takes the logs after reading it, so later lines need none. */
    if ((first || !W.wake_pending) && write_wake_locked() == 0) W.wake_pending = 1;
    pthread_mutex_unlock(&W.mu);
}

size_t arn_take_logs(const char **out, unsigned long *dropped)
{
    ensure_process();
    pthread_mutex_lock(&W.mu);
    char *taken = W.logs;
    size_t len = W.logs_len, cap = W.logs_cap;
    W.logs = W.logs_back;
    W.logs_cap = W.logs_back_cap;
    W.logs_len = 0;
    W.logs_back = taken;
    W.logs_back_cap = cap;
    *dropped = W.logs_dropped;
    W.logs_dropped = 0;
    pthread_mutex_unlock(&W.mu);
    *out = taken;
    return len;
}

void arn_set_log_level(int ngx_level)
{
    ensure_process();
    atomic_store(&g_ngx_log_level, ngx_level);
    ar_set_log_enabled(ngx_log_enabled);
    ar_set_logger(ngx_log_line);
}
