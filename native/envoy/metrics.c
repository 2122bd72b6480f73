/*
 * metrics.c - the core's metrics table as Envoy stats; metrics.h says what
 * runs where and who frees what.  Here: the entries, the flush thread, and
 * how a sample becomes Envoy stat updates.
 *
 * Locks.  g_mu guards the entry list, g_pending* and g_zombie, and is held
 * by the flush thread across its commit, so detach (which unlinks the
 * entry and deletes its scheduler under g_mu) can never race a commit on a
 * deleted scheduler.  No Envoy stats call runs under g_mu but one:
 * detach's hold of the series in the next exporter (main thread; the flush
 * thread waits for g_mu holding nothing Envoy's stats need).  ar_metrics_take
 * never runs under g_mu; the core's own locks come after g_mu, never before.
 *
 * The one other thread.  Envoy's commit locks a weak reference to the
 * config for the duration of the call; should every other reference go
 * meanwhile (a listener removed on the main thread), the config is
 * destroyed inside that commit, on the flush thread, with g_mu held.
 * detach then sees t_committing: it unlinks without taking g_mu (this
 * thread holds it) and leaves the scheduler still inside its own commit
 * (g_committing) to the flush thread, which deletes it when commit returns
 * (g_zombie).  The mode's config_destroy then runs on the flush thread too,
 * as it can on a worker when a filter holds a config's last reference.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

enum {
    AR_MF_MAX = 16,                 /* families defined (the core has 10) */
    PENDING_RETRY_S = 10,           /* a flush event never run: commit again */
};
/* Histogram records one value per observation; a series gets at most this
 * many records per flush (more is a bug upstream: logged, the rest dropped). */
#define MAX_RECORDS_PER_FLUSH 1000000u

typedef struct ar_mcfg {
    const void *cfg;                /* the mode's config: the key */
    void *cfg_envoy;
    void *sched;                    /* its config scheduler, deleted once */
    int upstream;
    size_t ids[AR_MF_MAX];          /* Envoy's id per family, 0: not defined */
    struct ar_mcfg *next;
} ar_mcfg;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv;         /* wakes the flush thread early (g_kick) */
static int g_started, g_kick;
static ar_mcfg *g_head;             /* creation order */
static const ar_mcfg *g_pending;    /* entry whose flush event is not run yet */
static time_t g_pending_since;
static void *g_committing;          /* the scheduler inside the flush commit */
static void *g_zombie;              /* ... when its config went meanwhile */
static _Thread_local int t_committing;  /* this thread is in that commit */

/* ---- logging, once per kind of failure ---- */

static atomic_int g_logged[8];

static void log_once(int kind, const char *what, int rc)
{
    if (atomic_exchange(&g_logged[kind & 7], 1)) return;
    ar_envoy_log(ENV_LOG_WARN, "aioresty: metrics: %s (Envoy metrics_result %d); logged once",
                 what, rc);
}

static time_t mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

/* ---- which entry exports ---- */

static ar_mcfg *exporter_locked(void)
{
    for (ar_mcfg *e = g_head; e; e = e->next)
        if (!e->upstream) return e;
    return g_head;
}

/* ---- the flush thread ---- */

/* One commit to sched, with g_mu held.  Should the commit destroy its config
 * (the file's header comment), detach leaves sched to be deleted here. */
static void commit_locked(void *sched, uint64_t event)
{
    g_committing = sched;
    t_committing = 1;
    envoy_dynamic_module_callback_http_filter_config_scheduler_commit(sched, event);
    t_committing = 0;
    g_committing = NULL;
    if (g_zombie) {
        envoy_dynamic_module_callback_http_filter_config_scheduler_delete(g_zombie);
        g_zombie = NULL;
    }
}

static void *flush_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_mu);
    for (;;) {
        struct timespec at;
        clock_gettime(CLOCK_MONOTONIC, &at);
        at.tv_sec += AR_METRICS_FLUSH_MS / 1000;
        at.tv_nsec += (AR_METRICS_FLUSH_MS % 1000) * 1000000L;
        if (at.tv_nsec >= 1000000000L) at.tv_sec++, at.tv_nsec -= 1000000000L;
        while (!g_kick && pthread_cond_timedwait(&g_cv, &g_mu, &at) == 0) {
        }
        g_kick = 0;
        ar_mcfg *e = exporter_locked();
        if (!e) continue;
        /* one event at a time: a main thread slower than the interval gets
         * no backlog (again after PENDING_RETRY_S: an event that was lost) */
        time_t now = mono_s();
        if (g_pending == e && now - g_pending_since < PENDING_RETRY_S) continue;
        g_pending = e;
        g_pending_since = now;
        commit_locked(e->sched, AR_METRICS_FLUSH_EVENT);
    }
    return NULL;
}

static int start_locked(void)
{
    if (g_started) return 0;
    if (ar_thread_start(flush_main, "aioresty-metrics", &g_cv) != 0) return -1;
    g_started = 1;
    return 0;
}

/* ---- attach / detach (config hooks) ---- */

/* Envoy deletes a config's stats with the config unless another scope holds
 * them.  So the series live in the exporter's scope and in the scope of each
 * downstream config created since (held at its attach), and at a handover
 * detach holds every series in the next exporter before the old scope goes:
 * counters and gauges continue.  Histograms cannot be held without
 * recording into them: observations of the first seconds after a handover
 * can be lost (docs/operations.md, Metrics). */
static void hold_into(void *cfg_envoy, const size_t *ids);

/* The stat is the family's bare name: Envoy prefixes the config's
 * metrics_namespace ("aioresty" in every config envoy_config makes). */
static env_metrics_result define(void *cfg_envoy, const ar_family *f, size_t *id)
{
    mod_buf labels[AR_METRIC_LABELS_MAX];
    int nl = f->nlabels < AR_METRIC_LABELS_MAX ? f->nlabels : AR_METRIC_LABELS_MAX;
    for (int i = 0; i < nl; i++) labels[i] = (mod_buf){f->labels[i], strlen(f->labels[i])};
    mod_buf nm = {f->name, strlen(f->name)};
    switch (f->kind) {
    case AR_METRIC_COUNTER:
        return envoy_dynamic_module_callback_http_filter_config_define_counter(
            cfg_envoy, nm, labels, (size_t)nl, id);
    case AR_METRIC_GAUGE:
        return envoy_dynamic_module_callback_http_filter_config_define_gauge(
            cfg_envoy, nm, labels, (size_t)nl, id);
    default:
        return envoy_dynamic_module_callback_http_filter_config_define_histogram(
            cfg_envoy, nm, labels, (size_t)nl, id);
    }
}

void ar_metrics_attach(void *cfg_envoy, const void *cfg, int upstream)
{
    ar_mcfg *e = calloc(1, sizeof *e);
    if (!e) {
        log_once(0, "out of memory: a config without metrics", 0);
        return;
    }
    e->cfg = cfg;
    e->cfg_envoy = cfg_envoy;
    e->upstream = upstream;
    const ar_family *fams;
    int n = ar_metric_families(&fams);
    if (n > AR_MF_MAX) {
        log_once(1, "more families than the module knows: the last ones are not exported", 0);
        n = AR_MF_MAX;
    }
    for (int i = 0; i < n; i++) {
        env_metrics_result rc = define(cfg_envoy, &fams[i], &e->ids[i]);
        if (rc != ENV_METRICS_SUCCESS) {
            e->ids[i] = 0;
            log_once(2, "Envoy refused a stat definition", (int)rc);
        }
    }
    e->sched = envoy_dynamic_module_callback_http_filter_config_scheduler_new(cfg_envoy);
    if (!e->sched) {
        log_once(3, "no config scheduler: a config without metrics", 0);
        free(e);
        return;
    }
    pthread_mutex_lock(&g_mu);
    if (start_locked() != 0) {
        pthread_mutex_unlock(&g_mu);
        log_once(4, "could not start the flush thread: no metrics", 0);
        envoy_dynamic_module_callback_http_filter_config_scheduler_delete(e->sched);
        free(e);
        return;
    }
    ar_mcfg **p = &g_head;
    while (*p) p = &(*p)->next;
    *p = e;
    if (exporter_locked() == e) {
        g_kick = 1;                 /* a first flush now, not in a second */
        pthread_cond_signal(&g_cv);
    }
    pthread_mutex_unlock(&g_mu);
    if (!upstream) hold_into(cfg_envoy, e->ids);   /* main thread, e cannot go meanwhile */
}

void ar_metrics_detach(const void *cfg)
{
    int locked = !t_committing;     /* inside our own commit: g_mu is held */
    if (locked) pthread_mutex_lock(&g_mu);
    ar_mcfg *e = NULL, *was = exporter_locked();
    for (ar_mcfg **p = &g_head; *p; p = &(*p)->next) {
        if ((*p)->cfg == cfg) {
            e = *p;
            *p = e->next;
            break;
        }
    }
    /* The exporter goes: hold every series in the next one now, on the main
     * thread, while the old scope still holds them (under g_mu: the next
     * config cannot go meanwhile).  Inside the flush thread's commit no stats
     * call may run: series created since the next one's attach restart. */
    ar_mcfg *next = e && e == was ? exporter_locked() : NULL;
    if (next && locked && !next->upstream) hold_into(next->cfg_envoy, next->ids);
    if (e) {
        if (g_pending == e) g_pending = NULL;
        if (e->sched == g_committing)
            g_zombie = e->sched;    /* the flush thread deletes it after commit */
        else
            envoy_dynamic_module_callback_http_filter_config_scheduler_delete(e->sched);
        if (g_head) {
            g_kick = 1;             /* the next exporter flushes soon */
            if (locked) pthread_cond_signal(&g_cv);
        }
    }
    if (locked) pthread_mutex_unlock(&g_mu);
    free(e);
}

/* ---- applying a take (main thread) ---- */

typedef struct apply_ctx {
    void *cfg_envoy;
    const size_t *ids;
    int nfam;
    const ar_family *fams;
} apply_ctx;

/* A sample value as Envoy's integer: rounded, negative and NaN as 0. */
static uint64_t to_u64(double v)
{
    if (!(v > 0)) return 0;
    if (v >= 1.8e19) return UINT64_MAX;
    return (uint64_t)llround(v);
}

/* The integer recorded for one observation in bucket b: its upper bound,
 * rounded up (Envoy histograms are integers; a bound below 1 records 1);
 * for +Inf twice the largest bound.  See docs/operations.md, Metrics. */
static uint64_t bucket_value(const ar_sample *s, int b)
{
    if (s->nbounds <= 0) return 0;
    double v = b < s->nbounds ? s->bounds[b] : 2 * s->bounds[s->nbounds - 1];
    if (!(v > 0)) return 0;
    if (v >= 1.8e19) return UINT64_MAX;
    return (uint64_t)ceil(v);
}

static void check(env_metrics_result rc)
{
    if (rc != ENV_METRICS_SUCCESS) log_once(5, "Envoy refused a stat update", (int)rc);
}

/* The sample's label values as Envoy strings (borrowed); their number. */
static int labels_of(const ar_family *f, const ar_sample *s, mod_buf *v)
{
    int nl = f->nlabels < AR_METRIC_LABELS_MAX ? f->nlabels : AR_METRIC_LABELS_MAX;
    for (int i = 0; i < nl; i++) {
        const char *x = s->values[i] ? s->values[i] : "";
        v[i] = (mod_buf){x, strlen(x)};
    }
    return nl;
}

static void apply(const ar_sample *s, void *ud)
{
    const apply_ctx *c = ud;
    if (s->family < 0 || s->family >= c->nfam || !c->ids[s->family]) return;
    const ar_family *f = &c->fams[s->family];
    size_t id = c->ids[s->family];
    mod_buf v[AR_METRIC_LABELS_MAX];
    int nl = labels_of(f, s, v);
    if (f->kind == AR_METRIC_COUNTER) {
        uint64_t d = to_u64(s->value);
        if (d)
            check(envoy_dynamic_module_callback_http_filter_config_increment_counter(
                c->cfg_envoy, id, v, (size_t)nl, d));
    } else if (f->kind == AR_METRIC_GAUGE) {
        check(envoy_dynamic_module_callback_http_filter_config_set_gauge(
            c->cfg_envoy, id, v, (size_t)nl, to_u64(s->value)));
    } else if (s->counts && s->nbounds >= 0 && s->nbounds <= AR_METRIC_BUCKETS_MAX) {
        uint64_t budget = MAX_RECORDS_PER_FLUSH;
        for (int b = 0; b <= s->nbounds; b++) {
            uint64_t n = s->counts[b], val = bucket_value(s, b);
            if (n > budget) {
                log_once(6, "a histogram delta too large for one flush: observations dropped",
                         0);
                n = budget;
            }
            budget -= n;
            for (uint64_t i = 0; i < n; i++) {
                env_metrics_result rc =
                    envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
                        c->cfg_envoy, id, v, (size_t)nl, val);
                if (rc != ENV_METRICS_SUCCESS) {
                    check(rc);
                    return;
                }
            }
        }
    }
}

/* A hold: the series into a config's scope, changing no value (a counter
 * + 0, a gauge set to the value it has). */
static void hold(const ar_sample *s, void *ud)
{
    const apply_ctx *c = ud;
    if (s->family < 0 || s->family >= c->nfam || !c->ids[s->family]) return;
    const ar_family *f = &c->fams[s->family];
    if (f->kind == AR_METRIC_GAUGE) {
        apply(s, ud);
    } else if (f->kind == AR_METRIC_COUNTER) {
        mod_buf v[AR_METRIC_LABELS_MAX];
        int nl = labels_of(f, s, v);
        check(envoy_dynamic_module_callback_http_filter_config_increment_counter(
            c->cfg_envoy, c->ids[s->family], v, (size_t)nl, 0));
    }
}

static void hold_into(void *cfg_envoy, const size_t *ids)
{
    apply_ctx c = {cfg_envoy, ids, 0, NULL};
    c.nfam = ar_metric_families(&c.fams);
    if (c.nfam > AR_MF_MAX) c.nfam = AR_MF_MAX;
    ar_metrics_each(hold, &c);
}

void ar_metrics_scheduled(void *cfg_envoy, const void *cfg, uint64_t event_id)
{
    if (event_id != AR_METRICS_FLUSH_EVENT) return;
    size_t ids[AR_MF_MAX];
    pthread_mutex_lock(&g_mu);
    ar_mcfg *e = exporter_locked();
    int mine = e && e->cfg == cfg;
    if (mine) {
        g_pending = NULL;
        memcpy(ids, e->ids, sizeof ids);
    }
    pthread_mutex_unlock(&g_mu);
    /* an event of a config that is no longer the exporter (a handover in
     * between) is dropped: the new exporter has its own */
    if (!mine) return;
    apply_ctx c = {cfg_envoy, ids, 0, NULL};
    c.nfam = ar_metric_families(&c.fams);
    if (c.nfam > AR_MF_MAX) c.nfam = AR_MF_MAX;
    ar_metrics_take(apply, &c);
}
