// SHA-256: the FIPS 180-4 test vectors, and the CPU's SHA instructions against the portable
// rounds on every length and split of the input.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "quant/io/hash.h"

namespace quant {
namespace {

std::string digest(std::string_view s, bool hardware) {
  Sha256 h(hardware);
  h.update(s);
  return h.hex_digest();
}

TEST(Sha256, FipsVectors) {
  for (bool hw : {false, true}) {
    EXPECT_EQ(digest("", hw), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(digest("abc", hw), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(digest("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", hw),
              "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    EXPECT_EQ(digest(std::string(1000000, 'a'), hw), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  }
}

TEST(Sha256, HardwareMatchesPortableOnEveryLengthAndSplit) {
  if (!Sha256::hardware_available()) GTEST_SKIP() << "this CPU has no SHA instructions (the portable rounds are checked by FipsVectors)";
  std::mt19937 rng(7);
  std::string data(700, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (std::size_t n = 0; n <= data.size(); n += (n < 200 ? 1 : 37)) {
    const std::string_view s(data.data(), n);
    const std::string portable = digest(s, false);
    ASSERT_EQ(digest(s, true), portable) << n << " bytes";
    // Fed in uneven pieces: the buffered partial block, then whole blocks straight from the input.
    Sha256 h(true);
    for (std::size_t i = 0; i < n;) {
      const std::size_t take = std::min<std::size_t>(n - i, 1 + rng() % 150);
      h.update(s.substr(i, take));
      i += take;
    }
    ASSERT_EQ(h.hex_digest(), portable) << n << " bytes in pieces";
  }
}

}  // namespace
}  // namespace quant
