# Fuzzing, included by the top Makefile (`include tests/fuzz/fuzz.mk`).
# Uses its BUILD, CC, ALL_CFLAGS, ALL_LDFLAGS, SANITIZE, DAEMON_OBJ,
# PROTO_OBJ and PKG_LIBS; objects land in $(BUILD)/tests/fuzz/ through the
# top pattern rule.
#
#   make fuzz                   build the libFuzzer harnesses with clang into
#                               build-fuzz, run each for FUZZ_SECONDS (60)
#   make fuzz FUZZ_SECONDS=600 FUZZ_JOBS=2 FUZZ_TARGETS=wire
#   make fuzz-replay            the committed corpus once through every
#                               harness; fails on any crash, leak or abort
#   make fuzz-corpus            regenerate tests/fuzz/corpus/ from
#                               tests/fuzz/make_corpus.py
#   make fuzz-coverage          line coverage of the daemon's sources by the
#                               seeds and everything found since (clang
#                               source-based coverage, into build-fuzzcov)
#
# The daemon logs only errors while fuzzed; to fuzz its log lines too:
#   ARBITER_FUZZ_LOG=debug make fuzz FUZZ_FLAGS=-close_fd_mask=2
#
# A target's extra libFuzzer flags may live in tests/fuzz/<target>.flags, its
# dictionary in tests/fuzz/<target>.dict.
#
# Harnesses (tests/fuzz/fuzz_<target>.c): wire (frames + dispatcher on a real
# connection), admin (text protocol), config (config_load), state
# (state_decode), http (the metrics port's request head parser), metrics
# (that port end to end, over TCP on 127.0.0.1). New inputs found while
# fuzzing go to tests/fuzz/corpus-new/<target>/ (not committed); crashes to
# build-fuzz/fuzz/crash-<target>-*. Reproduce one with
#   build-fuzz/fuzz/fuzz-<target> FILE
#
# fuzz-replay uses libFuzzer when $(FUZZ_CC) can link it, else a plain main
# (tests/fuzz/replay.c) built with gcc and ASan+UBSan into build-fuzz-replay.
#
# It also works without editing the top Makefile:
#   make -f Makefile -f tests/fuzz/fuzz.mk fuzz-replay

# Loaded once, whether included by the top Makefile, given with -f, or both.
ifndef FUZZ_MK
FUZZ_MK := $(lastword $(MAKEFILE_LIST))
FUZZ_TOP := $(firstword $(MAKEFILE_LIST))
FUZZ_MAKE = $(MAKE) --no-print-directory -f $(FUZZ_TOP) -f $(FUZZ_MK)

FUZZ_TARGETS ?= wire admin config state http metrics
FUZZ_SECONDS ?= 60
FUZZ_JOBS ?= 1
FUZZ_CC ?= clang
FUZZ_FLAGS ?=
FUZZ_MAIN ?= libfuzzer

# The sub-makes that build the harnesses: one folder per toolchain, so
# nothing mixes with the normal or the ASan build.
FUZZ_LF_VARS = BUILD=build-fuzz CC=$(FUZZ_CC) OPT=-O1 FUZZ_MAIN=libfuzzer \
	SAN="-fsanitize=fuzzer-no-link $(SANITIZE)"
FUZZ_RP_VARS = BUILD=build-fuzz-replay CC=gcc OPT=-O1 FUZZ_MAIN=replay \
	SAN="$(SANITIZE)"
FUZZ_COV_VARS = BUILD=build-fuzzcov CC=$(FUZZ_CC) OPT=-O0 FUZZ_MAIN=replay \
	SAN="-fprofile-instr-generate -fcoverage-mapping"
FUZZ_LLVM ?= 14

FUZZ_BIN = $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz-%)
ifeq ($(FUZZ_MAIN),libfuzzer)
FUZZ_LINK := -fsanitize=fuzzer
FUZZ_MAIN_OBJ :=
else
FUZZ_LINK :=
FUZZ_MAIN_OBJ := $(BUILD)/tests/fuzz/replay.o
endif

# Every harness links the daemon's modules (never main.o); the linker keeps
# what it uses.
$(BUILD)/fuzz/fuzz-%: $(BUILD)/tests/fuzz/fuzz_%.o \
		$(BUILD)/tests/fuzz/fuzz_server.o $(FUZZ_MAIN_OBJ) \
		$(DAEMON_OBJ) $(PROTO_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) $(FUZZ_LINK) -o $@ $^ $(PKG_LIBS) -lpthread

# Keep the harness objects: they are intermediate to make's chain of rules.
.SECONDARY: $(FUZZ_TARGETS:%=$(BUILD)/tests/fuzz/fuzz_%.o) \
	$(BUILD)/tests/fuzz/fuzz_server.o $(BUILD)/tests/fuzz/replay.o

.PHONY: fuzz fuzz-bins fuzz-replay fuzz-replay-run fuzz-corpus \
	fuzz-coverage fuzz-coverage-run

fuzz-bins: $(BUILD)/.deps-ok $(FUZZ_BIN)

# Each target runs on FUZZ_JOBS cores (libFuzzer's -fork) for FUZZ_SECONDS,
# with the seeds and everything found before; stops at the first crash.
fuzz:
	+$(FUZZ_MAKE) fuzz-bins $(FUZZ_LF_VARS)
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p tests/fuzz/corpus-new/$$t; \
		echo "== fuzz-$$t: $(FUZZ_SECONDS) s on $(FUZZ_JOBS) core(s)"; \
		dict=; [ -f tests/fuzz/$$t.dict ] && dict=-dict=tests/fuzz/$$t.dict; \
		fork=; [ "$(FUZZ_JOBS)" -gt 1 ] && fork=-fork=$(FUZZ_JOBS); \
		build-fuzz/fuzz/fuzz-$$t $$fork $$dict $$(cat tests/fuzz/$$t.flags 2>/dev/null) \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 \
			-rss_limit_mb=2048 -print_final_stats=1 \
			-artifact_prefix=build-fuzz/fuzz/crash-$$t- $(FUZZ_FLAGS) \
			tests/fuzz/corpus-new/$$t tests/fuzz/corpus/$$t; \
	done

fuzz-replay:
	+@if printf 'int LLVMFuzzerTestOneInput(const char *d, long n)\n{ return 0; }\n' | \
	    $(FUZZ_CC) -x c -fsanitize=fuzzer $(SANITIZE) -o /dev/null - \
	    >/dev/null 2>&1; then \
		$(FUZZ_MAKE) fuzz-replay-run $(FUZZ_LF_VARS); \
	else \
		echo "fuzz-replay: $(FUZZ_CC) cannot link libFuzzer; replaying with gcc + ASan"; \
		$(FUZZ_MAKE) fuzz-replay-run $(FUZZ_RP_VARS); \
	fi

# -runs=0: run every corpus input once, fuzz nothing; a crash, a leak or an
# abort() in a harness's own checks fails the target.
fuzz-replay-run: fuzz-bins
	@set -e; for t in $(FUZZ_TARGETS); do \
		echo "== fuzz-$$t: replaying tests/fuzz/corpus/$$t"; \
		$(BUILD)/fuzz/fuzz-$$t -runs=0 $$(cat tests/fuzz/$$t.flags 2>/dev/null) \
			tests/fuzz/corpus/$$t \
			>$(BUILD)/fuzz/replay-$$t.log 2>&1 || { \
			tail -n 60 $(BUILD)/fuzz/replay-$$t.log; exit 1; }; \
		tail -n 1 $(BUILD)/fuzz/replay-$$t.log; \
	done

fuzz-coverage:
	+$(FUZZ_MAKE) fuzz-coverage-run $(FUZZ_COV_VARS)

fuzz-coverage-run: fuzz-bins
	@rm -f $(BUILD)/fuzz/*.profraw
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p tests/fuzz/corpus-new/$$t; \
		LLVM_PROFILE_FILE=$(BUILD)/fuzz/$$t.profraw $(BUILD)/fuzz/fuzz-$$t \
			tests/fuzz/corpus/$$t tests/fuzz/corpus-new/$$t; \
	done
	llvm-profdata-$(FUZZ_LLVM) merge -o $(BUILD)/fuzz/all.profdata \
		$(BUILD)/fuzz/*.profraw
	llvm-cov-$(FUZZ_LLVM) report $(BUILD)/fuzz/fuzz-$(firstword $(FUZZ_TARGETS)) \
		$(patsubst %,-object $(BUILD)/fuzz/fuzz-%,$(wordlist 2,9,$(FUZZ_TARGETS))) \
		-instr-profile=$(BUILD)/fuzz/all.profdata \
		$(filter-out arbiter/main.c,$(wildcard arbiter/*.c)) $(PROTO_SRC)

fuzz-corpus: $(PYGEN)
	$(PYTHON) tests/fuzz/make_corpus.py --build $(BUILD) tests/fuzz/corpus

endif
