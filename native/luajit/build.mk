# Private LuaJIT for the Envoy "lua" filter mode (native/envoy/lua/).
#
# The stock Envoy binary exports its own statically linked LuaJIT (lua_*,
# luaL_*): a module linked against a system libluajit would silently bind to
# Envoy's copy.  So libaioresty_envoy.so links a private static copy built
# here: position independent, hidden visibility, and the module links it with
# --exclude-libs,ALL -Bsymbolic.  LUAJIT_ENABLE_LUA52COMPAT as in Envoy's own
# build (__pairs on userdata).  The source: $(LUAJIT_SRC) if given, else what
# native/luajit/source.py finds or fetches (an sdist's third_party/luajit, a
# cached copy, else LuaJIT 2.1 from lupa's PyPI sdist; docs/install.md).
# Built once into native/build/luajit21 (a copy of the source; not in $(OUT):
# the archive is not installed).
LUAJIT_BUILD := $(HERE)/build/luajit21
LUAJIT_A := $(LUAJIT_BUILD)/src/libluajit.a
LUAJIT_INC := $(LUAJIT_BUILD)/src
LUAJIT_CFLAGS := -fPIC -fvisibility=hidden
LUAJIT_XCFLAGS := -DLUAJIT_ENABLE_LUA52COMPAT

$(LUAJIT_A):
	@# built in a private directory, renamed into place at the end: concurrent
	@# builds (several pip installs) never see or share a half-built tree
	@set -e; src="$(LUAJIT_SRC)"; \
	if [ -z "$$src" ]; then src=$$(LUAJIT_SRC= $(PYTHON) $(HERE)/luajit/source.py); fi; \
	tmp=$(LUAJIT_BUILD).tmp.$$$$; rm -rf $$tmp; mkdir -p $(HERE)/build; \
	echo "building LuaJIT from $$src"; \
	cp -a "$$src" $$tmp; \
	MAKEFLAGS= $(MAKE) -s -C $$tmp/src -j$$(nproc) libluajit.a BUILDMODE=static \
		CC="$(CC)" CFLAGS="$(LUAJIT_CFLAGS)" XCFLAGS="$(LUAJIT_XCFLAGS)" >/dev/null; \
	if [ -f $(LUAJIT_A) ]; then rm -rf $$tmp; else rm -rf $(LUAJIT_BUILD) && mv $$tmp $(LUAJIT_BUILD); fi

# the module links it (native/envoy/build.mk uses LUAJIT_INC / LUAJIT_A)
$(OUT)/libaioresty_envoy.so: $(LUAJIT_A)
