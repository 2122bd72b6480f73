# libaioresty_envoy.so: the Envoy dynamic module (bridge upstream filter).
# Links against libaioresty_core.so found next to it ($ORIGIN), so Envoy,
# the Lua filter's ffi.load of the core and the runtimes share one core.
ENVOY_DIR := $(HERE)/envoy
LIBS += $(OUT)/libaioresty_envoy.so

$(OUT)/libaioresty_envoy.so: $(ENVOY_DIR)/aioresty_envoy.c $(ENVOY_DIR)/envoy_abi.h $(HERE)/core/aioresty_core.h $(OUT)/libaioresty_core.so | $(OUT)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -I$(HERE)/core -shared -o $@ $(ENVOY_DIR)/aioresty_envoy.c \
		-L$(OUT) -laioresty_core -Wl,-rpath,'$$ORIGIN' -Wl,--allow-shlib-undefined -lpthread
