# libaioresty_envoy.so: the Envoy dynamic module.  module.c holds the hooks
# and dispatches to one file per filter mode (envoy_mode.h).  Links against
# libaioresty_core.so found next to it ($ORIGIN), so Envoy, the Lua filter's
# ffi.load of the core and the runtimes share one core.
ENVOY_DIR := $(HERE)/envoy
ENVOY_SRC := $(ENVOY_DIR)/module.c $(ENVOY_DIR)/stream_link.c $(ENVOY_DIR)/timeouts.c $(ENVOY_DIR)/bridge.c $(ENVOY_DIR)/pyfilter.c $(ENVOY_DIR)/luamod.c
LIBS += $(OUT)/libaioresty_envoy.so

$(OUT)/libaioresty_envoy.so: $(ENVOY_SRC) $(wildcard $(ENVOY_DIR)/*.h) $(ENVOY_DIR)/build.mk $(HERE)/core/aioresty_core.h $(OUT)/libaioresty_core.so | $(OUT)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -I$(HERE)/core -I$(LUAJIT_INC) -shared -o $@ $(ENVOY_SRC) \
		-L$(OUT) -laioresty_core -Wl,-rpath,'$$ORIGIN' -Wl,--allow-shlib-undefined -lpthread \
		$(LUAJIT_A) -Wl,--exclude-libs,ALL -Wl,-Bsymbolic -lm -ldl
