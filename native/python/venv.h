/*
 * venv.h - which Python a process embeds, shared by shim.c (libaioresty.so,
 * libresty_ffi_python.so) and loader.c (libaioresty_python<X.Y>-<key>.so).
 *
 * The venv to run in: $AIORESTY_VENV, else $VIRTUAL_ENV, else the venv the
 * library is installed in (a pyvenv.cfg above it), else none.
 * Its interpreter: the `home` (base interpreter's bin directory) and the X.Y
 * of `version` (virtualenv: `version_info`) in <venv>/pyvenv.cfg; a
 * directory without pyvenv.cfg is taken as an installation prefix
 * (home = <dir>/bin, X.Y unknown).
 * The key of an interpreter: FNV-1a 32 of realpath(home), as 8 hex digits;
 * native/python/build.mk computes the same for the interpreter it builds for.
 */
#ifndef AIORESTY_VENV_H
#define AIORESTY_VENV_H

#include <dlfcn.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define AR_LOG "[aioresty] "
#define AR_LOADER_PREFIX "libaioresty_python"

static inline int ar_is_file(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Directory of the shared object holding `anchor` (a function of it). */
static inline int ar_own_dir(void *anchor, char *out, size_t outlen)
{
    Dl_info di;
    char path[PATH_MAX];
    if (!dladdr(anchor, &di) || !di.dli_fname || !realpath(di.dli_fname, path)) return -1;
    char *slash = strrchr(path, '/');
    if (!slash) return -1;
    *slash = '\0';
    if ((size_t)snprintf(out, outlen, "%s", path) >= outlen) return -1;
    return 0;
}

/* The venv to run in, written into out ("" = none). */
static inline void ar_find_venv(void *anchor, char *out, size_t outlen)
{
    const char *v = getenv("AIORESTY_VENV");
    if (!v || !*v) v = getenv("VIRTUAL_ENV");
    out[0] = '\0';
    if (v && *v) {
        snprintf(out, outlen, "%s", v);
        return;
    }
    /* installed as <venv>/lib/pythonX.Y/site-packages/aioresty/_lib/lib*.so */
    char dir[PATH_MAX], cand[PATH_MAX + 16];
    if (ar_own_dir(anchor, dir, sizeof dir) < 0) return;
    for (;;) {
        snprintf(cand, sizeof cand, "%s/pyvenv.cfg", dir);
        if (ar_is_file(cand)) {
            snprintf(out, outlen, "%s", dir);
            return;
        }
        char *slash = strrchr(dir, '/');
        if (!slash || slash == dir) return;
        *slash = '\0';
    }
}

/* The interpreter of `venv`: home (as written, not resolved) and X.Y ("" if
 * unknown).  Returns 1 with a pyvenv.cfg, 0 for a plain prefix. */
static inline char *ar_trim(char *s)
{
    while (*s == ' ' || *s == '\t') s++;
    char *end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\n' || end[-1] == '\r'))
        *--end = '\0';
    return s;
}

static inline int ar_venv_python(const char *venv, char *home, size_t homelen, char *xy,
                                 size_t xylen)
{
    char cfg[PATH_MAX + 16], line[PATH_MAX + 64];
    snprintf(home, homelen, "%s/bin", venv);
    xy[0] = '\0';
    snprintf(cfg, sizeof cfg, "%s/pyvenv.cfg", venv);
    FILE *f = fopen(cfg, "r");
    if (!f) return 0;
    while (fgets(line, sizeof line, f)) {
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = '\0';
        const char *k = ar_trim(line), *val = ar_trim(eq + 1);
        if (!strcmp(k, "home")) {
            snprintf(home, homelen, "%s", val);
        } else if ((!strcmp(k, "version") || !strcmp(k, "version_info")) && !xy[0]) {
            /* "3.13.0" -> "3.13" */
            const char *dot = strchr(val, '.');
            const char *dot2 = dot ? strchr(dot + 1, '.') : NULL;
            size_t n = dot2 ? (size_t)(dot2 - val) : strlen(val);
            if (n < xylen) {
                memcpy(xy, val, n);
                xy[n] = '\0';
            }
        }
    }
    fclose(f);
    return 1;
}

/* FNV-1a 32 of realpath(home) as 8 hex digits into key[9]; -1 if home does
 * not exist. */
static inline int ar_home_key(const char *home, char *key, char *real, size_t reallen)
{
    char buf[PATH_MAX];
    if (!realpath(home, buf)) return -1;
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)buf; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    snprintf(key, 9, "%08x", h);
    if (real) snprintf(real, reallen, "%s", buf);
    return 0;
}

#endif
