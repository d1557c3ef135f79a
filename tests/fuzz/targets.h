// The fuzz targets (docs/fuzzing.md), shared by the libFuzzer executables and by the unit test
// that replays tests/fuzz/regressions/. Each writes the input where the library expects a file
// inside `scratch` and calls the real path-based entry point. Bad input must end in a
// quant::Error that names the problem (thrown from here); a crash, a sanitizer report, another
// exception type or an internal error (exit code 1) is a finding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

namespace quant::fuzz {

using Target = void (*)(const std::filesystem::path& scratch, const std::uint8_t* data, std::size_t size);

// By name: safetensors, index, config, tokenizer, gguf, recipe.
const std::map<std::string, Target>& targets();

// Runs one input; returns an empty string when the input was accepted or refused with a clear
// quant::Error, else what went wrong (for the caller to abort or fail on).
std::string run_one(Target target, const std::filesystem::path& scratch, const std::uint8_t* data, std::size_t size);

}  // namespace quant::fuzz
