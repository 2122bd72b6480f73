/* timeouts.c - the per-call timeout thread; see timeouts.h for who runs
 * what and who frees what. */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "timeouts.h"

typedef struct ar_timer {
    struct ar_timer *prev, *next;
    struct timespec at;
    ar_link *link;              /* the entry's own reference */
    uint64_t ev;
} ar_timer;

/* g_tmu guards the list and g_tstarted; g_tcv wakes the thread when a new
 * head is armed */
static pthread_mutex_t g_tmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_tcv;
static int g_tstarted;
static ar_timer *g_thead, *g_ttail;

static int ts_le(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec <= b->tv_nsec);
}

static void *timer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_tmu);
    for (;;) {
        if (!g_thead) {
            pthread_cond_wait(&g_tcv, &g_tmu);
            continue;
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        ar_timer *t = g_thead;
        if (!ts_le(&t->at, &now)) {
            pthread_cond_timedwait(&g_tcv, &g_tmu, &t->at);
            continue;
        }
        /* unlinked under the lock: from here the entry is only this thread's
         * (a racing ar_timeout_cancel no longer finds it) */
        g_thead = t->next;
        if (g_thead) g_thead->prev = NULL;
        else g_ttail = NULL;
        pthread_mutex_unlock(&g_tmu);
        ar_link_commit(t->link, t->ev);
        ar_link_unref(t->link);                        /* the entry's reference */
        free(t);
        pthread_mutex_lock(&g_tmu);
    }
    return NULL;
}

static int timer_start_locked(void)
{
    if (g_tstarted) return 0;
    if (ar_thread_start(timer_main, "aioresty-tmo", &g_tcv) != 0) return -1;
    g_tstarted = 1;
    return 0;
}

int ar_timeout_add(ar_link *l, uint64_t ev, double ms)
{
    if (!(ms > 0)) ms = 0;
    if (ms > 1e12) ms = 1e12;                       /* ~31 years: keeps the ns math in range */
    ar_timer *t = calloc(1, sizeof *t);
    if (!t) return -1;
    clock_gettime(CLOCK_MONOTONIC, &t->at);
    long long ns = (long long)(ms * 1e6);
    t->at.tv_sec += (time_t)(ns / 1000000000LL);
    t->at.tv_nsec += (long)(ns % 1000000000LL);
    if (t->at.tv_nsec >= 1000000000L) {
        t->at.tv_sec++;
        t->at.tv_nsec -= 1000000000L;
    }
    t->link = l;
    t->ev = ev;
    pthread_mutex_lock(&g_tmu);
    if (timer_start_locked() != 0) {
        pthread_mutex_unlock(&g_tmu);
        free(t);
        return -1;
    }
    ar_link_ref(l);                                 /* the entry's reference */
    ar_timer *p = g_ttail;                          /* equal timeouts: O(1) from the tail */
    while (p && !ts_le(&p->at, &t->at)) p = p->prev;
    t->prev = p;
    t->next = p ? p->next : g_thead;
    if (t->next) t->next->prev = t;
    else g_ttail = t;
    if (p) p->next = t;
    else g_thead = t;
    if (g_thead == t) pthread_cond_signal(&g_tcv);
    pthread_mutex_unlock(&g_tmu);
    return 0;
}

void ar_timeout_cancel(ar_link *l, uint64_t ev)
{
    ar_timer *found = NULL;
    pthread_mutex_lock(&g_tmu);
    for (ar_timer *t = g_thead; t; t = t->next) {
        if (t->link == l && t->ev == ev) {
            if (t->prev) t->prev->next = t->next;
            else g_thead = t->next;
            if (t->next) t->next->prev = t->prev;
            else g_ttail = t->prev;
            found = t;
            break;
        }
    }
    pthread_mutex_unlock(&g_tmu);
    if (found) {
        ar_link_unref(found->link);                 /* the entry's reference */
        free(found);
    }
}
