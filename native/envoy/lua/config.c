/*
 * lua/config.c - the filter_config of filter mode "lua" (a
 * google.protobuf.StringValue), a JSON object (config_json.h) of strings:
 *   {"inline_code": "<lua source>"}  or  {"filename": "/path/script.lua"}
 *   plus optional "on_error": "continue" (default, as Envoy's Lua filter) |
 *   "fail_closed" (500 local reply), and "metadata_namespace" (default
 *   "aioresty.lua": the route filter_metadata key metadata() reads).
 *   A config that does not start with '{' is taken as inline Lua source.
 * The script is syntax-checked here, so a broken one rejects the config;
 * it runs on each worker, in its own state (lua/driver.c).
 *
 * Threads: Envoy's main thread (config hooks).  Ownership: the lm_config
 * owns its script text, namespace and every worker's lm_state, all freed in
 * lm_config_destroy.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <luajit.h>

#include "config_json.h"
#include "lua_mode.h"

void lm_log(env_log_level level, const char *what, const char *msg)
{
    ar_envoy_log(level, "aioresty lua: %s: %s", what, msg ? msg : "(no message)");
}

static char *read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 65536, n = 0;
    char *b = malloc(cap);
    while (b) {
        size_t r = fread(b + n, 1, cap - n, fp);
        n += r;
        if (n < cap) break;
        char *nb = realloc(b, cap *= 2);
        if (!nb) {
            free(b);
            b = NULL;
        } else b = nb;
    }
    fclose(fp);
    if (!b) snprintf(err, errlen, "out of memory reading %s", path);
    *len = n;
    return b;
}

/* the string members of the JSON form, malloc'ed */
typedef struct {
    char *inl, *file, *onerr, *ns, *chunk;
} lm_opts;

static int json_member(void *ud, const char *key, ar_json_value *v, char *err, size_t errlen)
{
    lm_opts *o = ud;
    char **slot = !strcmp(key, "inline_code")          ? &o->inl
                  : !strcmp(key, "filename")           ? &o->file
                  : !strcmp(key, "on_error")           ? &o->onerr
                  : !strcmp(key, "metadata_namespace") ? &o->ns
                  : !strcmp(key, "chunk_name")         ? &o->chunk
                                                       : NULL;
    if (!slot) {
        snprintf(err, errlen, "filter_config: unknown key \"%s\" (known: inline_code, filename, "
                              "chunk_name, on_error, metadata_namespace)", key);
        return -1;
    }
    if (v->type != AR_JSON_STRING) {
        snprintf(err, errlen, "filter_config: the value of \"%s\" must be a string", key);
        return -1;
    }
    free(*slot);
    *slot = v->str;                                 /* taken */
    v->str = NULL;
    return 0;
}

static int parse_config(lm_config *c, env_buf conf, char *err, size_t errlen)
{
    if (!ar_json_is_object(conf)) {                 /* plain Lua source */
        c->code = malloc(conf.length + 1);
        if (!c->code) return -1;
        memcpy(c->code, conf.ptr, conf.length);
        c->code_len = conf.length;
        snprintf(c->chunkname, sizeof c->chunkname, "=aioresty_lua");
        return 0;
    }
    lm_opts o = {0};
    int rc = -1;
    if (ar_json_object(conf, json_member, &o, err, errlen) != 0) goto out;
    if (!!o.inl == !!o.file) {
        snprintf(err, errlen, "filter_config: exactly one of \"inline_code\" or \"filename\" is required");
        goto out;
    }
    if (o.onerr && strcmp(o.onerr, "continue") && strcmp(o.onerr, "fail_closed")) {
        snprintf(err, errlen, "filter_config: on_error must be \"continue\" or \"fail_closed\"");
        goto out;
    }
    c->on_error = o.onerr && !strcmp(o.onerr, "fail_closed") ? ON_ERROR_FAIL_CLOSED : ON_ERROR_CONTINUE;
    c->md_ns = o.ns;
    o.ns = NULL;
    if (o.inl) {
        c->code = o.inl;
        c->code_len = strlen(o.inl);
        o.inl = NULL;
        /* the name in its error messages: "<chunk_name>:3: ..." */
        snprintf(c->chunkname, sizeof c->chunkname, "=%s", o.chunk ? o.chunk : "aioresty_lua");
    } else {
        c->code = read_file(o.file, &c->code_len, err, errlen);
        if (!c->code) goto out;
        snprintf(c->chunkname, sizeof c->chunkname, "@%s", o.file);
    }
    rc = 0;
out:
    free(o.inl);
    free(o.file);
    free(o.onerr);
    free(o.ns);
    free(o.chunk);
    return rc;
}

/* A config that never got its key and states (rejected in lm_config_new). */
static void config_free(lm_config *c)
{
    free(c->code);
    free(c->md_ns);
    free(c);
}

void lm_config_destroy(void *cfg)
{
    lm_config *c = cfg;
    pthread_key_delete(c->key);
    for (lm_state *s = c->states, *n; s; s = n) {
        n = s->next;
        lua_close(s->L);
        free(s);
    }
    pthread_mutex_destroy(&c->states_mu);
    config_free(c);
}

void *lm_config_new(void *cfg_envoy, env_buf conf)
{
    (void)cfg_envoy;
    lm_config *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->base.mode = &ar_mode_lua;
    char err[1024] = "out of memory";
    if (parse_config(c, conf, err, sizeof err) != 0) {
        lm_log(ENV_LOG_ERROR, "config rejected", err);
        config_free(c);
        return NULL;
    }
    if (!c->md_ns) c->md_ns = strdup("aioresty.lua");
    /* syntax check now, so a broken script rejects the config; the chunk
     * itself runs on each worker, in its own state */
    lua_State *L = c->md_ns ? luaL_newstate() : NULL;
    if (!L) {
        config_free(c);
        return NULL;
    }
    if (luaL_loadbuffer(L, c->code, c->code_len, c->chunkname)) {
        lm_log(ENV_LOG_ERROR, "script rejected", lua_tostring(L, -1));
        lua_close(L);
        config_free(c);
        return NULL;
    }
    lua_close(L);
    pthread_key_create(&c->key, NULL);
    pthread_mutex_init(&c->states_mu, NULL);
    ar_envoy_log(ENV_LOG_INFO, "aioresty lua: config loaded (%zu bytes of Lua, %s, private %s)",
                 c->code_len, c->on_error ? "on_error=fail_closed" : "on_error=continue", LUAJIT_VERSION);
    return c;
}
