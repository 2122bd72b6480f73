/*
 * python/config.c - the configs of filter mode "python": the filter_config
 * of a DynamicModuleFilter and the per-route config of a
 * DynamicModuleFilterPerRoute (per_route_config_name "python").
 *
 * filter_config (a StringValue) is a JSON object (config_json.h):
 *     {"app": "pkg.mod:app", "fail": "open"|"closed", "body_limit": BYTES,
 *      "timeout": SECONDS}
 * defaults: fail closed, body_limit 1 MiB, timeout: the App's (App(timeout=),
 * told by the info query; "timeout": 0 means the same).
 * Per route: {"disabled": true}, or another app and/or options as above.
 * The old form, whitespace-separated tokens
 *     "pkg.mod:app [fail=open|closed] [body_limit=BYTES] [timeout=SECONDS]"
 * ("disabled" / "app=..." per route), is still read for one release: Envoy's
 * log then says (WARN) the JSON that means the same.
 *
 * The app is loaded once per config (ar_runtime_load("aioresty", spec)); the
 * runtime is then asked which hooks the app has ("__filter_info", answered
 * "RBSC<ms>": four '0'/'1' - on_request, request body, on_response, response
 * body - then the App's timeout in decimal milliseconds; aioresty/filters.py
 * FilterChain._info) so a stream only pays for what is used.
 *
 * Threads: Envoy's main thread; the info query's sink runs on the runtime's
 * thread.  Ownership: the py_app inside a py_config (a filter's or a route's) holds a queue
 * reference and a spec copy, both freed by py_app_free in the destroy hook;
 * the info query's rendezvous is reference counted (waiter + sink).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config_json.h"
#include "python_mode.h"

#define INFO_WAIT_SECONDS 60
#define MAX_BODY_LIMIT (1ull << 40)
#define MAX_TIMEOUT_S 86400

/* ------------------------------------------------------------ options */

static void app_defaults(py_app *a)
{
    a->fail_open = 0;
    a->body_limit = PY_DEFAULT_BODY_LIMIT;
    a->timeout_ms = 0;  /* the App's, once the info query told it */
}

static int set_spec(py_app *a, const char *spec, char *err, size_t errlen)
{
    free(a->spec);
    a->spec = strdup(spec);
    if (a->spec && *spec) return 0;
    snprintf(err, errlen, "bad app spec");
    return -1;
}

static int set_fail(py_app *a, const char *val, char *err, size_t errlen)
{
    if (strcmp(val, "open") == 0) a->fail_open = 1;
    else if (strcmp(val, "closed") == 0) a->fail_open = 0;
    else {
        snprintf(err, errlen, "fail expects open or closed, got '%s'", val);
        return -1;
    }
    return 0;
}

/* v: bytes, a whole number; `text` names it in the error */
static int set_body_limit(py_app *a, double v, const char *text, char *err, size_t errlen)
{
    if (!(v >= 0) || v > (double)MAX_BODY_LIMIT || v != (double)(unsigned long long)v) {
        snprintf(err, errlen, "bad body_limit '%s' (whole bytes, at most 2^40)", text);
        return -1;
    }
    a->body_limit = (size_t)v;
    return 0;
}

/* v: seconds, 0 = the App's */
static int set_timeout(py_app *a, double v, const char *text, char *err, size_t errlen)
{
    if (!(v >= 0) || v > MAX_TIMEOUT_S) {
        snprintf(err, errlen, "bad timeout '%s' (seconds up to %d; 0: the App's)", text,
                 MAX_TIMEOUT_S);
        return -1;
    }
    a->timeout_ms = (uint32_t)(v * 1000.0 + 0.5);
    if (v > 0 && a->timeout_ms == 0) a->timeout_ms = 1;
    return 0;
}

typedef struct {
    py_app *a;
    int *disabled;           /* NULL: not a per-route config */
} opts_ctx;

static int json_member(void *ud, const char *key, ar_json_value *v, char *err, size_t errlen)
{
    opts_ctx *c = ud;
    char num[32];
    snprintf(num, sizeof num, "%g", v->num);
    int is_str = v->type == AR_JSON_STRING, is_num = v->type == AR_JSON_NUMBER;
    if (strcmp(key, "app") == 0 && is_str) return set_spec(c->a, v->str, err, errlen);
    if (strcmp(key, "fail") == 0 && is_str) return set_fail(c->a, v->str, err, errlen);
    if (strcmp(key, "body_limit") == 0 && is_num)
        return set_body_limit(c->a, v->num, num, err, errlen);
    if (strcmp(key, "timeout") == 0 && is_num) return set_timeout(c->a, v->num, num, err, errlen);
    if (strcmp(key, "disabled") == 0 && c->disabled && v->type == AR_JSON_BOOL) {
        *c->disabled = v->boolean;
        return 0;
    }
    static const char *const known[] = {"app", "fail", "body_limit", "timeout", "disabled"};
    static const char *const want[] = {"a string", "\"open\" or \"closed\"", "a number",
                                       "a number", "true or false"};
    for (size_t i = 0; i < sizeof known / sizeof *known - !c->disabled; i++)
        if (strcmp(key, known[i]) == 0) {
            snprintf(err, errlen, "filter_config: \"%s\" must be %s, got a %s", key, want[i],
                     ar_json_type_name(v->type));
            return -1;
        }
    snprintf(err, errlen, "filter_config: unknown key \"%s\" (known: app, fail, body_limit, "
                          "timeout%s)", key, c->disabled ? ", disabled" : "");
    return -1;
}

/* The old form: whitespace-separated tokens (see the header). */
static int parse_tokens(const char *conf, size_t len, opts_ctx *c, char *err, size_t errlen)
{
    char *copy = malloc(len + 1);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(copy, conf, len);
    copy[len] = '\0';
    int rc = 0;
    char *save = NULL;
    for (char *tok = strtok_r(copy, " \t\r\n;", &save); tok && rc == 0;
         tok = strtok_r(NULL, " \t\r\n;", &save)) {
        char *eq = strchr(tok, '=');
        const char *val = eq ? eq + 1 : NULL;
        if (eq) *eq = '\0';
        char *end = NULL;
        errno = 0;
        if (!eq && strcmp(tok, "disabled") == 0 && c->disabled) {
            *c->disabled = 1;
        } else if (!eq || strcmp(tok, "app") == 0) {
            rc = set_spec(c->a, eq ? val : tok, err, errlen);
        } else if (strcmp(tok, "fail") == 0) {
            rc = set_fail(c->a, val, err, errlen);
        } else if (strcmp(tok, "body_limit") == 0) {
            unsigned long long v = strtoull(val, &end, 10);
            int ok = !errno && end && !*end && end != val && v <= MAX_BODY_LIMIT;
            rc = set_body_limit(c->a, ok ? (double)v : -1, val, err, errlen);
        } else if (strcmp(tok, "timeout") == 0) {
            double v = strtod(val, &end);
            int ok = !errno && end && !*end && end != val;
            rc = set_timeout(c->a, ok ? v : -1, val, err, errlen);
        } else {
            snprintf(err, errlen, "unknown option '%s'", tok);
            rc = -1;
        }
    }
    free(copy);
    return rc;
}

/* The deprecation warning of the old form names the JSON that means the same. */
static void warn_tokens(const py_app *a, int disabled, const char *what)
{
    if (disabled) {
        ar_envoy_log(ENV_LOG_WARN, "aioresty: python filter %s: the key=value filter_config is "
                                   "deprecated and goes in the next release; write "
                                   "{\"disabled\": true}", what);
        return;
    }
    char spec[256];
    size_t n = 0;
    for (const char *p = a->spec; *p && n < sizeof spec - 2; p++) {
        if (*p == '"' || *p == '\\') spec[n++] = '\\';
        spec[n++] = *p;
    }
    spec[n] = '\0';
    char timeout[48] = "";
    if (a->timeout_ms)
        snprintf(timeout, sizeof timeout, ", \"timeout\": %g", a->timeout_ms / 1000.0);
    ar_envoy_log(ENV_LOG_WARN, "aioresty: python filter %s: the key=value filter_config is "
                               "deprecated and goes in the next release; write {\"app\": \"%s\", "
                               "\"fail\": \"%s\", \"body_limit\": %zu%s}",
                 what, spec, a->fail_open ? "open" : "closed", a->body_limit, timeout);
}

/* ------------------------------------------------------------ app loading */

/* The info query's rendezvous: shared by config_new (waiting, main thread)
 * and the sink (runtime thread); freed by whichever drops the last ref. */
typedef struct info_wait {
    atomic_int refs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} info_wait;

static void info_unref(info_wait *w)
{
    if (atomic_fetch_sub_explicit(&w->refs, 1, memory_order_acq_rel) != 1) return;
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

static void on_info_complete(ar_task *t, void *ctx)
{
    (void)ctx;
    info_wait *w = ar_task_host_data(t);
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    info_unref(w);  /* the sink's reference */
}

static const ar_sink g_info_sink = {on_info_complete, NULL};

/* Loads the runtime of a->spec and asks which hooks the app has. */
static int app_load(py_app *a, char *err, size_t errlen)
{
    a->q = ar_runtime_load("aioresty", a->spec, 0, 0, err, errlen);
    if (!a->q) return -1;
    info_wait *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    atomic_init(&w->refs, 2);  /* waiter + sink */
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cv, &ca);
    pthread_condattr_destroy(&ca);
    ar_task *t = ar_task_new("__filter_info", 13, "", 0, &g_info_sink, w);
    if (!t) {
        info_unref(w);
        info_unref(w);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = ar_task_post(a->q, t);
    if (rc != AR_OK) {
        ar_task_release(t);
        info_unref(w);
        info_unref(w);
        snprintf(err, errlen, "runtime of '%s' refused the info query (%d)", a->spec, rc);
        return -1;
    }
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += INFO_WAIT_SECONDS;
    pthread_mutex_lock(&w->mu);
    while (!w->done) {
        if (pthread_cond_timedwait(&w->cv, &w->mu, &dl) == ETIMEDOUT) break;
    }
    int done = w->done;
    pthread_mutex_unlock(&w->mu);
    int out = -1;
    if (!done) {
        ar_task_abort(t);
        snprintf(err, errlen, "runtime of '%s' did not answer the info query in %ds", a->spec,
                 INFO_WAIT_SECONDS);
    } else if (ar_task_rc(t) != 0) {
        size_t n = 0;
        const char *m = ar_task_response(t, &n);
        snprintf(err, errlen, "info query failed: %.*s", (int)(m ? n : 0), m ? m : "");
    } else {
        size_t n = 0;
        const char *r = ar_task_response(t, &n);
        unsigned long long app_ms = 0;
        size_t i = 4;
        while (r && i < n && i < 16 && r[i] >= '0' && r[i] <= '9')
            app_ms = app_ms * 10 + (unsigned)(r[i++] - '0');
        if (app_ms > MAX_TIMEOUT_S * 1000ull) app_ms = MAX_TIMEOUT_S * 1000ull;
        if (r && n > 4 && i == n && app_ms > 0) {
            a->on_request = r[0] == '1';
            a->request_body = r[1] == '1';
            a->on_response = r[2] == '1';
            a->response_body = r[3] == '1';
            if (!a->timeout_ms) a->timeout_ms = (uint32_t)app_ms;
            out = 0;
        } else {
            snprintf(err, errlen, "bad info answer (aioresty version mismatch?)");
        }
    }
    ar_task_release(t);
    info_unref(w);  /* the waiter's reference */
    return out;
}

static void py_app_free(py_app *a)
{
    if (a->q) ar_queue_unref(a->q);  /* the runtime stays: other configs may share it */
    a->q = NULL;
    free(a->spec);
    a->spec = NULL;
}

/* Fills *a from conf (disabled: NULL, or the per-route "disabled" flag) and
 * loads its app.  0, or -1 after logging why (a is freed then). */
static int app_from_conf(py_app *a, env_buf conf, int *disabled, const char *what)
{
    char err[512] = "";
    opts_ctx c = {a, disabled};
    int tokens = !ar_json_is_object(conf);
    app_defaults(a);
    if (tokens ? parse_tokens(conf.ptr ? conf.ptr : "", conf.ptr ? conf.length : 0, &c, err,
                              sizeof err)
               : ar_json_object(conf, json_member, &c, err, sizeof err))
        goto fail;
    if (!(disabled && *disabled) && !a->spec) {
        snprintf(err, sizeof err, "no app given (expected {\"app\": \"pkg.module:app\", ...})");
        goto fail;
    }
    if (tokens) warn_tokens(a, disabled && *disabled, what);
    if (disabled && *disabled) return 0;
    if (app_load(a, err, sizeof err) != 0) goto fail;
    ar_envoy_log(ENV_LOG_INFO,
                 "aioresty: python filter %s '%s': on_request=%d (body %d) on_response=%d "
                 "(body %d) fail=%s body_limit=%zu timeout_ms=%u",
                 what, a->spec, a->on_request, a->request_body, a->on_response, a->response_body,
                 a->fail_open ? "open" : "closed", a->body_limit, a->timeout_ms);
    if (!a->on_request && !a->on_response)
        ar_envoy_log(ENV_LOG_WARN, "aioresty: app '%s' has no on_request/on_response hook",
                     a->spec);
    return 0;
fail:
    ar_envoy_log(ENV_LOG_ERROR, "aioresty: python filter %s '%.*s': %s", what,
                 (int)(conf.ptr ? conf.length : 0), conf.ptr ? conf.ptr : "", err);
    py_app_free(a);
    return -1;
}

/* A config of either kind (route: disabled is read). */
static py_config *config_new(env_buf conf, int route)
{
    py_config *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->base.mode = &ar_mode_python;
    if (app_from_conf(&c->app, conf, route ? &c->disabled : NULL, route ? "route" : "config")) {
        free(c);
        return NULL;
    }
    return c;
}

void *py_config_new(void *cfg_envoy, env_buf conf)
{
    (void)cfg_envoy;
    return config_new(conf, 0);
}

void *py_route_new(env_buf conf)
{
    return config_new(conf, 1);
}

void py_config_destroy(void *cfg)
{
    py_config *c = cfg;
    py_app_free(&c->app);
    c->base.mode = NULL;
    free(c);
}
