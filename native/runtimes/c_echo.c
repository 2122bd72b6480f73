/*
 * c_echo.c - libffi_c_echo.so: an echo runtime written in C against nothing
 * but lua-resty-ffi's runtime ABI (the functions are declared here, as a
 * third-party runtime would).  One polling thread per loaded runtime; it
 * answers every task with a malloc'ed copy of the request (the host frees
 * it), and exits when poll returns NULL after an unload.
 *
 * cfg: NULL/"" = echo; "rc=N" answers rc N with the request as message.
 */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

void *ngx_http_lua_ffi_task_poll(void *tq);
char *ngx_http_lua_ffi_get_req(void *task, int *len);
void ngx_http_lua_ffi_respond(void *task, int rc, char *rsp, int rsp_len);

typedef struct {
    void *tq;
    int rc;
} echo_state;

static void *serve(void *arg)
{
    echo_state *st = arg;
    void *task;
    pthread_setname_np(pthread_self(), "ar-c-echo");
    while ((task = ngx_http_lua_ffi_task_poll(st->tq)) != NULL) {
        int len = 0;
        char *req = ngx_http_lua_ffi_get_req(task, &len);
        char *rsp = malloc((size_t)len + 1);
        if (!rsp) {
            ngx_http_lua_ffi_respond(task, 1, NULL, 0);
            continue;
        }
        memcpy(rsp, req, (size_t)len);
        rsp[len] = '\0';
        /* rsp_len 0 would mean "NUL-terminated"; an empty echo is "" anyway */
        ngx_http_lua_ffi_respond(task, st->rc, rsp, len);
    }
    free(st);
    return NULL;
}

__attribute__((visibility("default"))) int libffi_init(char *cfg, void *tq)
{
    pthread_t th;
    pthread_attr_t attr;
    sigset_t all, old;
    echo_state *st = calloc(1, sizeof *st);
    if (!st) return 1;
    st->tq = tq;
    if (cfg && strncmp(cfg, "rc=", 3) == 0) st->rc = atoi(cfg + 3);
    /* the host owns signals: keep them off this thread */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int err = pthread_create(&th, &attr, serve, st);
    pthread_attr_destroy(&attr);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) {
        free(st);
        return 1;
    }
    return 0;
}
