/*
 * python/msgpack.h - the subset of msgpack the Python filter mode speaks
 * with aioresty/filters.py (the formats are in python/hooks.c's header):
 * writing arrays, unsigned ints, str, bin headers; reading arrays, unsigned
 * ints, str/bin/nil.
 *
 * Threads: any; no global state.  Ownership: a wbuf owns `p` (malloc'ed,
 * grown by realloc; the caller frees it, also after `oom`).  An rbuf borrows
 * the bytes it reads; mp_read_bytes returns slices of them.  Errors are
 * sticky: `oom` / `bad` turn on and every later call is a no-op.
 */
#ifndef AIORESTY_ENVOY_PY_MSGPACK_H
#define AIORESTY_ENVOY_PY_MSGPACK_H

#include <stddef.h>
#include <stdint.h>

#include "envoy_abi.h"

typedef struct wbuf {
    char *p;
    size_t len, cap;
    int oom;
} wbuf;

void wb_reserve(wbuf *w, size_t n);       /* room for n more bytes (or oom) */
void wb_put(wbuf *w, const void *d, size_t n);
void wb_byte(wbuf *w, unsigned char b);
void mp_array(wbuf *w, size_t n);
void mp_uint(wbuf *w, uint64_t v);
void mp_str(wbuf *w, const char *s, size_t n);
void mp_bin_header(wbuf *w, size_t n);    /* the n bytes follow with wb_put */

typedef struct rbuf {
    const unsigned char *p, *end;
    int bad;
} rbuf;

size_t mp_read_array(rbuf *r);
uint64_t mp_read_uint(rbuf *r);
/* str or bin; nil gives ptr NULL.  Borrowed from the bytes read. */
mod_buf mp_read_bytes(rbuf *r);

#endif
