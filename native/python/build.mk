# The Python loader, in two parts (docs in shim.c, loader.c, venv.h):
#   libaioresty.so, libresty_ffi_python.so  the shim hosts load (aioresty's name,
#       lua-resty-ffi's name for its Python loader); no libpython: shared by every
#       interpreter built into $(OUT)
#   libaioresty_python<X.Y>-<key>.so         the loader proper for $(PYTHON), linked
#       (DT_RPATH) to its libpython; <key> identifies its base interpreter, so
#       several interpreters' builds (.venv, .venv-3.13) share one $(OUT).
# -z nodelete: runtime threads run Python forever; the loaders are never unmapped.
PY_DIR := $(HERE)/python
PY_INFO := $(shell $(PYTHON) $(PY_DIR)/pyinfo.py)
ifneq ($(words $(PY_INFO)),8)
$(error cannot query the Python '$(PYTHON)' (native/python/pyinfo.py said: $(PY_INFO)))
endif
PY_XY := $(word 1,$(PY_INFO))
PY_KEY := $(word 2,$(PY_INFO))
PY_HOME := $(word 3,$(PY_INFO))
PY_INC := $(word 4,$(PY_INFO))
PY_LIBDIR := $(word 5,$(PY_INFO))
PY_LDVER := $(word 6,$(PY_INFO))
PY_SONAME := $(word 7,$(PY_INFO))
PY_SHARED := $(word 8,$(PY_INFO))
PY_LOADER := $(OUT)/libaioresty_python$(PY_XY)-$(PY_KEY).so
LIBS += $(OUT)/libaioresty.so $(OUT)/libresty_ffi_python.so $(PY_LOADER)

$(OUT)/libaioresty.so $(OUT)/libresty_ffi_python.so: $(PY_DIR)/shim.c $(PY_DIR)/venv.h $(PY_DIR)/build.mk | $(OUT)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -shared -o $@ $< -Wl,-soname,$(notdir $@) -ldl -lpthread \
	    -Wl,-z,nodelete

$(PY_LOADER): $(PY_DIR)/loader.c $(PY_DIR)/venv.h $(PY_DIR)/build.mk $(PY_DIR)/pyinfo.py | $(OUT)
	@if [ "$(PY_SHARED)" != 1 ]; then \
	  echo "error: $(PYTHON) has no shared libpython (Py_ENABLE_SHARED=0): aioresty embeds" >&2; \
	  echo "       it in proxies, so it needs one (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)" >&2; \
	  exit 1; \
	fi
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -I$(PY_INC) -DAR_PY_HOME='"$(PY_HOME)"' \
	    -DAR_LIBPYTHON='"$(PY_LIBDIR)/$(PY_SONAME)"' -shared -o $@ $< -Wl,-soname,$(notdir $@) \
	    -L$(PY_LIBDIR) -Wl,--disable-new-dtags -Wl,-rpath,$(PY_LIBDIR) -lpython$(PY_LDVER) \
	    -ldl -lpthread -Wl,-z,nodelete
