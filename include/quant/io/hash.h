// SHA-256 (FIPS 180-4), for content fingerprints in reports and resume state.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

namespace quant {

class Sha256 {
 public:
  // allow_hardware: use the CPU's SHA instructions when it has them (the same digest either way).
  explicit Sha256(bool allow_hardware = true);
  static bool hardware_available();
  void update(const void* data, std::size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  std::string hex_digest();  // finalizes

 private:
  void block(const std::uint8_t* p);
  void blocks(const std::uint8_t* p, std::size_t n);
  bool hardware_;
  std::uint32_t h_[8];
  std::uint8_t buf_[64];
  std::size_t buf_len_ = 0;
  std::uint64_t total_ = 0;
};

std::string sha256_hex(std::string_view data);
// Hash of a file's bytes (memory-mapped).
std::string sha256_file(const std::filesystem::path& path);

}  // namespace quant
