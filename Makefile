# arbiter — plain GNU make.
#
#   make            build build/arbiterd, build/arbiterctl, build/libarbiter.{a,so}
#   make run        install missing Debian packages, build, run on arbiter.conf
#   make test       install missing packages, build, run every test, then the
#                   same suite again under ASan+UBSan, then the fuzz corpus
#                   replay; WITH_VALGRIND=yes adds the valgrind pass
#   make valgrind   the unit and integration tests with the daemon under valgrind
#   make asan       only the ASan+UBSan pass
#   make fuzz       libFuzzer harnesses for FUZZ_SECONDS each
#   make chaos      the mutual-exclusion checker for DURATION seconds
#   make check-cluster  the etcd client against a real 3-member etcd
#   make bench      benchmarks (never part of make test)
#   make install PREFIX=/usr/local    make clean    make format
#
# BUILD selects the output folder, so sanitizer builds never mix with the
# normal one.

BUILD ?= build
PREFIX ?= /usr/local
CC ?= cc
PYTHON ?= /usr/bin/python3
CONF ?= arbiter.conf
SAN ?=
VERSION := 0.1.0

PKGS := libevent libevent_openssl openssl jansson libprotobuf-c msgpack inih
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm

OPT ?= -O2
CFLAGS ?= $(OPT) -g
WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	-Wno-missing-field-initializers
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE -DARBITER_VERSION='"$(VERSION)"' $(WARN) \
	$(CFLAGS) $(SAN) -fPIC -MMD -MP -I$(BUILD)/gen -Iproto -Iarbiter -Iclient \
	$(PKG_CFLAGS)
LDFLAGS ?=
ALL_LDFLAGS = $(LDFLAGS) $(SAN)

GEN := $(BUILD)/gen/arbiter.pb-c.c $(BUILD)/gen/arbiter.pb-c.h
PYGEN := $(BUILD)/gen/python/arbiter_pb2.py

PROTO_SRC := proto/frame.c proto/codec.c
PROTO_OBJ := $(BUILD)/gen/arbiter.pb-c.o $(PROTO_SRC:%.c=$(BUILD)/%.o)

DAEMON_SRC := $(filter-out arbiter/main.c,$(wildcard arbiter/*.c))
DAEMON_OBJ := $(DAEMON_SRC:%.c=$(BUILD)/%.o)
MAIN_OBJ := $(BUILD)/arbiter/main.o

CLIENT_OBJ := $(BUILD)/client/client.o
CTL_OBJ := $(BUILD)/client/arbiterctl.o $(BUILD)/client/ctl_run.o

UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

BINS := $(BUILD)/arbiterd $(BUILD)/arbiterctl $(BUILD)/libarbiter.a \
	$(BUILD)/libarbiter.so $(PYGEN)

.PHONY: all deps run test check check-unit check-integration check-deploy check-cluster \
	asan valgrind fuzz bench install clean format lint

all: $(BUILD)/.deps-ok $(BINS)

# Installs what is missing from Debian's archive (or says what to run).
$(BUILD)/.deps-ok: scripts/deps.sh
	@sh scripts/deps.sh
	@mkdir -p $(BUILD) && touch $@

deps:
	@sh scripts/deps.sh

$(GEN) &: proto/arbiter.proto | $(BUILD)/.deps-ok
	@mkdir -p $(BUILD)/gen
	protoc-c --proto_path=proto --c_out=$(BUILD)/gen proto/arbiter.proto

$(PYGEN): proto/arbiter.proto | $(BUILD)/.deps-ok
	@mkdir -p $(BUILD)/gen/python
	protoc --proto_path=proto --python_out=$(BUILD)/gen/python proto/arbiter.proto

$(BUILD)/gen/arbiter.pb-c.o: $(BUILD)/gen/arbiter.pb-c.c
	$(CC) $(filter-out -Wshadow -Wmissing-prototypes,$(ALL_CFLAGS)) -c $< -o $@

$(BUILD)/%.o: %.c $(GEN)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/arbiterd: $(MAIN_OBJ) $(DAEMON_OBJ) $(PROTO_OBJ)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS) -lpthread

$(BUILD)/libarbiter.a: $(CLIENT_OBJ) $(PROTO_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/libarbiter.so: $(CLIENT_OBJ) $(PROTO_OBJ)
	$(CC) $(ALL_LDFLAGS) -shared -Wl,-soname,libarbiter.so.0 -o $@ $^ \
		$(shell pkg-config --libs libprotobuf-c)

$(BUILD)/arbiterctl: $(CTL_OBJ) $(BUILD)/libarbiter.a
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(shell pkg-config --libs libprotobuf-c inih)

# Unit tests link the module under test and what it needs, never main.o.
# TEST_DEPS_<name> narrows that list; the default is every module.
TEST_DEPS_lockmgr = $(BUILD)/arbiter/lockmgr.o
TEST_DEPS_codec = $(PROTO_OBJ)
TEST_DEPS_metrics = $(BUILD)/arbiter/http.o
test_deps = $(or $(TEST_DEPS_$(1)),$(DAEMON_OBJ) $(PROTO_OBJ) $(CLIENT_OBJ))

.SECONDEXPANSION:
$(BUILD)/tests/test_%: tests/unit/test_%.c $$(call test_deps,$$*)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -Wmissing-prototypes,$(ALL_CFLAGS)) -Itests/lib -o $@ \
		$(filter %.c %.o,$^) $(PKG_LIBS) -lcriterion -lpthread

run: all
	$(BUILD)/arbiterd -c $(CONF)

# The etcd client against a real 3-member etcd on loopback (Debian's
# etcd-server, see scripts/deps.sh test): members on tmpfs, niced.
ETCD_PROBE := $(BUILD)/tests/etcd_probe

$(ETCD_PROBE): tests/cluster/etcd_probe.c $(BUILD)/arbiter/etcd.o
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(PKG_LIBS)

check-cluster: all $(ETCD_PROBE)
	@sh scripts/deps.sh test
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -p no:cacheprovider tests/cluster

test:
	@sh scripts/deps.sh test
	$(MAKE) lint
	$(MAKE) check
	$(MAKE) check BUILD=build-asan OPT=-O1 \
		SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
	$(MAKE) fuzz-replay
ifeq ($(WITH_VALGRIND),yes)
	$(MAKE) valgrind
endif

check: all $(UNIT_BIN)
	$(MAKE) check-unit check-integration check-python check-deploy \
		chaos-selftest chaos-short load-short bench-smoke

check-unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t --jobs 2; done

check-integration: all
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -p no:cacheprovider tests/integration

# The Python client, installed offline into a venv that sees Debian's
# python3-protobuf, then its tests against this build's daemon.
check-python: all
	rm -rf $(BUILD)/venv $(BUILD)/python-build
	$(PYTHON) -m venv --system-site-packages $(BUILD)/venv
	ARBITER_PY_BUILD_BASE=$(abspath $(BUILD))/python-build \
		$(BUILD)/venv/bin/python -m pip install -q --no-index \
		--no-build-isolation ./client/python
	ARBITER_BUILD=$(abspath $(BUILD)) $(BUILD)/venv/bin/python -m pytest -q \
		-p no:cacheprovider client/python/tests

check-deploy: all
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -p no:cacheprovider tests/deploy

asan:
	$(MAKE) check BUILD=build-asan OPT=-O1 \
		SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"

# The daemon runs under valgrind in the integration tests (ARBITERD_WRAPPER;
# the harness fails a test on any valgrind report in the daemon's output).
# Criterion re-executes itself for each test and ignores its workers' exit
# codes, so the unit tests run with --trace-children and their logs are
# scanned for errors and leaks.
VALGRIND := valgrind --quiet --error-exitcode=99 --leak-check=full \
	--show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect

valgrind: all $(UNIT_BIN)
	@rm -rf $(BUILD)/valgrind && mkdir -p $(BUILD)/valgrind
	@set -e; for t in $(UNIT_BIN); do echo "== $$t (valgrind)"; \
		$(VALGRIND) --trace-children=yes \
			--log-file=$(BUILD)/valgrind/%p.log $$t --jobs 1; done
	@if grep -lE "ERROR SUMMARY: [1-9]|(definitely|indirectly) lost: [1-9]" \
		$(BUILD)/valgrind/*.log; then \
		echo "valgrind found errors in the unit tests: see the logs above"; \
		exit 1; fi
	ARBITER_BUILD=$(abspath $(BUILD)) ARBITERD_WRAPPER="$(VALGRIND)" \
		$(PYTHON) -m pytest -q -p no:cacheprovider tests/integration

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib \
		$(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/share/arbiter
	install -m 755 $(BUILD)/arbiterd $(BUILD)/arbiterctl $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BUILD)/libarbiter.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libarbiter.so $(DESTDIR)$(PREFIX)/lib/libarbiter.so.0
	ln -sf libarbiter.so.0 $(DESTDIR)$(PREFIX)/lib/libarbiter.so
	install -m 644 client/arbiter.h $(DESTDIR)$(PREFIX)/include/
	install -m 644 arbiter.conf proto/arbiter.proto $(DESTDIR)$(PREFIX)/share/arbiter/

# Static analysis for what the analyzers flag as bugs. False positives are
# marked in the code with NOLINT and a reason. The va_list and sizeof(A*)
# checks are off: clang 14's va_list check misfires on every vsnprintf
# after va_start, and sizeof(*pointer_array) is how arrays of pointers are
# sized.
TIDY_CHECKS := -*,clang-analyzer-*,bugprone-*,-bugprone-easily-swappable-parameters,\
-bugprone-reserved-identifier,-bugprone-narrowing-conversions,\
-bugprone-assignment-in-if-condition,-bugprone-macro-parentheses,\
-bugprone-sizeof-expression,-clang-analyzer-valist.Uninitialized,\
-clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling,\
-clang-analyzer-optin.performance.Padding

lint: $(GEN)
	clang-tidy --quiet --warnings-as-errors='*' -checks='$(TIDY_CHECKS)' \
		arbiter/*.c proto/*.c client/*.c -- -std=c11 -D_GNU_SOURCE \
		-DARBITER_VERSION='"$(VERSION)"' -I$(BUILD)/gen -Iproto -Iarbiter -Iclient
	cppcheck --quiet --error-exitcode=1 --enable=warning,portability --std=c11 \
		-D_GNU_SOURCE -D__x86_64__ -DARBITER_VERSION='"$(VERSION)"' \
		-I$(BUILD)/gen -Iproto -Iarbiter -Iclient -I/usr/include \
		-I/usr/include/x86_64-linux-gnu -I/usr/lib/gcc/x86_64-linux-gnu/12/include \
		--suppress=missingIncludeSystem --suppress='*:/usr/*' \
		--suppress=cppcheckError:arbiter/stats.c \
		arbiter/*.c proto/*.c client/*.c

format:
	clang-format -i arbiter/*.[ch] proto/*.[ch] client/*.[ch] tests/unit/*.c

clean:
	rm -rf build build-asan build-fuzz build-fuzz-replay build-fuzzcov

include tests/chaos/chaos.mk
include tests/bench/bench.mk
include tests/fuzz/fuzz.mk

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
