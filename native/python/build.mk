# The Python loader, in two parts (docs in shim.c, loader.c, venv.h):
#   libaioresty.so, libresty_ffi_python.so  the shim hosts load (aioresty's name,
#       lua-resty-ffi's name for its Python loader); no libpython: shared by every
#       Python X.Y built into $(OUT)
#   libaioresty_python<X.Y>.so               the loader proper for $(PYTHON)'s X.Y,
#       built against its headers and linked to no libpython: the shim loads the
#       venv's own libpython at run time, so the library works with any CPython
#       X.Y (a wheel's, portable) and .venv, .venv-3.13 share one $(OUT).
# -z nodelete: runtime threads run Python forever; the loaders are never unmapped.
PY_DIR := $(HERE)/python
PY_INFO := $(shell $(PYTHON) $(PY_DIR)/pyinfo.py)
ifneq ($(words $(PY_INFO)),2)
$(error cannot query the Python '$(PYTHON)' (native/python/pyinfo.py said: $(PY_INFO)))
endif
PY_XY := $(word 1,$(PY_INFO))
PY_INC := $(word 2,$(PY_INFO))
PY_LOADER := $(OUT)/libaioresty_python$(PY_XY).so
LIBS += $(OUT)/libaioresty.so $(OUT)/libresty_ffi_python.so $(PY_LOADER)

$(OUT)/libaioresty.so $(OUT)/libresty_ffi_python.so: $(PY_DIR)/shim.c $(PY_DIR)/venv.h $(PY_DIR)/build.mk | $(OUT)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -shared -o $@ $< -Wl,-soname,$(notdir $@) -ldl -lpthread \
	    -Wl,-z,nodelete

# Py* symbols stay undefined (resolved against the libpython the shim loaded RTLD_GLOBAL)
$(PY_LOADER): $(PY_DIR)/loader.c $(PY_DIR)/venv.h $(PY_DIR)/build.mk $(PY_DIR)/pyinfo.py | $(OUT)
	@if [ ! -f "$(PY_INC)/Python.h" ]; then \
	  echo "error: no $(PY_INC)/Python.h: install the headers of $(PYTHON) (Debian: python3-dev)" >&2; \
	  exit 1; \
	fi
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -I$(PY_INC) -shared -o $@ $< -Wl,-soname,$(notdir $@) \
	    -ldl -lpthread -Wl,-z,nodelete
