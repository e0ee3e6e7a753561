# The mutual-exclusion checker and the load test, included by the top
# Makefile (`include tests/chaos/chaos.mk`). Uses its BUILD, CC, ALL_CFLAGS,
# ALL_LDFLAGS and PYTHON; objects land in $(BUILD)/tests/chaos/ through the
# top pattern rule. See tests/chaos/README.md.
#
#   make chaos DURATION=600       long chaos run (default 300 s, 16 workers)
#   make chaos HOSTS=3            the same with 3 arbiterds in cluster mode on
#                                 a 3-member etcd, with host and etcd faults
#   make chaos-short              the ~55 s run that make test does
#   make chaos-cluster-short      the ~75 s multi-host run that make test does
#   make chaos-selftest           proves the checker sees a broken lock and,
#                                 alone, a broken fence (about 20 s)
#   make chaos-cluster-selftest   proves the multi-host checker sees a daemon
#                                 that skips the revoke at the deadline (built
#                                 with -DARBITER_SELFTEST_NOREVOKE into
#                                 $(BUILD)-norevoke) and a broken fence
#   make chaos-check-unit         the multi-host checker on hand-made runs (1 s)
#   make load LOAD_SECONDS=60     10,000 connections acquiring/releasing
#   make load-short               the same for 10 s
#
# It also works without editing the top Makefile:
#   make -f Makefile -f tests/chaos/chaos.mk BUILD=build-chaos chaos-short

DURATION ?= 300
HOSTS ?=
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

.PHONY: chaos chaos-short chaos-selftest load load-short chaos-cluster-short \
	chaos-cluster-selftest chaos-check-unit chaos-norevoke-daemon

chaos: all $(CHAOS_WORKER)
	$(if $(HOSTS),@sh scripts/deps.sh test)
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/chaos/chaos.py \
		--duration $(DURATION) --workers $(CHAOS_WORKERS) \
		$(if $(HOSTS),--hosts $(HOSTS)) $(CHAOS_ARGS)

# 60 s of faults on 3 hosts and etcd (every kind drawn before a repeat).
# The etcd leader is stopped for half a TTL here: Debian's etcd (3.4.23)
# has etcd issue 15247, a leader resumed after a pause longer than a lease's
# remaining TTL may revoke live leases, which only fencing survives; a
# shorter pause still moves the leadership and keeps that etcd bug out of
# the verdict on arbiter. `make chaos HOSTS=3` keeps 1.5 x TTL.
chaos-cluster-short: all $(CHAOS_WORKER)
	@sh scripts/deps.sh test
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/chaos/chaos.py \
		--hosts 3 --duration 60 --workers 12 --leader-pause 0.5

# The daemon that skips the revoke at the deadline, built like this one
# (same OPT and SAN) into its own folder; never installed.
NOREVOKE_BUILD := $(BUILD)-norevoke

chaos-norevoke-daemon:
	$(MAKE) --no-print-directory BUILD=$(NOREVOKE_BUILD) \
		CFLAGS="$(CFLAGS) -DARBITER_SELFTEST_NOREVOKE" $(NOREVOKE_BUILD)/arbiterd

chaos-cluster-selftest: all $(CHAOS_WORKER) chaos-norevoke-daemon
	@sh scripts/deps.sh test
	ARBITER_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/chaos/chaos.py \
		--hosts 3 --workers 12 --self-test \
		--norevoke-daemon $(abspath $(NOREVOKE_BUILD))/arbiterd

chaos-check-unit:
	$(PYTHON) -m pytest -q -p no:cacheprovider \
		$(call PYTEST_REPORT,chaos-check) tests/chaos/test_check_cluster.py

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
