# libffi_c_echo.so: a runtime in C using only the lua-resty-ffi ABI (tests, benchmarks).
LIBS += $(OUT)/libffi_c_echo.so

$(OUT)/libffi_c_echo.so: $(HERE)/runtimes/c_echo.c $(HERE)/runtimes/build.mk | $(OUT)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -shared -o $@ $< -lpthread -Wl,--allow-shlib-undefined
