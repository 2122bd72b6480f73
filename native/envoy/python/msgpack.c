/*
 * python/msgpack.c - the subset of msgpack the Python filter's wire formats
 * use (python/msgpack.h).  Pure functions of their buffers: any thread, no
 * globals.
 */
#include <stdlib.h>
#include <string.h>

#include "msgpack.h"

void wb_reserve(wbuf *w, size_t n)
{
    if (w->oom || w->len + n <= w->cap) return;
    size_t cap = w->cap ? w->cap : 1024;
    while (cap < w->len + n) cap *= 2;
    char *np = realloc(w->p, cap);
    if (!np) {
        w->oom = 1;
        return;
    }
    w->p = np;
    w->cap = cap;
}

void wb_put(wbuf *w, const void *d, size_t n)
{
    wb_reserve(w, n);
    if (w->oom) return;
    if (n) memcpy(w->p + w->len, d, n);
    w->len += n;
}

void wb_byte(wbuf *w, unsigned char b)
{
    wb_put(w, &b, 1);
}

static void wb_be(wbuf *w, uint64_t v, int bytes)
{
    unsigned char b[8];
    for (int i = 0; i < bytes; i++) b[i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
    wb_put(w, b, (size_t)bytes);
}

/* A length header: tag t8 (none when 0), t16 or t32 and n in 1, 2 or 4 bytes. */
static void len_header(wbuf *w, size_t n, unsigned char t8, unsigned char t16, unsigned char t32)
{
    int bytes = n < 256 && t8 ? 1 : n < 65536 ? 2 : 4;
    wb_byte(w, bytes == 1 ? t8 : bytes == 2 ? t16 : t32);
    wb_be(w, n, bytes);
}

void mp_array(wbuf *w, size_t n)
{
    if (n < 16) wb_byte(w, (unsigned char)(0x90 | n));
    else len_header(w, n, 0, 0xdc, 0xdd);
}

void mp_uint(wbuf *w, uint64_t v)
{
    if (v < 128) {
        wb_byte(w, (unsigned char)v);
    } else if (v <= 0xffffffffu) {
        wb_byte(w, 0xce);
        wb_be(w, v, 4);
    } else {
        wb_byte(w, 0xcf);
        wb_be(w, v, 8);
    }
}

void mp_str(wbuf *w, const char *s, size_t n)
{
    if (n < 32) wb_byte(w, (unsigned char)(0xa0 | n));
    else len_header(w, n, 0xd9, 0xda, 0xdb);
    wb_put(w, s, n);
}

void mp_bin_header(wbuf *w, size_t n)
{
    len_header(w, n, 0xc4, 0xc5, 0xc6);
}


static uint64_t rb_be(rbuf *r, int bytes)
{
    if (r->bad || r->end - r->p < bytes) {
        r->bad = 1;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) v = (v << 8) | r->p[i];
    r->p += bytes;
    return v;
}

static int rb_peek(rbuf *r)
{
    if (r->bad || r->p >= r->end) {
        r->bad = 1;
        return -1;
    }
    return *r->p;
}

size_t mp_read_array(rbuf *r)
{
    int c = rb_peek(r);
    if (c < 0) return 0;
    r->p++;
    if ((c & 0xf0) == 0x90) return (size_t)(c & 0x0f);
    if (c == 0xdc) return (size_t)rb_be(r, 2);
    if (c == 0xdd) return (size_t)rb_be(r, 4);
    r->bad = 1;
    return 0;
}

uint64_t mp_read_uint(rbuf *r)
{
    int c = rb_peek(r);
    if (c < 0) return 0;
    r->p++;
    if (c < 0x80) return (uint64_t)c;
    if (c == 0xcc) return rb_be(r, 1);
    if (c == 0xcd) return rb_be(r, 2);
    if (c == 0xce) return rb_be(r, 4);
    if (c == 0xcf) return rb_be(r, 8);
    r->bad = 1;
    return 0;
}

/* str or bin; nil gives ptr NULL.  Borrowed from the answer. */
mod_buf mp_read_bytes(rbuf *r)
{
    mod_buf b = {NULL, 0};
    int c = rb_peek(r);
    if (c < 0) return b;
    r->p++;
    size_t n;
    if (c == 0xc0) return b;
    if ((c & 0xe0) == 0xa0) n = (size_t)(c & 0x1f);
    else if (c == 0xd9 || c == 0xc4) n = (size_t)rb_be(r, 1);
    else if (c == 0xda || c == 0xc5) n = (size_t)rb_be(r, 2);
    else if (c == 0xdb || c == 0xc6) n = (size_t)rb_be(r, 4);
    else {
        r->bad = 1;
        return b;
    }
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = 1;
        return b;
    }
    b.ptr = (const char *)r->p;
    b.length = n;
    r->p += n;
    return b;
}
