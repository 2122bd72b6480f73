/*
 * module.c - the hall of libaioresty_envoy.so: every event hook Envoy
 * requires (ABI v0.2.0 of Envoy 1.40), per-route config hooks included,
 * dispatched to the filter mode chosen by `filter_name` /
 * `per_route_config_name` (envoy_mode.h).  No mode logic lives here.
 *
 * Every mode's config is also attached to the metrics exporter
 * (metrics.h) here, so no mode has to.
 *
 * Threads: program init, the config and per-route config hooks run on
 * Envoy's main thread; the filter hooks on the filter's worker thread.
 * Ownership: what a mode's *_new returns is Envoy's until the matching
 * *_destroy hook hands it back to the mode, which frees it.
 */
#include <stdlib.h>
#include <string.h>

#include "envoy_mode.h"
#include "metrics.h"
#include "stream.h"

static const ar_mode *const g_modes[] = {&ar_mode_python, &ar_mode_bridge, &ar_mode_lua,
                                         &ar_mode_metrics};
#define N_MODES (sizeof g_modes / sizeof *g_modes)

static const ar_mode *mode_of(const void *p)
{
    return ((const ar_mode_base *)p)->mode;
}

static const ar_mode *mode_named(env_buf name)
{
    for (size_t i = 0; i < N_MODES; i++) {
        const char *mn = g_modes[i]->name;
        if (name.length == strlen(mn) && memcmp(name.ptr, mn, name.length) == 0) return g_modes[i];
    }
    return NULL;
}

/* The core's log lines (aioresty_core.h ar_log: aioresty's and Python
 * logging) go to Envoy's log, logger dynamic_modules, whole (a traceback is
 * one line of many kilobytes); levels Envoy drops are not even formatted. */
static env_log_level to_envoy(int level)
{
    static const env_log_level map[] = {ENV_LOG_DEBUG, ENV_LOG_INFO, ENV_LOG_WARN, ENV_LOG_ERROR};
    return map[level < 0 ? 0 : level > 3 ? 3 : level];
}

static int core_log_enabled(int level)
{
    return envoy_dynamic_module_callback_log_enabled(to_envoy(level));
}

static void core_log(int level, const char *line)
{
    static const char prefix[] = "aioresty: ";
    char small[4096];
    size_t ll = strlen(line), n = sizeof prefix - 1 + ll;
    char *buf = n <= sizeof small ? small : malloc(n);
    if (!buf) return;
    memcpy(buf, prefix, sizeof prefix - 1);
    memcpy(buf + sizeof prefix - 1, line, ll);
    envoy_dynamic_module_callback_log(to_envoy(level), (mod_buf){buf, n});
    if (buf != small) free(buf);
}

EXPORT const char *envoy_dynamic_module_on_program_init(void)
{
    ar_set_log_enabled(core_log_enabled);
    ar_set_logger(core_log);
    return AR_ENVOY_ABI_VERSION;
}

EXPORT const void *envoy_dynamic_module_on_http_filter_config_new(void *cfg_envoy, env_buf name,
                                                                  env_buf conf)
{
    const ar_mode *m = mode_named(name);
    if (m) {
        void *cfg = m->config_new(cfg_envoy, conf);
        /* every mode's config defines the stats (only possible in here) */
        if (cfg) ar_metrics_attach(cfg_envoy, cfg, m == &ar_mode_bridge);
        return cfg;
    }
    ar_envoy_log(ENV_LOG_ERROR, "aioresty: unknown filter_name '%.*s' (known: python, bridge, lua, metrics)",
                 (int)name.length, name.ptr);
    return NULL;
}

EXPORT void envoy_dynamic_module_on_http_filter_config_destroy(const void *cfg)
{
    if (!cfg) return;
    ar_metrics_detach(cfg);
    mode_of(cfg)->config_destroy((void *)cfg);
}

/* Main thread: the metrics flush (metrics.h), the only config event. */
EXPORT void envoy_dynamic_module_on_http_filter_config_scheduled(void *cfg_envoy, const void *cfg,
                                                                 uint64_t id)
{
    if (cfg) ar_metrics_scheduled(cfg_envoy, cfg, id);
}

EXPORT const void *envoy_dynamic_module_on_http_filter_per_route_config_new(env_buf name,
                                                                            env_buf conf)
{
    const ar_mode *m = mode_named(name);
    if (m && m->route_new) return m->route_new(conf);
    ar_envoy_log(ENV_LOG_ERROR, "aioresty: per-route config '%.*s' unknown (known: python)",
                 (int)name.length, name.ptr);
    return NULL;
}

EXPORT void envoy_dynamic_module_on_http_filter_per_route_config_destroy(const void *route)
{
    if (route) mode_of(route)->route_destroy((void *)route);
}

EXPORT const void *envoy_dynamic_module_on_http_filter_new(const void *cfg, void *fe)
{
    return mode_of(cfg)->filter_new((void *)cfg, fe);
}

EXPORT void envoy_dynamic_module_on_http_filter_destroy(const void *f)
{
    if (f) mode_of(f)->filter_destroy((void *)f);
}

static env_headers_status headers(void *fe, const void *f, ar_dir dir, bool eos)
{
    const ar_mode *m = mode_of(f);
    return m->headers ? m->headers(fe, (void *)f, dir, eos) : ENV_HEADERS_CONTINUE;
}

static env_body_status body(void *fe, const void *f, ar_dir dir, bool eos)
{
    const ar_mode *m = mode_of(f);
    return m->body ? m->body(fe, (void *)f, dir, eos) : ENV_BODY_CONTINUE;
}

static env_trailers_status trailers(void *fe, const void *f, ar_dir dir)
{
    const ar_mode *m = mode_of(f);
    return m->trailers ? m->trailers(fe, (void *)f, dir) : ENV_TRAILERS_CONTINUE;
}

EXPORT env_headers_status envoy_dynamic_module_on_http_filter_request_headers(void *fe,
                                                                              const void *f,
                                                                              bool eos)
{
    return headers(fe, f, AR_DIR_REQUEST, eos);
}

EXPORT env_body_status envoy_dynamic_module_on_http_filter_request_body(void *fe, const void *f,
                                                                        bool eos)
{
    return body(fe, f, AR_DIR_REQUEST, eos);
}

EXPORT env_trailers_status envoy_dynamic_module_on_http_filter_request_trailers(void *fe,
                                                                                const void *f)
{
    return trailers(fe, f, AR_DIR_REQUEST);
}

EXPORT env_headers_status envoy_dynamic_module_on_http_filter_response_headers(void *fe,
                                                                               const void *f,
                                                                               bool eos)
{
    return headers(fe, f, AR_DIR_RESPONSE, eos);
}

EXPORT env_body_status envoy_dynamic_module_on_http_filter_response_body(void *fe, const void *f,
                                                                         bool eos)
{
    return body(fe, f, AR_DIR_RESPONSE, eos);
}

EXPORT env_trailers_status envoy_dynamic_module_on_http_filter_response_trailers(void *fe,
                                                                                 const void *f)
{
    return trailers(fe, f, AR_DIR_RESPONSE);
}

EXPORT void envoy_dynamic_module_on_http_filter_stream_complete(void *fe, const void *f)
{
    const ar_mode *m = mode_of(f);
    if (m->stream_complete) m->stream_complete(fe, (void *)f);
}

EXPORT void envoy_dynamic_module_on_http_filter_scheduled(void *fe, const void *f, uint64_t id)
{
    if (id == AR_LINK_FLUSH_EVENT) {
        ar_link_flush_wakes();
        return;
    }
    const ar_mode *m = mode_of(f);
    if (m->scheduled) m->scheduled(fe, (void *)f, id);
}

/* ---- hooks Envoy requires but no mode uses (callouts, watermarks) ---- */

EXPORT void envoy_dynamic_module_on_http_filter_http_callout_done(void *fe, const void *fm,
                                                                  uint64_t id, int result,
                                                                  void *headers, size_t nheaders,
                                                                  void *chunks, size_t nchunks)
{
    (void)fe, (void)fm, (void)id, (void)result, (void)headers, (void)nheaders, (void)chunks,
        (void)nchunks;
}

EXPORT void envoy_dynamic_module_on_http_filter_http_stream_headers(void *fe, const void *fm,
                                                                    uint64_t id, void *headers,
                                                                    size_t n, bool eos)
{
    (void)fe, (void)fm, (void)id, (void)headers, (void)n, (void)eos;
}

EXPORT void envoy_dynamic_module_on_http_filter_http_stream_data(void *fe, const void *fm,
                                                                 uint64_t id, const void *data,
                                                                 size_t n, bool eos)
{
    (void)fe, (void)fm, (void)id, (void)data, (void)n, (void)eos;
}

EXPORT void envoy_dynamic_module_on_http_filter_http_stream_trailers(void *fe, const void *fm,
                                                                     uint64_t id, void *trailers,
                                                                     size_t n)
{
    (void)fe, (void)fm, (void)id, (void)trailers, (void)n;
}

EXPORT void envoy_dynamic_module_on_http_filter_http_stream_complete(void *fe, const void *fm,
                                                                     uint64_t id)
{
    (void)fe, (void)fm, (void)id;
}

EXPORT void envoy_dynamic_module_on_http_filter_http_stream_reset(void *fe, const void *fm,
                                                                  uint64_t id, int reason)
{
    (void)fe, (void)fm, (void)id, (void)reason;
}

EXPORT void envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    void *fe, const void *fm)
{
    (void)fe, (void)fm;
}

EXPORT void envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    void *fe, const void *fm)
{
    (void)fe, (void)fm;
}
