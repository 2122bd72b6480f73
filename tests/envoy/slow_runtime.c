/* Test runtime (lua-resty-ffi ABI): cfg = answer delay in ms (default 100).
 * One thread per load; echoes each request after the delay.  Built by the
 * tests into a temporary directory. */
#include <pthread.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void *ngx_http_lua_ffi_task_poll(void *tq);
char *ngx_http_lua_ffi_get_req(void *task, int *len);
void ngx_http_lua_ffi_respond(void *task, int rc, char *rsp, int rsp_len);

typedef struct { void *tq; long ms; } slow;

static void *serve(void *arg)
{
    slow *s = arg;
    void *t;
    while ((t = ngx_http_lua_ffi_task_poll(s->tq)) != NULL) {
        struct timespec ts = {s->ms / 1000, (s->ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        int len = 0;
        char *req = ngx_http_lua_ffi_get_req(t, &len);
        if (len == 4 && memcmp(req, "NULL", 4) == 0) {     /* answer a NULL rsp */
            ngx_http_lua_ffi_respond(t, 0, NULL, 0);
            continue;
        }
        char *rsp = malloc((size_t)len + 1);
        if (rsp) { memcpy(rsp, req, (size_t)len); rsp[len] = 0; }
        ngx_http_lua_ffi_respond(t, rsp ? 0 : 1, rsp, len);
    }
    free(s);
    return NULL;
}

__attribute__((visibility("default"))) int libffi_init(char *cfg, void *tq)
{
    pthread_t th;
    sigset_t all, old;
    slow *s = calloc(1, sizeof *s);
    if (!s) return 1;
    s->tq = tq;
    s->ms = cfg && *cfg ? atol(cfg) : 100;
    const char *log = getenv("AIORESTY_TEST_INIT_LOG");     /* one line per init */
    if (log) {
        FILE *f = fopen(log, "a");
        if (f) { fprintf(f, "init %s\n", cfg ? cfg : ""); fclose(f); }
    }
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int err = pthread_create(&th, NULL, serve, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) { free(s); return 1; }
    pthread_detach(th);
    return 0;
}
