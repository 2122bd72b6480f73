/*
 * log.c - the core's one log line writer (ar_log) and the hook a host uses
 * to route it into its own logger (ar_set_logger).  Default: stderr, which
 * Envoy and nginx put into their logs.  Any thread.
 */
#include <stdatomic.h>
#include <stdio.h>

#include "aioresty_core.h"

static _Atomic(ar_logger_fn) g_logger;
static _Atomic(ar_log_enabled_fn) g_enabled;

void ar_set_logger(ar_logger_fn fn) { atomic_store(&g_logger, fn); }
void ar_set_log_enabled(ar_log_enabled_fn fn) { atomic_store(&g_enabled, fn); }

int ar_log_enabled(int level)
{
    ar_log_enabled_fn fn = atomic_load(&g_enabled);
    return fn ? fn(level) : 1;
}

void ar_log(int level, const char *line)
{
    static const char *const names[] = {"debug", "info", "warning", "error"};
    ar_logger_fn fn = atomic_load(&g_logger);
    if (fn) {
        fn(level, line);
        return;
    }
    if (level < 0) level = 0;
    if (level > 3) level = 3;
    fprintf(stderr, "[aioresty] [%s] %s\n", names[level], line);
}
