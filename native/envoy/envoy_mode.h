/*
 * envoy_mode.h - how the filter modes of libaioresty_envoy.so plug into the
 * one set of hooks Envoy calls (module.c).
 *
 * DynamicModuleFilter's `filter_name` picks the mode:
 *   "bridge"  upstream filter of the aioresty_bridge cluster: stock Lua
 *             filter httpCall -> task -> local reply (bridge.c)
 * Each mode's config and filter structs start with an `ar_mode_base`, so the
 * dispatcher finds the mode from the pointer Envoy hands back.  A NULL hook
 * means "continue" (or nothing to do).  Every hook runs on the Envoy thread
 * that owns the filter, except config_new/config_destroy (main thread).
 */
#ifndef AIORESTY_ENVOY_MODE_H
#define AIORESTY_ENVOY_MODE_H

#include "envoy_abi.h"

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
    void *(*filter_new)(void *cfg, void *fe);
    void (*filter_destroy)(void *f);
    int (*request_headers)(void *fe, void *f, bool eos);
    int (*request_body)(void *fe, void *f, bool eos);
    int (*request_trailers)(void *fe, void *f);
    int (*response_headers)(void *fe, void *f, bool eos);
    int (*response_body)(void *fe, void *f, bool eos);
    int (*response_trailers)(void *fe, void *f);
    void (*stream_complete)(void *fe, void *f);
    void (*scheduled)(void *fe, void *f, uint64_t event_id);
};

extern const ar_mode ar_mode_bridge;
extern const ar_mode ar_mode_lua; /* luamod.c: LuaJIT filter with native ffi-yield */
extern const ar_mode ar_mode_python; /* pyfilter.c: async Python HTTP filter */

/* Logs through Envoy's logger (module.c). */
void ar_envoy_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
