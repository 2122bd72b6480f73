# native/nginx: the per-worker waker of the nginx-lua adapter.
# $(OUT)/libaioresty_nginx.so, linked against $(OUT)/libaioresty_core.so
# (found next to it at run time through rpath $ORIGIN).
NGINX_DIR := $(HERE)/nginx
NGINX_LIB := $(OUT)/libaioresty_nginx.so

$(NGINX_LIB): $(NGINX_DIR)/aioresty_nginx.c $(NGINX_DIR)/aioresty_nginx.h \
              $(HERE)/core/aioresty_core.h $(OUT)/libaioresty_core.so | $(OUT)
	$(CC) $(CFLAGS_COMMON) -I$(HERE)/core -shared -o $@ $(NGINX_DIR)/aioresty_nginx.c \
	    -L$(OUT) -laioresty_core -Wl,-rpath,'$$ORIGIN' -Wl,--no-undefined -pthread

LIBS += $(NGINX_LIB)
