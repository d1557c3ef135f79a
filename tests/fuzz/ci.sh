#!/usr/bin/env bash
# CI job for hostile input (docs/fuzzing.md): build with clang + ASan/UBSan + libFuzzer, run the
# unit tests under the sanitizers, then every fuzz target for QUANT_FUZZ_SECONDS (default 60)
# over its seed corpus. Usage: bash tests/fuzz/ci.sh [BUILD_DIR=build-fuzz]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build-fuzz}
bash scripts/install-deps.sh --fuzz
# File by file (QUANT_UNITY=OFF): the default build compiles the library in unity batches, this one
# keeps each file compiling on its own includes.
cmake -S . -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DQUANT_FUZZ=ON -DQUANT_BUILD_BENCH=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQUANT_UNITY=OFF >/dev/null
cmake --build "$build" -j"$(nproc)"
(cd "$build" && ctest --output-on-failure -j"$(nproc)" --timeout 900)
bash tests/fuzz/run.sh "$build" "${QUANT_FUZZ_SECONDS:-60}"
