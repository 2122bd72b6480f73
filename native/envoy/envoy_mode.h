/*
 * envoy_mode.h - how the filter modes of libaioresty_envoy.so plug into the
 * one set of hooks Envoy calls (module.c, the hall).
 *
 * DynamicModuleFilter's `filter_name` picks the mode (a wing):
 *   "bridge"  upstream filter of the aioresty_bridge cluster: stock Lua
 *             filter httpCall -> task -> local reply (bridge.c)
 *   "lua"     aioresty's LuaJIT filter with a native ffi-yield (lua/)
 *   "python"  an async Python HTTP filter (python/)
 *   "metrics" a no-op filter whose config exports the metrics (metrics_mode.c)
 * and DynamicModuleFilterPerRoute's `per_route_config_name` picks the mode of
 * a per-route config (only "python" has them).
 *
 * Each mode's config, per-route config and filter structs start with an
 * `ar_mode_base`, so the hall finds the mode from the pointer Envoy hands
 * back.  A NULL hook means "continue" (or nothing to do).
 *
 * Threads: config_new/config_destroy and route_new/route_destroy run on
 * Envoy's main thread; every other hook on the worker thread that owns the
 * filter.  Ownership: what *_new returns belongs to Envoy until the matching
 * *_destroy, which frees it.
 */
#ifndef AIORESTY_ENVOY_MODE_H
#define AIORESTY_ENVOY_MODE_H

#include "envoy_abi.h"
#include "stream.h"

typedef struct ar_mode ar_mode;

typedef struct ar_mode_base {
    const ar_mode *mode;
} ar_mode_base;

struct ar_mode {
    const char *name;
    /* Returns the mode's config (starting with ar_mode_base) or NULL after
     * logging why. */
    void *(*config_new)(void *cfg_envoy, env_buf conf);
    void (*config_destroy)(void *cfg);
    /* Per-route config (starting with ar_mode_base) or NULL after logging
     * why; NULL hooks: the mode has no per-route config. */
    void *(*route_new)(env_buf conf);
    void (*route_destroy)(void *route);
    void *(*filter_new)(void *cfg, void *fe);
    void (*filter_destroy)(void *f);
    /* the headers, body and trailers hooks of either direction */
    env_headers_status (*headers)(void *fe, void *f, ar_dir dir, bool eos);
    env_body_status (*body)(void *fe, void *f, ar_dir dir, bool eos);
    env_trailers_status (*trailers)(void *fe, void *f, ar_dir dir);
    void (*stream_complete)(void *fe, void *f);
    void (*scheduled)(void *fe, void *f, uint64_t event_id);
};

extern const ar_mode ar_mode_bridge; /* bridge.c */
extern const ar_mode ar_mode_lua;    /* lua/driver.c */
extern const ar_mode ar_mode_python; /* python/hooks.c */
extern const ar_mode ar_mode_metrics; /* metrics_mode.c */

#endif
