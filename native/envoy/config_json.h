/*
 * config_json.h - the one filter_config syntax of libaioresty_envoy.so: a
 * flat JSON object whose values are strings, numbers, true, false or null
 * (config_json.c).  The lua and python modes read it; each checks its own
 * keys and types.
 *
 * Threads: Envoy's main thread (config hooks), but nothing here is shared:
 * any thread.  Ownership: a string value is malloc'ed by the parser and
 * freed after the member callback returns, unless the callback took it
 * (set v->str to NULL; it then frees it).
 */
#ifndef AIORESTY_ENVOY_CONFIG_JSON_H
#define AIORESTY_ENVOY_CONFIG_JSON_H

#include <stddef.h>

#include "envoy_abi.h"

typedef enum { AR_JSON_STRING, AR_JSON_NUMBER, AR_JSON_BOOL, AR_JSON_NULL } ar_json_type;

typedef struct {
    ar_json_type type;
    char *str;          /* AR_JSON_STRING: NUL-terminated (see ownership above) */
    double num;         /* AR_JSON_NUMBER */
    int boolean;        /* AR_JSON_BOOL */
} ar_json_value;

/* Called once per member, in order; returns 0, or -1 with err filled. */
typedef int (*ar_json_member_fn)(void *ud, const char *key, ar_json_value *v, char *err,
                                 size_t errlen);

/* 1 when conf's first non-blank character is '{' (the JSON form). */
int ar_json_is_object(env_buf conf);

/* Parses conf as one flat object, calling fn per member.  0, or -1 with err
 * filled ("filter_config: ..."). */
int ar_json_object(env_buf conf, ar_json_member_fn fn, void *ud, char *err, size_t errlen);

/* "string", "number", "boolean", "null": for error messages. */
const char *ar_json_type_name(ar_json_type t);

#endif
