# The benchmark harness, included by the top Makefile (`include
# tests/bench/bench.mk`). Uses its BUILD, CC, ALL_CFLAGS and ALL_LDFLAGS;
# objects land in $(BUILD)/tests/bench/ through the top pattern rule.
#
#   make bench                 full run (about 4 minutes): prints the table,
#                              and saves the JSON to $(BUILD)/bench/last.json
#   make bench BENCH_ARGS=--json
#   make bench-smoke           every section with tiny counts (a few seconds)
#
# It also works without editing the top Makefile:
#   make -f Makefile -f tests/bench/bench.mk BUILD=build-bench bench

BENCH_SRC := $(wildcard tests/bench/*.c)
BENCH_OBJ := $(BENCH_SRC:%.c=$(BUILD)/%.o)
BENCH_BIN := $(BUILD)/bench/arbiter-bench
BENCH_ARGS ?=

$(BENCH_BIN): $(BENCH_OBJ) $(BUILD)/libarbiter.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(shell pkg-config --libs libprotobuf-c) \
		$(shell pkg-config --libs jansson) -lm -lpthread

.PHONY: bench bench-smoke

# Installs the baselines first (redis-server, from Debian).
bench: all $(BENCH_BIN)
	@sh scripts/deps.sh bench
	$(BENCH_BIN) --build $(BUILD) --save $(BUILD)/bench/last.json $(BENCH_ARGS)

# Never judges speed: fails only when a section cannot be measured (or a
# lock lets two holders in at once).
bench-smoke: all $(BENCH_BIN)
	$(BENCH_BIN) --build $(BUILD) --quick >$(BUILD)/bench/smoke.txt
	@echo "bench-smoke: every section ran (table: $(BUILD)/bench/smoke.txt)"
