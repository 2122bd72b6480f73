# libaioresty_envoy.so: the Envoy dynamic module, one .so.  module.c (the
# hall) holds the hooks and dispatches to the filter modes (envoy_mode.h):
# bridge.c, lua/ and python/ (the wings), all built on the shared stream
# layer (stream.h: stream_link.c, stream.c, timeouts.c), the one
# filter_config syntax (config_json.c) and the metrics exporter (metrics.c).  Links against libaioresty_core.so
# found next to it ($ORIGIN), so Envoy, the Lua filter's ffi.load of the
# core and the runtimes share one core.  -z nodelete: runtime threads and the
# module's own threads run its code until the process exits, so a config
# without do_not_close (Envoy dlclose's the module with its last config)
# cannot unmap it under them.
ENVOY_DIR := $(HERE)/envoy
ENVOY_SRC := $(addprefix $(ENVOY_DIR)/, \
	module.c metrics.c metrics_mode.c stream_link.c stream.c timeouts.c config_json.c bridge.c \
	lua/driver.c lua/handle.c lua/objects.c lua/config.c \
	python/hooks.c python/config.c python/msgpack.c)
LIBS += $(OUT)/libaioresty_envoy.so

$(OUT)/libaioresty_envoy.so: $(ENVOY_SRC) $(wildcard $(ENVOY_DIR)/*.h $(ENVOY_DIR)/*/*.h) $(ENVOY_DIR)/build.mk $(HERE)/core/aioresty_core.h $(OUT)/libaioresty_core.so | $(OUT)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -I$(HERE)/core -I$(ENVOY_DIR) -I$(LUAJIT_INC) -shared -o $@ $(ENVOY_SRC) \
		-L$(OUT) -laioresty_core -Wl,-rpath,'$$ORIGIN' -Wl,--allow-shlib-undefined -lpthread \
		$(LUAJIT_A) -Wl,--exclude-libs,ALL -Wl,-Bsymbolic -Wl,-z,nodelete -lm -ldl
