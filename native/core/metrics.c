/*
 * metrics.c - the process-wide metrics table (aioresty_core.h section 4):
 * per-runtime call metrics the core records itself at post and respond,
 * runtime-reported gauges, application series, and the two ways out (every
 * series with its totals or its deltas since the last take; Prometheus
 * text).
 *
 * Threads and locks.  Values are atomics, written on any thread without a
 * lock.  g_mu guards the list of queues and every ar_metrics_take shadow
 * (x_* fields); q->mu guards a queue's method list, which only grows (post()
 * adds under the lock it already holds); g_app_mu guards the application
 * table and its values.  Order: g_mu, then q->mu or g_app_mu; nothing here
 * takes the registry lock, and no callback runs with q->mu held.
 *
 * Ownership.  A queue's ar_method_stats are malloc'ed by
 * ar_stats_method_locked and freed by ar_stats_queue_fini (the queue's last
 * reference, under g_mu, so no reader holds them).  Application series live
 * until the process exits.
 */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core_internal.h"

enum {
    F_CALLS, F_ANSWERS, F_TIME, F_IN_FLIGHT, F_REJECTED, F_QUEUE_DEPTH, F_LOOP_LAG,
    F_APP_COUNTER, F_APP_GAUGE, F_APP_HISTOGRAM, F_COUNT
};

static const ar_family k_families[F_COUNT] = {
    [F_CALLS] = {"calls_total", AR_METRIC_COUNTER, 2, {"runtime", "method"},
                 "Calls posted to a runtime."},
    [F_ANSWERS] = {"answers_total", AR_METRIC_COUNTER, 3, {"runtime", "method", "rc"},
                   "Answers by rc (0 is success; rc above 15 is counted as \"other\")."},
    [F_TIME] = {"call_time_us", AR_METRIC_HISTOGRAM, 2, {"runtime", "method"},
                "Microseconds from a call's post to its answer."},
    [F_IN_FLIGHT] = {"in_flight", AR_METRIC_GAUGE, 2, {"runtime", "method"},
                     "Calls posted and not answered yet."},
    [F_REJECTED] = {"rejected_total", AR_METRIC_COUNTER, 2, {"runtime", "reason"},
                    "Calls the queue refused: full (max_queue waiting) or closed (unloaded)."},
    [F_QUEUE_DEPTH] = {"queue_depth", AR_METRIC_GAUGE, 1, {"runtime"},
                       "Calls waiting for the runtime to take them."},
    [F_LOOP_LAG] = {"loop_lag_us", AR_METRIC_GAUGE, 1, {"runtime"},
                    "How late the runtime's event loop last ran its heartbeat, in microseconds."},
    [F_APP_COUNTER] = {"app_counter_total", AR_METRIC_COUNTER, 3, {"runtime", "name", "labels"},
                       "Application counters (app.counter)."},
    [F_APP_GAUGE] = {"app_gauge", AR_METRIC_GAUGE, 3, {"runtime", "name", "labels"},
                     "Application gauges (app.gauge)."},
    [F_APP_HISTOGRAM] = {"app_histogram", AR_METRIC_HISTOGRAM, 3, {"runtime", "name", "labels"},
                         "Application histograms (app.histogram)."},
};

static const double k_call_bounds[AR_CALL_BOUNDS] = {
    50, 100, 250, 500, 1e3, 2.5e3, 5e3, 1e4, 2.5e4, 5e4, 1e5, 2.5e5, 5e5,
    1e6, 2.5e6, 5e6, 1e7, 3e7, 6e7,
};

static const char *const k_rc_names[AR_RC_SLOTS] = {
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "other",
};

int ar_metric_families(const ar_family **out)
{
    *out = k_families;
    return F_COUNT;
}

int ar_metric_call_bounds(const double **out)
{
    *out = k_call_bounds;
    return AR_CALL_BOUNDS;
}

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static ar_queue *g_queues;          /* every live queue, under g_mu */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ------------------------------------------------- recording (core only) */

void ar_stats_queue_init(ar_queue *q)
{
    pthread_mutex_lock(&g_mu);
    q->stats.next = g_queues;
    g_queues = q;
    pthread_mutex_unlock(&g_mu);
}

void ar_stats_queue_fini(ar_queue *q)
{
    pthread_mutex_lock(&g_mu);
    for (ar_queue **p = &g_queues; *p; p = &(*p)->stats.next) {
        if (*p == q) {
            *p = q->stats.next;
            break;
        }
    }
    pthread_mutex_unlock(&g_mu);
    for (int i = 0; i < q->stats.nmethods; i++) free(q->stats.methods[i]);
    free(q->stats.other);
}

void ar_stats_set_runtime(ar_queue *q, const char *key)
{
    size_t n = strcspn(key, " \t\r\n");
    if (n >= sizeof q->stats.runtime) n = sizeof q->stats.runtime - 1;
    memcpy(q->stats.runtime, key, n);
    q->stats.runtime[n] = '\0';
}

static ar_method_stats *method_new(const char *m, size_t len)
{
    /* sizeof is a multiple of the 64-byte alignment of its members */
    ar_method_stats *s = aligned_alloc(_Alignof(ar_method_stats), sizeof *s);
    if (!s) return NULL;
    memset(s, 0, sizeof *s);
    memcpy(s->name, m, len);
    s->name[len] = '\0';
    return s;
}

ar_method_stats *ar_stats_method_locked(ar_queue *q, const char *m, size_t len)
{
    ar_queue_stats *st = &q->stats;
    if (len > AR_METHOD_MAX) len = AR_METHOD_MAX;
    for (int i = 0; i < st->nmethods; i++) {
        ar_method_stats *s = st->methods[i];
        if (s->len == len && memcmp(s->name, m, len) == 0) return s;
    }
    if (st->nmethods < AR_METRIC_METHODS) {
        ar_method_stats *s = method_new(m, len);
        if (!s) return NULL;        /* not counted; the call goes on */
        s->len = len;
        st->methods[st->nmethods++] = s;
        return s;
    }
    if (!st->other) st->other = method_new("(other)", 7);
    return st->other;
}

uint64_t ar_stats_clock(void) { return now_ns(); }

void ar_stats_posted(ar_method_stats *s)
{
    if (s) atomic_fetch_add_explicit(&s->calls, 1, memory_order_relaxed);
}

/* The bucket of v: the first bound >= v, else n (+Inf). */
static int bucket_of(const double *bounds, int n, double v)
{
    int b = 0;
    while (b < n && v > bounds[b]) b++;
    return b;
}

void ar_stats_answered(ar_method_stats *s, int rc, uint64_t t0)
{
    if (!s) return;
    uint64_t us = (now_ns() - t0) / 1000;
    int b = bucket_of(k_call_bounds, AR_CALL_BOUNDS, (double)us);
    atomic_fetch_add_explicit(&s->counts[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->sum_us, us, memory_order_relaxed);
    /* last: in_flight (calls - answers) never goes below the histogram */
    atomic_fetch_add_explicit(&s->answers[rc >= 0 && rc < AR_RC_SLOTS - 1 ? rc : AR_RC_SLOTS - 1],
                              1, memory_order_release);
}

void ar_stats_rejected_locked(ar_queue *q, int code)
{
    atomic_fetch_add_explicit(code == AR_EFULL ? &q->stats.rejected_full
                                               : &q->stats.rejected_closed,
                              1, memory_order_relaxed);
}

void ar_queue_set_loop_lag(ar_queue *q, double us)
{
    if (!q) return;
    atomic_store_explicit(&q->stats.loop_lag_us, us > 0 && isfinite(us) ? (uint64_t)us : 0,
                          memory_order_relaxed);
    atomic_store_explicit(&q->stats.lag_reported, 1, memory_order_relaxed);
}

/* ------------------------------------------------------- application series */

typedef struct app_series {
    int kind;
    char *name, *runtime, *labels;
    double value;                   /* counter / gauge */
    int nbounds;
    double bounds[AR_METRIC_BUCKETS_MAX];
    uint64_t counts[AR_METRIC_BUCKETS_MAX + 1];
    double sum;
    double x_value, x_sum;          /* take shadow, under g_mu */
    uint64_t x_counts[AR_METRIC_BUCKETS_MAX + 1];
} app_series;

static pthread_mutex_t g_app_mu = PTHREAD_MUTEX_INITIALIZER;
static app_series *g_app[AR_METRIC_APP_SERIES];
static int g_napp;

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 100) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
                 (i > 0 && c >= '0' && c <= '9');
        if (!ok) return 0;
    }
    return 1;
}

static int valid_text(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n > max) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return 0;
    return 1;
}

int ar_metric_series(ar_queue *q, int kind, const char *name, const char *labels,
                     const double *bounds, int nbounds)
{
    const char *rt = q ? q->stats.runtime : "";
    if (!labels) labels = "";
    if (kind < AR_METRIC_COUNTER || kind > AR_METRIC_HISTOGRAM || !name || !valid_name(name) ||
        !valid_text(labels, 256))
        return -1;
    if (kind == AR_METRIC_HISTOGRAM) {
        if (!bounds || nbounds < 1 || nbounds > AR_METRIC_BUCKETS_MAX) return -1;
        for (int i = 0; i < nbounds; i++)
            if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1])) return -1;
    } else {
        nbounds = 0;
    }
    int h = -1;
    pthread_mutex_lock(&g_app_mu);
    for (int i = 0; i < g_napp; i++) {
        app_series *s = g_app[i];
        if (s->kind == kind && !strcmp(s->name, name) && !strcmp(s->runtime, rt) &&
            !strcmp(s->labels, labels)) {
            h = i;
            goto out;
        }
    }
    if (g_napp == AR_METRIC_APP_SERIES) goto out;
    app_series *s = calloc(1, sizeof *s);
    if (!s) goto out;
    s->kind = kind;
    s->name = strdup(name);
    s->runtime = strdup(rt);
    s->labels = strdup(labels);
    if (!s->name || !s->runtime || !s->labels) {
        free(s->name);
        free(s->runtime);
        free(s->labels);
        free(s);
        goto out;
    }
    s->nbounds = nbounds;
    if (nbounds) memcpy(s->bounds, bounds, (size_t)nbounds * sizeof *bounds);
    h = g_napp;
    g_app[g_napp++] = s;
out:
    pthread_mutex_unlock(&g_app_mu);
    return h;
}

static app_series *app_get(int h)
{
    /* the table only grows: a handle once returned stays valid */
    return h >= 0 && h < AR_METRIC_APP_SERIES ? g_app[h] : NULL;
}

void ar_metric_add(int handle, double value)
{
    if (!isfinite(value)) return;
    pthread_mutex_lock(&g_app_mu);
    app_series *s = handle < g_napp ? app_get(handle) : NULL;
    if (s && s->kind == AR_METRIC_HISTOGRAM) {
        s->counts[bucket_of(s->bounds, s->nbounds, value)]++;
        s->sum += value;
    } else if (s && (s->kind == AR_METRIC_GAUGE || value >= 0)) {
        s->value += value;
    }
    pthread_mutex_unlock(&g_app_mu);
}

void ar_metric_set(int handle, double value)
{
    if (!isfinite(value)) return;
    pthread_mutex_lock(&g_app_mu);
    app_series *s = handle < g_napp ? app_get(handle) : NULL;
    if (s && s->kind == AR_METRIC_GAUGE) s->value = value;
    pthread_mutex_unlock(&g_app_mu);
}

/* --------------------------------------------------------------- reading */

/* A queue's method list as it is now (q->mu held only for the copy). */
static int methods_of(ar_queue *q, ar_method_stats **out)
{
    pthread_mutex_lock(&q->mu);
    int n = q->stats.nmethods;
    memcpy(out, q->stats.methods, (size_t)n * sizeof *out);
    if (q->stats.other) out[n++] = q->stats.other;
    pthread_mutex_unlock(&q->mu);
    return n;
}

static uint64_t load(atomic_uint_fast64_t *a)
{
    return atomic_load_explicit(a, memory_order_acquire);
}

/* take: deliver the change since *x and advance it; 0 = nothing to deliver */
static int counter_out(int take, uint64_t v, uint64_t *x, double *out)
{
    if (!take) {
        *out = (double)v;
        return 1;
    }
    uint64_t d = v - *x;
    *x = v;
    *out = (double)d;
    return d != 0;
}

static void emit_calls(int fam, int take, ar_sample_fn fn, void *ud)
{
    ar_method_stats *ms[AR_METRIC_METHODS + 1];
    for (ar_queue *q = g_queues; q; q = q->stats.next) {
        int n = methods_of(q, ms);
        for (int i = 0; i < n; i++) {
            ar_method_stats *m = ms[i];
            ar_sample s = {.family = fam, .values = {q->stats.runtime, m->name, NULL}};
            if (fam == F_CALLS) {
                if (counter_out(take, load(&m->calls), &m->x_calls, &s.value)) fn(&s, ud);
            } else if (fam == F_ANSWERS) {
                for (int r = 0; r < AR_RC_SLOTS; r++) {
                    uint64_t v = load(&m->answers[r]);
                    if (!v) continue;
                    s.values[2] = k_rc_names[r];
                    if (counter_out(take, v, &m->x_answers[r], &s.value)) fn(&s, ud);
                }
            } else if (fam == F_IN_FLIGHT) {
                uint64_t done = 0;
                for (int r = 0; r < AR_RC_SLOTS; r++) done += load(&m->answers[r]);
                uint64_t calls = load(&m->calls);   /* after the answers: never below */
                s.value = (double)(calls - done);
                fn(&s, ud);
            } else {                                /* F_TIME */
                uint64_t counts[AR_CALL_BOUNDS + 1], total = 0, sum = load(&m->sum_us);
                for (int b = 0; b <= AR_CALL_BOUNDS; b++) {
                    uint64_t v = load(&m->counts[b]);
                    counts[b] = take ? v - m->x_counts[b] : v;
                    if (take) m->x_counts[b] = v;
                    total += counts[b];
                }
                s.sum = (double)(take ? sum - m->x_sum : sum);
                if (take) m->x_sum = sum;
                if (!total) continue;
                s.nbounds = AR_CALL_BOUNDS;
                s.bounds = k_call_bounds;
                s.counts = counts;
                fn(&s, ud);
            }
        }
    }
}

static void emit_queues(int fam, int take, ar_sample_fn fn, void *ud)
{
    for (ar_queue *q = g_queues; q; q = q->stats.next) {
        ar_sample s = {.family = fam, .values = {q->stats.runtime, NULL, NULL}};
        if (fam == F_REJECTED) {
            uint64_t full = load(&q->stats.rejected_full), closed = load(&q->stats.rejected_closed);
            s.values[1] = "full";
            if (full && counter_out(take, full, &q->stats.x_rejected_full, &s.value)) fn(&s, ud);
            s.values[1] = "closed";
            if (closed && counter_out(take, closed, &q->stats.x_rejected_closed, &s.value))
                fn(&s, ud);
        } else if (fam == F_QUEUE_DEPTH) {
            s.value = ar_queue_pending(q);
            fn(&s, ud);
        } else if (atomic_load_explicit(&q->stats.lag_reported, memory_order_relaxed)) {
            s.value = (double)load(&q->stats.loop_lag_us);
            fn(&s, ud);
        }
    }
}

static void emit_app(int fam, int take, ar_sample_fn fn, void *ud)
{
    int kind = k_families[fam].kind;
    pthread_mutex_lock(&g_app_mu);
    int n = g_napp;
    pthread_mutex_unlock(&g_app_mu);
    for (int i = 0; i < n; i++) {
        app_series *a = g_app[i];
        if (a->kind != kind) continue;
        ar_sample s = {.family = fam, .values = {a->runtime, a->name, a->labels}};
        uint64_t counts[AR_METRIC_BUCKETS_MAX + 1];
        int deliver = 1;
        pthread_mutex_lock(&g_app_mu);
        if (kind == AR_METRIC_GAUGE) {
            s.value = a->value;
        } else if (kind == AR_METRIC_COUNTER) {
            s.value = take ? a->value - a->x_value : a->value;
            if (take) a->x_value = a->value;
            deliver = !take || s.value != 0;
        } else {
            uint64_t total = 0;
            for (int b = 0; b <= a->nbounds; b++) {
                counts[b] = take ? a->counts[b] - a->x_counts[b] : a->counts[b];
                if (take) a->x_counts[b] = a->counts[b];
                total += counts[b];
            }
            s.sum = take ? a->sum - a->x_sum : a->sum;
            if (take) a->x_sum = a->sum;
            s.nbounds = a->nbounds;
            s.bounds = a->bounds;
            s.counts = counts;
            deliver = !take || total != 0;
        }
        pthread_mutex_unlock(&g_app_mu);
        /* the callback runs without g_app_mu: it may record metrics itself */
        if (deliver) fn(&s, ud);
    }
}

static void each(ar_sample_fn fn, void *ud, int take)
{
    pthread_mutex_lock(&g_mu);
    for (int f = 0; f < F_COUNT; f++) {
        if (f <= F_IN_FLIGHT)
            emit_calls(f, take, fn, ud);
        else if (f <= F_LOOP_LAG)
            emit_queues(f, take, fn, ud);
        else
            emit_app(f, take, fn, ud);
    }
    pthread_mutex_unlock(&g_mu);
}

void ar_metrics_each(ar_sample_fn fn, void *ud) { each(fn, ud, 0); }
void ar_metrics_take(ar_sample_fn fn, void *ud) { each(fn, ud, 1); }

/* ------------------------------------------------------------ Prometheus */

typedef struct text {
    char *p;
    size_t cap, len;
    int last_family;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t room = t->len < t->cap ? t->cap - t->len : 0;
    int n = vsnprintf(room ? t->p + t->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0) t->len += (size_t)n;
}

/* A label value, escaped as the exposition format wants (\\, \", \n). */
static void put_value(text *t, const char *v)
{
    for (; *v; v++) {
        if (*v == '\\' || *v == '"')
            put(t, "\\%c", *v);
        else if (*v == '\n')
            put(t, "\\n");
        else
            put(t, "%c", *v);
    }
}

static void put_labels(text *t, const ar_family *f, const ar_sample *s, const char *le)
{
    put(t, "{");
    for (int i = 0; i < f->nlabels; i++) {
        put(t, "%s%s=\"", i ? "," : "", f->labels[i]);
        put_value(t, s->values[i] ? s->values[i] : "");
        put(t, "\"");
    }
    if (le) put(t, "%sle=\"%s\"", f->nlabels ? "," : "", le);
    put(t, "}");
}

static void prom_sample(const ar_sample *s, void *ud)
{
    text *t = ud;
    const ar_family *f = &k_families[s->family];
    if (t->last_family != s->family) {
        const char *type = f->kind == AR_METRIC_COUNTER ? "counter"
                           : f->kind == AR_METRIC_GAUGE ? "gauge" : "histogram";
        put(t, "# HELP aioresty_%s %s\n# TYPE aioresty_%s %s\n", f->name, f->help, f->name, type);
        t->last_family = s->family;
    }
    if (f->kind != AR_METRIC_HISTOGRAM) {
        put(t, "aioresty_%s", f->name);
        put_labels(t, f, s, NULL);
        put(t, " %.17g\n", s->value);
        return;
    }
    uint64_t cum = 0;
    char le[32];
    for (int b = 0; b <= s->nbounds; b++) {
        cum += s->counts[b];
        if (b < s->nbounds)
            snprintf(le, sizeof le, "%.17g", s->bounds[b]);
        else
            snprintf(le, sizeof le, "+Inf");
        put(t, "aioresty_%s_bucket", f->name);
        put_labels(t, f, s, le);
        put(t, " %llu\n", (unsigned long long)cum);
    }
    put(t, "aioresty_%s_sum", f->name);
    put_labels(t, f, s, NULL);
    put(t, " %.17g\n", s->sum);
    put(t, "aioresty_%s_count", f->name);
    put_labels(t, f, s, NULL);
    put(t, " %llu\n", (unsigned long long)cum);
}

size_t ar_metrics_prometheus(char *out, size_t cap)
{
    text t = {out, cap, 0, -1};
    if (out && cap) out[0] = '\0';
    ar_metrics_each(prom_sample, &t);
    if (out && cap) out[t.len < cap ? t.len : cap - 1] = '\0';
    return t.len;
}
