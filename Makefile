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

# Quantize the bundled default model and evaluate it before and after.
run: build
	bash scripts/main-job.sh $(BUILD)/quant

test: build
	cd $(BUILD) && ctest --output-on-failure -j$(JOBS)

bench: build
	bash bench/run.sh $(BUILD)

clean:
	rm -rf $(BUILD)
