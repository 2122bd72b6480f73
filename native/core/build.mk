# libaioresty_core.so: task queue, registry, lua-resty-ffi runtime ABI.
# -z nodelete: runtime threads run its code until the process exits, whoever
# dlclose'd it (a Lua VM closing at an nginx worker's exit does).
CORE_DIR := $(HERE)/core
CORE_SRC := $(CORE_DIR)/task_queue.c $(CORE_DIR)/registry.c $(CORE_DIR)/log.c $(CORE_DIR)/metrics.c
CORE_HDR := $(CORE_DIR)/aioresty_core.h $(CORE_DIR)/core_internal.h
LIBS += $(OUT)/libaioresty_core.so

$(OUT)/libaioresty_core.so: $(CORE_SRC) $(CORE_HDR) $(CORE_DIR)/build.mk | $(OUT)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -shared -o $@ $(CORE_SRC) -Wl,-soname,libaioresty_core.so \
	    -Wl,-z,nodelete -ldl -lpthread -lm
