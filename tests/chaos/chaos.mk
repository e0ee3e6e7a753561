# The mutual-exclusion checker and the load test, included by the top
# Makefile (`include tests/chaos/chaos.mk`). Uses its BUILD, CC, ALL_CFLAGS,
# ALL_LDFLAGS and PYTHON; objects land in $(BUILD)/tests/chaos/ through the
# top pattern rule. See tests/chaos/README.md.
#
#   make chaos DURATION=600       long chaos run (default 300 s, 16 workers)
#   make chaos-short              the ~55 s run that make test does
#   make chaos-selftest           proves the checker sees a broken lock and,
#                                 alone, a broken fence (about 20 s)
#   make load LOAD_SECONDS=60     10,000 connections acquiring/releasing
#   make load-short               the same for 10 s
#
# It also works without editing the top Makefile:
#   make -f Makefile -f tests/chaos/chaos.mk BUILD=build-chaos chaos-short

DURATION ?= 300
CHAOS_WORKERS ?= 16
CHAOS_ARGS ?=
LOAD_SECONDS ?= 60
LOAD_CONNS ?= 10000
LOAD_ARGS ?=

CHAOS_WORKER := $(BUILD)/chaos/chaos_worker
CHAOS_LOAD := $(BUILD)/chaos/chaos_load

$(CHAOS_WORKER): $(BUILD)/tests/chaos/chaos_worker.o $(BUILD)/libarbiter.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(shell pkg-config --libs libprotobuf-c)

$(CHAOS_LOAD): $(BUILD)/tests/chaos/load.o $(BUILD)/libarbiter.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(shell pkg-config --libs libprotobuf-c) \
		-lpthread

.PHONY: chaos chaos-short chaos-selftest load load-short

chaos: all $(CHAOS_WORKER)
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/chaos/chaos.py \
		--duration $(DURATION) --workers $(CHAOS_WORKERS) $(CHAOS_ARGS)

chaos-short: all $(CHAOS_WORKER)
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/chaos/chaos.py \
		--duration 50 --workers $(CHAOS_WORKERS)

chaos-selftest: all $(CHAOS_WORKER)
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/chaos/chaos.py \
		--self-test

load: all $(CHAOS_LOAD)
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/chaos/load.py \
		--duration $(LOAD_SECONDS) --conns $(LOAD_CONNS) $(LOAD_ARGS)

load-short: all $(CHAOS_LOAD)
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/chaos/load.py \
		--duration 10 --conns $(LOAD_CONNS)
