# ar_testhost: the proxy stand-in used by the tests and `make bench-core`.
# Not part of the default build (not installed): `make -C native testhost`.
TESTHOST := $(OUT)/ar_testhost

testhost: $(TESTHOST)

$(TESTHOST): $(HERE)/testhost/testhost.c $(HERE)/core/aioresty_core.h | $(OUT)
	$(CC) $(CFLAGS_COMMON) $(CFLAGS) -fPIE -pie -I$(HERE)/core -o $@ $< -ldl -lpthread

.PHONY: testhost
