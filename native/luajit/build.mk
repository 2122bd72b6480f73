# Private LuaJIT for the Envoy "lua" filter mode (native/envoy/luamod.c).
#
# The stock Envoy binary exports its own statically linked LuaJIT (lua_*,
# luaL_*): a module linked against Debian's shared libluajit would silently
# bind to Envoy's copy.  So libaioresty_envoy.so links a private static copy
# built here from Debian's luajit2 source (`make deps` fetches it into
# .deps/luajit2 with `apt-get source luajit2`): position independent, hidden
# visibility, and the module links it with --exclude-libs,ALL -Bsymbolic.
# LUAJIT_ENABLE_LUA52COMPAT as in Envoy's own build (__pairs on userdata).
# Built once into native/build/luajit2 (a copy of the source; not in $(OUT):
# the archive is not installed).
LUAJIT_SRC ?= $(abspath $(HERE)/../.deps/luajit2)
LUAJIT_BUILD := $(HERE)/build/luajit2
LUAJIT_A := $(LUAJIT_BUILD)/src/libluajit.a
LUAJIT_INC := $(LUAJIT_BUILD)/src
LUAJIT_CFLAGS := -fPIC -fvisibility=hidden
LUAJIT_XCFLAGS := -DLUAJIT_ENABLE_LUA52COMPAT

$(LUAJIT_A):
	@if [ ! -f "$(LUAJIT_SRC)/src/lj_api.c" ]; then \
	  echo "error: LuaJIT source not found in $(LUAJIT_SRC)." >&2; \
	  echo "       libaioresty_envoy.so embeds a private LuaJIT built from Debian's luajit2" >&2; \
	  echo "       source: run 'make deps' at the top of the repository (it adds a deb-src" >&2; \
	  echo "       entry and runs 'apt-get source luajit2'), or set LUAJIT_SRC." >&2; \
	  exit 1; \
	fi
	@# built in a private directory, renamed into place at the end: concurrent
	@# builds (several pip installs) never see or share a half-built tree
	set -e; tmp=$(LUAJIT_BUILD).tmp.$$$$; rm -rf $$tmp; mkdir -p $(HERE)/build; \
	cp -a $(LUAJIT_SRC) $$tmp; \
	MAKEFLAGS= $(MAKE) -s -C $$tmp/src -j$$(nproc) libluajit.a BUILDMODE=static \
		CC="$(CC)" CFLAGS="$(LUAJIT_CFLAGS)" XCFLAGS="$(LUAJIT_XCFLAGS)" >/dev/null; \
	if [ -f $(LUAJIT_A) ]; then rm -rf $$tmp; else rm -rf $(LUAJIT_BUILD) && mv $$tmp $(LUAJIT_BUILD); fi

# the module links it (native/envoy/build.mk uses LUAJIT_INC / LUAJIT_A)
$(OUT)/libaioresty_envoy.so: $(LUAJIT_A)
