/*
 * metrics_mode.c - filter mode "metrics" of libaioresty_envoy.so
 * (envoy_mode.h): a filter that does nothing, whose config exists to export
 * the metrics table (metrics.h) from a downstream http filter config.
 *
 * Why: the stock bridge's only aioresty config is the upstream filter of
 * the aioresty_bridge cluster, and Envoy scopes an upstream filter's stats
 * under its cluster (cluster.aioresty_bridge.dynamicmodulescustom.aioresty.*,
 * envoy_cluster_aioresty_bridge_dynamicmodulescustom_aioresty_* on
 * Prometheus).  envoy_config puts this filter, disabled, in every HTTP
 * connection manager that runs the stock Lua filter: Envoy still makes its
 * config (and the hall attaches it, preferred as a downstream config), and
 * no stream ever runs it.  Enabled anyway, it continues every stream.
 * filter_config is ignored.
 *
 * Threads: config hooks on the main thread.  Ownership: the config is
 * malloc'ed here (each config needs its own address: metrics.c keys on it)
 * and freed by its destroy; the filter is one static object, never freed.
 */
#include <stdlib.h>

#include "envoy_mode.h"

extern const ar_mode ar_mode_metrics;

static const ar_mode_base k_filter = {&ar_mode_metrics};

static void *metrics_config_new(void *cfg_envoy, env_buf conf)
{
    (void)cfg_envoy, (void)conf;
    ar_mode_base *c = malloc(sizeof *c);
    if (!c) {
        ar_envoy_log(ENV_LOG_ERROR, "aioresty: metrics filter: out of memory");
        return NULL;
    }
    c->mode = &ar_mode_metrics;
    return c;
}

static void metrics_config_destroy(void *cfg) { free(cfg); }

static void *metrics_filter_new(void *cfg, void *fe)
{
    (void)cfg, (void)fe;
    return (void *)&k_filter;
}

static void metrics_filter_destroy(void *f) { (void)f; }

const ar_mode ar_mode_metrics = {
    .name = "metrics",
    .config_new = metrics_config_new,
    .config_destroy = metrics_config_destroy,
    .filter_new = metrics_filter_new,
    .filter_destroy = metrics_filter_destroy,
};
