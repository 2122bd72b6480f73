/*
 * timeouts.h - the per-call timeouts of libaioresty_envoy.so: one
 * process-wide thread with a deadline-sorted list, shared by the modes that
 * arm timeouts on a stream (lua/: `runtime:method()` calls; python/: the
 * host-side bound of a hook phase), armed through ar_call_post (stream.h).
 *
 * ar_timeout_add(l, ev, ms) commits event `ev` on the stream's link
 * (stream.h) after `ms`, unless ar_timeout_cancel(l, ev) came first.
 * Ownership: an armed entry is malloc'ed here and holds its own link
 * reference (taken by ar_timeout_add).  Exactly one side frees both: the
 * thread after it fired (unref after the commit), or ar_timeout_cancel when
 * it finds the entry still armed.  A commit on a detached link is dropped by
 * the link, so a timeout never reaches a destroyed filter; the mode still
 * checks in `scheduled` that `ev` is the call it is waiting for (a timeout
 * can race with the answer).
 *
 * The thread starts on the first ar_timeout_add, with every signal blocked
 * (signals belong to Envoy), detached; it lives as long as the process.
 */
#ifndef AIORESTY_TIMEOUTS_H
#define AIORESTY_TIMEOUTS_H

#include <stdint.h>

#include "stream.h"

/* The bounded default of every runtime call of the module - a Lua call that
 * passes no timeout (aioresty_lua_mode.call with 0), a Python filter phase
 * with `timeout=0` - is the core's AR_DEFAULT_TIMEOUT_MS (aioresty_core.h
 * "Limits"), which resty_ffi reads too. */

/* Any thread.  0 when armed (a new link reference is held), -1 when it could
 * not be armed (out of memory, no thread): nothing is held then. */
int ar_timeout_add(ar_link *l, uint64_t ev, double ms);

/* Any thread.  Disarms (l, ev) if it has not fired yet (then frees the entry
 * and drops its link reference); a no-op otherwise. */
void ar_timeout_cancel(ar_link *l, uint64_t ev);

#endif
