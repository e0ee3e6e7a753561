# arbiter — plain GNU make.
#
#   make            build build/arbiterd, build/arbiterctl, build/libarbiter.{a,so},
#                   build/libarbiter-intercept.so;
#                   installs nothing: names any missing Debian package and the
#                   command that installs it (make deps)
#   make run        install missing Debian packages, build, run on arbiter.conf
#   make test       install missing packages, build, run every test, then the
#                   same suite again under ASan+UBSan, then the fuzz corpus
#                   replay; WITH_VALGRIND=yes adds the valgrind pass
#   make valgrind   the unit and integration tests with the daemon under valgrind
#   make asan       only the ASan+UBSan pass
#   make coverage   gcov line coverage per file (build-cov)
#   make selftests  the valgrind/ASan verdicts must fail on tests/selftest
#   make fuzz       libFuzzer harnesses for FUZZ_SECONDS each
#   make chaos      the mutual-exclusion checker for DURATION seconds
#   make check-cluster  the etcd client against a real 3-member etcd
#   make bench      benchmarks (never part of make test)
#   make lint       clang-tidy, cppcheck and format-check (FORMAT_CHECK=no skips it)
#   make format     clang-format every C file in place
#   make format-check  fail on any C file clang-format would change
#   make deps       install the missing Debian packages for building
#   make install PREFIX=/usr/local    make clean
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

PKGS := libevent libprotobuf-c msgpack inih
# The etcd client's own libraries. It is not wired into arbiterd yet, so
# only its tests link them and the daemon's image does not need them.
CLUSTER_PKGS := libevent_openssl openssl jansson
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) $(CLUSTER_PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) $(CLUSTER_PKGS) 2>/dev/null) -lm
CLUSTER_LIBS = $(shell pkg-config --libs $(CLUSTER_PKGS) 2>/dev/null)

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
CTL_OBJ := $(BUILD)/client/arbiterctl.o $(BUILD)/client/ctl_run.o \
	$(BUILD)/client/ctl_intercept.o
# The LD_PRELOAD shim of `arbiterctl intercept`: libarbiter inside it, its
# symbols hidden by client/intercept.map (only the wrappers are exported).
INTERCEPT_SO := $(BUILD)/libarbiter-intercept.so
INTERCEPT_OBJ := $(BUILD)/client/intercept.o

UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

BINS := $(BUILD)/arbiterd $(BUILD)/arbiterctl $(BUILD)/libarbiter.a \
	$(BUILD)/libarbiter.so $(INTERCEPT_SO) $(PYGEN)

.PHONY: all deps run test check check-unit check-integration check-deploy check-cluster \
	asan valgrind fuzz bench install clean format format-check lint selftests \
	selftest-valgrind selftest-asan selftest-asan-run coverage coverage-run

all: $(BUILD)/.deps-ok $(BINS)

# A plain build installs nothing: it names what is missing from Debian's
# archive and the command that installs it. make deps, make run and make
# test install it.
$(BUILD)/.deps-ok: scripts/deps.sh
	@sh scripts/deps.sh --check
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

$(INTERCEPT_SO): $(INTERCEPT_OBJ) $(CLIENT_OBJ) $(PROTO_OBJ) client/intercept.map
	$(CC) $(ALL_LDFLAGS) -shared -Wl,--version-script=client/intercept.map \
		-Wl,-z,nodelete -o $@ $(filter %.o,$^) \
		$(shell pkg-config --libs libprotobuf-c) -ldl -lpthread

$(BUILD)/arbiterctl: $(CTL_OBJ) $(BUILD)/libarbiter.a
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(shell pkg-config --libs libprotobuf-c inih)

# Unit tests link the module under test and what it needs, never main.o.
# TEST_DEPS_<name> narrows that list; the default is every module.
TEST_DEPS_lockmgr = $(BUILD)/arbiter/lockmgr.o
TEST_DEPS_lockmgr_cluster = $(BUILD)/arbiter/lockmgr.o
TEST_DEPS_codec = $(PROTO_OBJ)
TEST_DEPS_metrics = $(BUILD)/arbiter/http.o
TEST_DEPS_etcd = $(BUILD)/arbiter/etcd.o
test_deps = $(or $(TEST_DEPS_$(1)),$(DAEMON_OBJ) $(PROTO_OBJ) $(CLIENT_OBJ))

.SECONDEXPANSION:
$(BUILD)/tests/test_%: tests/unit/test_%.c $$(call test_deps,$$*)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -Wmissing-prototypes,$(ALL_CFLAGS)) -Itests/lib -o $@ \
		$(filter %.c %.o,$^) $(PKG_LIBS) $(if $(filter %/etcd.o,$^),$(CLUSTER_LIBS)) \
		-lcriterion -lpthread

run:
	@sh scripts/deps.sh
	@$(MAKE) --no-print-directory all
	$(BUILD)/arbiterd -c $(CONF)

# The sanitizer flags, defined once: the ASan pass, its self-test, the unit
# tests' verdicts and the fuzz harnesses (tests/fuzz/fuzz.mk) all use them.
SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=all
ASAN_VARS = BUILD=build-asan OPT=-O1 SAN="$(SANITIZE)"

# make test records every runner's results under TEST_RESULTS (pytest's
# --junitxml files, criterion's reports, one record per other step) and
# ends with tests/lib/testrun.py's summary: every skipped test with its
# reason, every failure, and one closing line "N passed, 0 failed". Every
# step runs even when an earlier one failed, so the summary is complete.
# Under CI=true a skip that is not on tests/skips.allow fails the run.
TESTRUN := $(PYTHON) tests/lib/testrun.py
ifdef TEST_RESULTS
export TEST_RESULTS
endif
# pytest: skip reasons in the output (-rs), results for the summary.
PYTEST_REPORT = -rs $(if $(TEST_RESULTS),--junitxml=$(TEST_RESULTS)/$(notdir $(BUILD))-$(1).xml)

TEST_STEPS := lint check asan fuzz-replay selftests $(if $(filter yes,$(WITH_VALGRIND)),valgrind)

# The etcd client against a real 3-member etcd on loopback (Debian's
# etcd-server, see scripts/deps.sh test): members on tmpfs, niced.
ETCD_PROBE := $(BUILD)/tests/etcd_probe

$(ETCD_PROBE): tests/cluster/etcd_probe.c $(BUILD)/arbiter/etcd.o
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $(filter %.c %.o,$^) $(PKG_LIBS) $(CLUSTER_LIBS)

check-cluster: all $(ETCD_PROBE)
	@sh scripts/deps.sh test
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -p no:cacheprovider \
		$(call PYTEST_REPORT,cluster) tests/cluster

test:
	@sh scripts/deps.sh test
	@rm -rf $(CURDIR)/build/test-results && mkdir -p $(CURDIR)/build/test-results
	@fail=; for s in $(TEST_STEPS); do \
		case $$s in lint|fuzz-replay) \
			$(TESTRUN) step $$s -- $(MAKE) $$s || fail="$$fail $$s";; \
		*) $(MAKE) $$s || fail="$$fail $$s";; \
		esac; \
	done; \
	[ -z "$$fail" ] || echo "make test: these steps failed:$$fail"; \
	$(TESTRUN) summary --allow tests/skips.allow && [ -z "$$fail" ]
test: export TEST_RESULTS = $(CURDIR)/build/test-results

CHECK_STEPS := check-unit check-integration check-python check-deploy check-cluster \
	chaos-check-unit chaos-selftest chaos-short chaos-cluster-selftest \
	chaos-cluster-short load-short bench-smoke

check: all $(UNIT_BIN)
	@fail=; for s in $(CHECK_STEPS); do \
		case $$s in check-*) $(MAKE) $$s || fail="$$fail $$s";; \
		*) $(TESTRUN) step $(notdir $(BUILD))-$$s -- $(MAKE) $$s || \
			fail="$$fail $$s";; \
		esac; \
	done; \
	[ -z "$$fail" ] || { echo "make check ($(BUILD)): failed:$$fail"; exit 1; }

# Each binary through tests/lib/testrun.py, which fails on the runner's
# status and on any sanitizer report of a criterion worker (LeakSanitizer
# runs when a worker exits, after criterion has counted the test).
check-unit: $(UNIT_BIN)
	@fail=0; for t in $(UNIT_BIN); do \
		$(TESTRUN) unit $$t --jobs 2 || fail=1; done; exit $$fail

check-integration: all
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -p no:cacheprovider \
		$(call PYTEST_REPORT,integration) tests/integration

# The Python client, installed offline into a venv that sees Debian's
# python3-protobuf, then its tests against this build's daemon.
check-python: all
	rm -rf $(BUILD)/venv $(BUILD)/python-build
	$(PYTHON) -m venv --system-site-packages $(BUILD)/venv
	ARBITER_PY_BUILD_BASE=$(abspath $(BUILD))/python-build \
		$(BUILD)/venv/bin/python -m pip install -q --no-index \
		--no-build-isolation ./client/python
	ARBITER_BUILD=$(abspath $(BUILD)) $(BUILD)/venv/bin/python -m pytest -q \
		-p no:cacheprovider $(call PYTEST_REPORT,python) client/python/tests

check-deploy: all
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) -m pytest -q -p no:cacheprovider \
		$(call PYTEST_REPORT,deploy) tests/deploy

# The self-tests prove the chaos checkers against planted defects and
# check-unit of the checker is pure Python: under ASan they would only prove
# the same again, at a minute and a half of the suite's time.
ASAN_SKIP := chaos-check-unit chaos-selftest chaos-cluster-selftest
asan:
	$(MAKE) check $(ASAN_VARS) \
		CHECK_STEPS="$(filter-out $(ASAN_SKIP),$(CHECK_STEPS))"

# The daemon runs under valgrind in the integration tests (ARBITERD_WRAPPER;
# the harness fails a test on any valgrind report in the daemon's output).
# Criterion re-executes itself for each test and ignores its workers' exit
# codes, so the unit tests run with --trace-children, one log per process,
# and tests/lib/testrun.py fails the binary on any log whose ERROR SUMMARY
# is not 0 (leaks of the kinds definite and indirect count as errors).
VALGRIND := valgrind --quiet --error-exitcode=99 --leak-check=full \
	--show-leak-kinds=definite,indirect --errors-for-leak-kinds=definite,indirect

valgrind: all $(UNIT_BIN)
	@fail=0; for t in $(UNIT_BIN); do \
		$(TESTRUN) unit --valgrind $$t --jobs 1 || fail=1; done; exit $$fail
	ARBITER_BUILD=$(abspath $(BUILD)) ARBITERD_WRAPPER="$(VALGRIND)" \
		$(PYTHON) -m pytest -q -p no:cacheprovider \
		$(call PYTEST_REPORT,valgrind-integration) tests/integration

# Self-tests of the checkers: tests/selftest/broken.c holds a criterion test
# with an out-of-bounds read and one with a leak. It is never built by
# `all` or run by check-unit. `make selftest-valgrind` and `make
# selftest-asan` run it through the same verdict as the unit tests and MUST
# FAIL; SELFTEST_ARGS=--filter=selftest/NAME runs one test alone. `make
# selftests` (part of make test) runs each defect alone under each checker
# and passes only when every run failed with the report that names it.
SELFTEST_BIN := $(BUILD)/selftest/broken

$(SELFTEST_BIN): tests/selftest/broken.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -g -O0 $(SAN) -o $@ $< -lcriterion

selftest-valgrind: $(SELFTEST_BIN)
	$(TESTRUN) unit --valgrind $(SELFTEST_BIN) --jobs 1 $(SELFTEST_ARGS)

selftest-asan:
	$(MAKE) selftest-asan-run $(ASAN_VARS)

selftest-asan-run: $(SELFTEST_BIN)
	$(TESTRUN) unit $(SELFTEST_BIN) --jobs 1 $(SELFTEST_ARGS)

SELFTEST_LEAK := SELFTEST_ARGS=--filter=selftest/leaks_a_heap_block
SELFTEST_OOB := SELFTEST_ARGS=--filter=selftest/reads_past_the_end_of_a_heap_block

selftests:
	@fail=0; \
	$(TESTRUN) expect-fail valgrind-sees-a-leak-in-a-criterion-worker \
		--says "definitely lost" -- $(MAKE) selftest-valgrind $(SELFTEST_LEAK) || fail=1; \
	$(TESTRUN) expect-fail valgrind-sees-an-out-of-bounds-read \
		--says "Invalid read" -- $(MAKE) selftest-valgrind $(SELFTEST_OOB) || fail=1; \
	$(TESTRUN) expect-fail lsan-sees-a-leak-in-a-criterion-worker \
		--says "ERROR: LeakSanitizer" -- $(MAKE) selftest-asan $(SELFTEST_LEAK) || fail=1; \
	$(TESTRUN) expect-fail asan-sees-an-out-of-bounds-read \
		--says "heap-buffer-overflow" -- $(MAKE) selftest-asan $(SELFTEST_OOB) || fail=1; \
	exit $$fail

# Line coverage: a --coverage build in build-cov, the unit, integration,
# Python client and deployment tests against it, then one line per daemon, client and
# protocol file (gcov -n through tests/lib/coverage.py; COVERAGE_MIN=85
# fails when a daemon file is below 85 %).
COV_VARS = BUILD=build-cov OPT=-O0 SAN=--coverage
COVERAGE_MIN ?=

coverage:
	$(MAKE) coverage-run $(COV_VARS)

coverage-run: all $(UNIT_BIN)
	@find $(BUILD) -name '*.gcda' -delete
	@for s in check-unit check-integration check-python check-deploy \
		check-cluster; do \
		$(MAKE) $$s || echo "coverage: $$s failed; figures below are partial"; \
	done
	$(PYTHON) tests/lib/coverage.py $(BUILD) $(if $(COVERAGE_MIN),--min $(COVERAGE_MIN)) \
		$(wildcard arbiter/*.c) $(wildcard client/*.c) $(PROTO_SRC)

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib \
		$(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/share/arbiter
	install -m 755 $(BUILD)/arbiterd $(BUILD)/arbiterctl $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BUILD)/libarbiter.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libarbiter.so $(DESTDIR)$(PREFIX)/lib/libarbiter.so.0
	install -m 755 $(INTERCEPT_SO) $(DESTDIR)$(PREFIX)/lib/
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

# The tree is formatted: lint fails on any file clang-format would change.
FORMAT_CHECK ?= yes

lint: $(GEN) $(if $(filter yes,$(FORMAT_CHECK)),format-check)
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

FORMAT_SRC = $(wildcard arbiter/*.[ch] proto/*.[ch] client/*.[ch] tests/*/*.[ch])

format:
	clang-format -i $(FORMAT_SRC)

# Names every file clang-format would change, with the lines; changes
# nothing.
format-check:
	clang-format --dry-run --Werror $(FORMAT_SRC)

clean:
	rm -rf build build-asan build-cov build-fuzz build-fuzz-replay build-fuzzcov \
		build-norevoke build-asan-norevoke

include tests/chaos/chaos.mk
include tests/bench/bench.mk
include tests/fuzz/fuzz.mk

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
