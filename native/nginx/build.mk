# native/nginx: the per-worker waker of the nginx-lua adapter.
# $(OUT)/libaioresty_nginx.so, linked against $(OUT)/libaioresty_core.so
# (found next to it at run time through rpath $ORIGIN).
# -z nodelete: the Lua VM that ffi.load'ed it is closed (and its libraries
# dlclose'd) before the worker's exit() stops the runtimes, whose threads
# still call in here (the log writer, the completion sink) until then; an
# unmapped library there was a SIGSEGV at every exit of a worker whose app
# logs in the background (tests/nginx/test_exit.py).
NGINX_DIR := $(HERE)/nginx
NGINX_LIB := $(OUT)/libaioresty_nginx.so

NGINX_SRC := $(NGINX_DIR)/aioresty_nginx.c $(NGINX_DIR)/parked_calls.c

$(NGINX_LIB): $(NGINX_SRC) $(NGINX_DIR)/aioresty_nginx.h $(NGINX_DIR)/parked_calls.h \
              $(HERE)/core/aioresty_core.h $(NGINX_DIR)/build.mk $(OUT)/libaioresty_core.so | $(OUT)
	$(CC) $(CFLAGS_COMMON) -I$(HERE)/core -shared -o $@ $(NGINX_SRC) \
	    -L$(OUT) -laioresty_core -Wl,-rpath,'$$ORIGIN' -Wl,--no-undefined -Wl,-z,nodelete -pthread

LIBS += $(NGINX_LIB)
