/*
 * venv.h - which Python a process embeds: chosen by shim.c (libaioresty.so,
 * libresty_ffi_python.so), handed to loader.c (libaioresty_python<X.Y>.so).
 *
 * The venv to run in: $AIORESTY_VENV, else $VIRTUAL_ENV (either must name a
 * venv: a directory with a pyvenv.cfg; anything else is an error naming it),
 * else the venv the library is installed in (a pyvenv.cfg above it), else
 * the installation prefix it is installed in (<prefix>/lib/pythonX.Y/...).
 * Its interpreter: `home` (the base interpreter's bin directory) and
 * `version` (virtualenv: `version_info`) of <venv>/pyvenv.cfg.
 * Its libpython, found at run time (never a build-time path): the file
 * $AIORESTY_LIBPYTHON, else libpythonX.Y.so.1.0 in <home>/../lib,
 * <home>/../lib/<multiarch> or <home>/../lib64, and its Py_GetVersion() must
 * be the venv's version.
 */
#ifndef AIORESTY_VENV_H
#define AIORESTY_VENV_H

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#define AR_LOG "[aioresty] "
#define AR_LOADER_PREFIX "libaioresty_python"

/* What the shim hands the loader (aioresty_python_configure); both are
 * built from one tree, AR_PYTHON_ABI guards against a mix of two. */
#define AR_PYTHON_ABI 2
typedef struct {
    int abi;                    /* AR_PYTHON_ABI */
    int explicit_venv;          /* chosen by $AIORESTY_VENV / $VIRTUAL_ENV */
    char venv[PATH_MAX];        /* "" = none (an installation prefix) */
    char exe[PATH_MAX + 128];   /* sys.executable: <venv>/bin/python3, else <home>/pythonX.Y */
    char home[PATH_MAX];        /* realpath of the base interpreter's bin directory */
    char version[32];           /* "3.11.2" ("" = unknown) */
    char xy[16];                /* "3.11" */
    char libpython[PATH_MAX];   /* realpath of the libpython loaded (RTLD_GLOBAL) */
} ar_python;

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

#endif
