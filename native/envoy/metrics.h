/*
 * metrics.h - the core's metrics table (aioresty_core.h section 4) as Envoy
 * stats, for every filter mode (the hall, module.c, calls these around each
 * mode's config hooks; docs/operations.md, Metrics, has the names).
 *
 * Every aioresty http filter config defines every family of
 * ar_metric_families() as an Envoy vec stat named as the family, with the
 * family's label names (Envoy accepts definitions inside config_new only),
 * which Envoy prefixes with the DynamicModuleConfig's metrics_namespace:
 * "aioresty.<family>" with the "aioresty" that envoy_config sets.
 * Exactly one config, the exporter, copies the table into its stats: the
 * oldest live downstream config (lua, python), else the oldest bridge
 * config; the table's deltas are taken by that one, so nothing counts twice.
 * When the exporter's config goes, the next one takes over.  Envoy deletes
 * a config's stats with it unless another scope holds them, so a config
 * holds every counter and gauge series (adding 0) when it is attached and
 * when it becomes the exporter: they continue across a handover.
 * Histograms cannot be held without recording into them: observations of
 * the first seconds after a handover can be lost.
 *
 * Threads.  A process-wide flush thread (started with the first config,
 * signals blocked, detached, lives as long as the process) commits
 * AR_METRICS_FLUSH_EVENT to the exporter's config scheduler every
 * AR_METRICS_FLUSH_MS (and soon after a config becomes the exporter); Envoy
 * runs the event on its MAIN thread, where ar_metrics_scheduled takes the
 * deltas and applies them (never from another thread: vec stats resolve
 * through thread-local caches).
 *
 * Ownership.  An attached config's entry (its stat ids, its config
 * scheduler) is malloc'ed by ar_metrics_attach and freed by
 * ar_metrics_detach; the scheduler is deleted exactly once, by detach,
 * except when the config is destroyed inside the flush thread's own commit
 * (see metrics.c), when the flush thread deletes it after the commit
 * returns.  g_mu (metrics.c) orders every commit against the delete.
 */
#ifndef AIORESTY_ENVOY_METRICS_H
#define AIORESTY_ENVOY_METRICS_H

#include <stdint.h>

#include "stream.h"

#define AR_METRICS_FLUSH_MS 1000
/* the config-scheduler event of a flush (no other config event exists) */
#define AR_METRICS_FLUSH_EVENT 1

/* Main thread, inside config_new after the mode made `cfg` (the pointer
 * Envoy hands back to the config hooks).  upstream: an upstream filter's
 * config (the bridge), whose stats Envoy scopes under its cluster.  A
 * failure (out of memory, Envoy refusing a definition) is logged; the
 * config then works without metrics. */
void ar_metrics_attach(void *cfg_envoy, const void *cfg, int upstream);

/* In config destroy, before the mode frees cfg (main thread as a rule; see
 * metrics.c for the one other thread).  No commit for cfg after it returns.
 * A no-op for a config never attached. */
void ar_metrics_detach(const void *cfg);

/* Main thread: envoy_dynamic_module_on_http_filter_config_scheduled. */
void ar_metrics_scheduled(void *cfg_envoy, const void *cfg, uint64_t event_id);

#endif
