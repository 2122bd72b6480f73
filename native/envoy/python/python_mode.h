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
 * belongs to its py_config / py_route, freed in config_destroy / route
 * destroy (main thread).  Envoy keeps both alive for every stream using
 * them, so a py_filter only borrows its app.
 */
#ifndef AIORESTY_ENVOY_PYTHON_MODE_H
#define AIORESTY_ENVOY_PYTHON_MODE_H

#include <stddef.h>
#include <stdint.h>

#include "envoy_mode.h"
#include "stream.h"

#define PY_DEFAULT_BODY_LIMIT (1024 * 1024)
#define PY_DEFAULT_TIMEOUT_MS 10000

/* one App binding: the filter config's, or a per-route override */
typedef struct py_app {
    ar_queue *q;             /* own reference (ar_runtime_load); unref'd by py_app_free */
    char *spec;              /* malloc'ed copy */
    int on_request, request_body, on_response, response_body;
    int fail_open;
    size_t body_limit;
    uint32_t timeout_ms;
} py_app;

typedef struct py_config {
    ar_mode_base base;
    py_app app;
} py_config;

/* A per-route config; its base.mode is &ar_mode_python, which tells it from
 * anything else Envoy could hand back as the route's config. */
typedef struct py_route {
    ar_mode_base base;
    int disabled;
    py_app app;              /* unused when disabled */
} py_route;

/* python/config.c (main thread) */
void *py_config_new(void *cfg_envoy, env_buf conf);
void py_config_destroy(void *cfg);
void *py_route_new(env_buf conf);
void py_route_destroy(void *route);

#endif
