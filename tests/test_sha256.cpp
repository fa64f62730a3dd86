#include <catch2/catch.hpp>

#include <string>
#include <vector>

#include "clip/base/sha256.h"

using namespace clip;

TEST_CASE("sha256 matches the FIPS 180-4 test vectors", "[sha256]") {
  CHECK(sha256_hex("", 0) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex(std::string("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex(std::string("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  std::string million(1000000, 'a');
  CHECK(sha256_hex(million) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("incremental sha256 equals one-shot for every split and stays usable after hex()", "[sha256]") {
  std::string data;
  for (int i = 0; i < 300; ++i) data.push_back(char(i * 37 + 11));
  const std::string whole = sha256_hex(data);
  // Split points around the 55/56/64-byte padding and block boundaries.
  for (size_t cut : {0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 200, 299, 300}) {
    Sha256 s;
    s.update(data.data(), cut);
    s.update(data.data() + cut, data.size() - cut);
    CHECK(s.hex() == whole);
  }
  Sha256 s;
  for (char c : data) s.update(&c, 1);
  CHECK(s.hex() == whole);
  CHECK(s.hex() == whole);  // hex() does not consume the state
  // Lengths whose padding needs one extra block (56..63 bytes mod 64) differ from their neighbours.
  for (size_t n = 50; n < 70; ++n) {
    Sha256 a;
    a.update(data.data(), n);
    Sha256 b = a;
    b.update("x", 1);
    CHECK(a.hex() != b.hex());
    CHECK(a.hex() == sha256_hex(data.data(), n));
    CHECK(b.hex() == sha256_hex(data.substr(0, n) + "x"));
  }
  Sha256 c;
  c.update(std::string("ab"));
  CHECK(c.hex() == sha256_hex(std::string("ab")));
  c.update(std::string("c"));
  CHECK(c.hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("the SHA-NI rounds equal the portable ones, with the test vectors, for every length", "[sha256]") {
  // Both paths on this machine: the portable one always, the CPU's SHA instructions where it has them
  // (cpu_features().sha); the test vectors above ran on the default path.
  std::string data;
  for (int i = 0; i < 5000; ++i) data.push_back(char((i * 131 + 7) ^ (i >> 3)));
  std::vector<std::string> portable, hardware;
  set_sha256_hardware(false);
  REQUIRE_FALSE(sha256_hardware());
  for (size_t n = 0; n <= data.size(); n += n < 200 ? 1 : 97) portable.push_back(sha256_hex(data.data(), n));
  CHECK(sha256_hex(std::string("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  set_sha256_hardware(true);
  for (size_t n = 0; n <= data.size(); n += n < 200 ? 1 : 97) hardware.push_back(sha256_hex(data.data(), n));
  CHECK(sha256_hex(std::string(1000000, 'a')) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  REQUIRE(portable.size() == hardware.size());
  for (size_t i = 0; i < portable.size(); ++i) CHECK(portable[i] == hardware[i]);
  INFO("SHA instructions on this CPU: " << sha256_hardware());
}
