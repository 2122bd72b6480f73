/*
 * config_json.c - the flat JSON object of every filter_config
 * (config_json.h).  Moved out of the lua mode so the python mode reads the
 * same syntax; as before it is lenient about commas between members and
 * ignores what follows the closing brace.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_json.h"

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')) p++;
    return p;
}

int ar_json_is_object(env_buf conf)
{
    const char *p = skip_ws(conf.ptr ? conf.ptr : "", conf.ptr ? conf.ptr + conf.length : "");
    return conf.ptr && p < conf.ptr + conf.length && *p == '{';
}

const char *ar_json_type_name(ar_json_type t)
{
    return t == AR_JSON_STRING ? "string" : t == AR_JSON_NUMBER ? "number"
                                        : t == AR_JSON_BOOL     ? "boolean"
                                                                : "null";
}

/* A JSON string at *pp into a malloc'ed NUL-terminated copy.  0 or -1. */
static int json_string(const char **pp, const char *end, char **out)
{
    const char *p = *pp;
    if (p >= end || *p != '"') return -1;
    p++;
    char *o = malloc((size_t)(end - p) + 1), *w = o;
    if (!o) return -1;
    while (p < end && *p != '"') {
        if (*p != '\\') {
            *w++ = *p++;
            continue;
        }
        if (++p >= end) break;
        char c = *p++;
        switch (c) {
        case 'n': *w++ = '\n'; break;
        case 't': *w++ = '\t'; break;
        case 'r': *w++ = '\r'; break;
        case 'b': *w++ = '\b'; break;
        case 'f': *w++ = '\f'; break;
        case 'u': {
            if (end - p < 4) goto bad;
            char hex[5] = {p[0], p[1], p[2], p[3], 0};
            char *e = NULL;
            unsigned long u = strtoul(hex, &e, 16);
            if (*e) goto bad;
            p += 4;
            if (u < 0x80) *w++ = (char)u;
            else if (u < 0x800) {
                *w++ = (char)(0xc0 | (u >> 6));
                *w++ = (char)(0x80 | (u & 0x3f));
            } else {
                *w++ = (char)(0xe0 | (u >> 12));
                *w++ = (char)(0x80 | ((u >> 6) & 0x3f));
                *w++ = (char)(0x80 | (u & 0x3f));
            }
            break;
        }
        default: *w++ = c; break;                   /* \" \\ \/ */
        }
    }
    if (p >= end) goto bad;
    *w = '\0';
    *pp = p + 1;
    *out = o;
    return 0;
bad:
    free(o);
    return -1;
}

static int word(const char **pp, const char *end, const char *w)
{
    size_t n = strlen(w);
    if ((size_t)(end - *pp) < n || memcmp(*pp, w, n) != 0) return 0;
    *pp += n;
    return 1;
}

/* A string, number, true, false or null at *pp.  0 or -1. */
static int json_value(const char **pp, const char *end, ar_json_value *v)
{
    *v = (ar_json_value){AR_JSON_NULL, NULL, 0, 0};
    const char *p = *pp;
    if (p < end && *p == '"') {
        v->type = AR_JSON_STRING;
        return json_string(pp, end, &v->str);
    }
    if (word(pp, end, "true") || word(pp, end, "false")) {
        v->type = AR_JSON_BOOL;
        v->boolean = *p == 't';
        return 0;
    }
    if (word(pp, end, "null")) return 0;
    char num[64];
    size_t n = 0;
    while (p + n < end && n < sizeof num - 1 && strchr("+-0123456789.eE", p[n])) n++;
    if (n == 0) return -1;
    memcpy(num, p, n);
    num[n] = '\0';
    char *e = NULL;
    v->num = strtod(num, &e);
    if (*e) return -1;
    v->type = AR_JSON_NUMBER;
    *pp = p + n;
    return 0;
}

int ar_json_object(env_buf conf, ar_json_member_fn fn, void *ud, char *err, size_t errlen)
{
    const char *p = conf.ptr, *end = conf.ptr + conf.length;
    p = skip_ws(p, end);
    if (p >= end || *p != '{') {
        snprintf(err, errlen, "filter_config: expected a JSON object");
        return -1;
    }
    p = skip_ws(p + 1, end);
    while (p < end && *p != '}') {
        char *k = NULL;
        ar_json_value v;
        if (json_string(&p, end, &k) != 0) {
            snprintf(err, errlen, "filter_config: bad JSON key");
            return -1;
        }
        p = skip_ws(p, end);
        if (p >= end || *p != ':') {
            free(k);
            snprintf(err, errlen, "filter_config: expected ':'");
            return -1;
        }
        p = skip_ws(p + 1, end);
        if (json_value(&p, end, &v) != 0) {
            snprintf(err, errlen, "filter_config: the value of \"%s\" is not a JSON string, "
                                  "number, true, false or null", k);
            free(k);
            return -1;
        }
        int rc = fn(ud, k, &v, err, errlen);
        free(k);
        free(v.str);
        if (rc != 0) return -1;
        p = skip_ws(p, end);
        if (p < end && *p == ',') p = skip_ws(p + 1, end);
    }
    if (p >= end) {
        snprintf(err, errlen, "filter_config: unterminated JSON object");
        return -1;
    }
    return 0;
}
