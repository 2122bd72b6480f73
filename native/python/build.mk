# The Python loader, built under two names: libaioresty.so (aioresty's name)
# and libresty_ffi_python.so (lua-resty-ffi's name for its Python loader).
# -z nodelete: runtime threads run Python forever; the loader is never unmapped.
PY_DIR := $(HERE)/python
PY_INC := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_paths()['include'])")
PY_LIBDIR := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))")
PY_LDVER := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('LDVERSION'))")
LIBS += $(OUT)/libaioresty.so $(OUT)/libresty_ffi_python.so

$(OUT)/libaioresty.so $(OUT)/libresty_ffi_python.so: $(PY_DIR)/loader.c $(PY_DIR)/build.mk | $(OUT)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -I$(PY_INC) -shared -o $@ $< -Wl,-soname,$(notdir $@) \
	    -L$(PY_LIBDIR) -Wl,-rpath,$(PY_LIBDIR) -lpython$(PY_LDVER) -ldl -lpthread -Wl,-z,nodelete
