/*
 * parked_calls.c - calls from Lua VMs that do not own the wake loop
 * (parked_calls.h says why, who frees what and which thread runs what).
 *
 * The table is a plain array searched linearly: it holds only the calls in
 * flight from such VMs, which exist with `lua_code_cache off;` (a
 * development setting), so it stays small.
 */
#include "parked_calls.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum parked_state {
    PARKED_WAITING,   /* posted; the host reference is the waker's until drained */
    PARKED_DONE,      /* answered: done.task is the host reference, held here */
    PARKED_FORGOTTEN, /* the caller gave up; released when the answer comes */
};

typedef struct parked {
    int32_t id;
    enum parked_state state;
    ar_task *task; /* for ar_task_abort while waiting (no reference) */
    arn_done done; /* PARKED_DONE: the completion */
} parked;

/* Lua thread only (parked_calls.h). */
static struct {
    parked *v; /* malloc'ed, owned here */
    size_t len, cap;
    int32_t last_id; /* the last id given: -1, -2, ... */
    unsigned claims; /* ARN_CLAIM_* taken in this process */
} P;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* A forked child starts empty: the entries and their tasks are the parent's. */
static void on_fork_child(void)
{
    free(P.v);
    memset(&P, 0, sizeof P);
}

static void init_once(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

static parked *find(int32_t id)
{
    for (size_t i = 0; i < P.len; i++)
        if (P.v[i].id == id)
            return &P.v[i];
    return NULL;
}

static void drop(parked *e)
{
    *e = P.v[--P.len]; /* order does not matter */
}

int arn_claim(unsigned what)
{
    pthread_once(&g_once, init_once);
    if (P.claims & what)
        return 0;
    P.claims |= what;
    return 1;
}

void arn_unclaim(unsigned what)
{
    P.claims &= ~what;
}

static int32_t fresh_id(void)
{
    int32_t id = P.last_id;
    do
        id = id <= INT32_MIN + 1 ? -1 : id - 1;
    while (find(id));
    return P.last_id = id;
}

int arn_post_parked(ar_queue *q, const char *method, size_t mlen, const char *req, size_t rlen,
                    int32_t *id)
{
    if (!id)
        return AR_EINVAL;
    pthread_once(&g_once, init_once);
    if (P.len == P.cap) {
        size_t cap = P.cap ? P.cap * 2 : 16;
        parked *v = realloc(P.v, cap * sizeof *v);
        if (!v)
            return AR_ENOMEM;
        P.v = v;
        P.cap = cap;
    }
    int32_t want = fresh_id();
    ar_task *t;
    int rc = arn_post(q, method, mlen, req, rlen, want, &t);
    if (rc != AR_OK)
        return rc;
    P.v[P.len++] = (parked){.id = want, .state = PARKED_WAITING, .task = t};
    *id = want;
    return AR_OK;
}

void arn_park(const arn_done *d)
{
    parked *e = find(d->id);
    if (e && e->state == PARKED_WAITING) {
        e->state = PARKED_DONE;
        e->done = *d;
        return;
    }
    /* the caller is gone: the answer has no one to go to */
    arn_release(d->task);
    if (e)
        drop(e);
}

int arn_parked_take(int32_t id, arn_done *out)
{
    parked *e = find(id);
    if (!e || e->state == PARKED_FORGOTTEN)
        return -1;
    if (e->state == PARKED_WAITING)
        return 0;
    *out = e->done;
    drop(e);
    return 1;
}

void arn_parked_forget(int32_t id)
{
    parked *e = find(id);
    if (!e)
        return;
    if (e->state == PARKED_WAITING) {
        arn_abort(e->task); /* the runtime is told; the drain brings the task back */
        e->state = PARKED_FORGOTTEN;
    } else if (e->state == PARKED_DONE) {
        arn_release(e->done.task);
        drop(e);
    }
}

void arn_parked_forget_cell(int32_t *cell)
{
    if (cell && *cell != 0)
        arn_parked_forget(*cell);
}

int arn_parked_collect(void)
{
    arn_done *v;
    int n = arn_drain_parked(&v);
    for (int i = 0; i < n; i++)
        arn_park(&v[i]);
    return n;
}
