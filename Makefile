# Convenience entry points. `make run` is the main job, `make test` the test suite; both work on
# a fresh Debian 12 machine (they install the Debian packages they need first).
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: deps build run test bench clean

deps:
	bash scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j$(JOBS)

# Quantize the bundled default model and evaluate it before and after. Builds the quant tool
# only (no tests, no benchmarks), in its own build folder.
run:
	bash scripts/install-deps.sh --build
	cmake -S . -B $(BUILD)-run -DCMAKE_BUILD_TYPE=Release -DQUANT_BUILD_TESTS=OFF -DQUANT_BUILD_BENCH=OFF
	cmake --build $(BUILD)-run -j$(JOBS) --target quant
	bash scripts/main-job.sh $(BUILD)-run/quant

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

bench: build
	bash bench/run.sh $(BUILD)

clean:
	rm -rf $(BUILD) $(BUILD)-run
