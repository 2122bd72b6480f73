/*
 * python/python_mode.h - the inside of filter mode "python" (an Envoy HTTP
 * filter written as `async def` Python, aioresty/filters.py), shared by
 * its two files:
 *
 *   python/hooks.c   the stream's state machine: hooks, snapshot, answers,
 *                    timeouts, the mode table (worker threads)
 *   python/config.c  filter_config and per-route config: parsing (JSON;
 *                    the old key=value form with a warning), loading the
 *                    App's runtime and asking which hooks it has (main
 *                    thread)
 *   python/msgpack.c the wire codec (msgpack.h)
 *
 * Ownership: a py_app (queue reference from ar_runtime_load, spec copy)
 * belongs to its py_config (a filter's or a route's), freed with it in
 * py_config_destroy (main thread).  Envoy keeps both alive for every stream using
 * them, so a py_filter only borrows its app.
 */
#ifndef AIORESTY_ENVOY_PYTHON_MODE_H
#define AIORESTY_ENVOY_PYTHON_MODE_H

#include <stddef.h>
#include <stdint.h>

#include "envoy_mode.h"
#include "stream.h"

#define PY_DEFAULT_BODY_LIMIT (1024 * 1024)

/* one App binding: the filter config's, or a per-route override */
typedef struct py_app {
    ar_queue *q;             /* own reference (ar_runtime_load); unref'd by py_app_free */
    char *spec;              /* malloc'ed copy */
    int on_request, request_body, on_response, response_body;
    int fail_open;
    size_t body_limit;
    uint32_t timeout_ms;     /* > 0 once loaded: the config's, else the App's */
} py_app;

/* A filter config, or a per-route config (Envoy hands the route's back
 * through get_most_specific_route_config; base.mode is &ar_mode_python). */
typedef struct py_config {
    ar_mode_base base;
    int disabled;            /* per route: the filter is off there (app unused) */
    py_app app;
} py_config;

/* python/config.c (main thread) */
void *py_config_new(void *cfg_envoy, env_buf conf);
void *py_route_new(env_buf conf);
void py_config_destroy(void *cfg);  /* either kind */

#endif
