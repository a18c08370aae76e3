// A 64-bit hash of a sequence of fields, to tell whether two inputs are the same.
#pragma once

#include <cstdint>
#include <string_view>

namespace ablate::data {

// 64-bit FNV-1a over a sequence of fields; each string is preceded by its length, so
// ("ab", "c") and ("a", "bc") differ. Use it to tie a cache to the tokenizer files and texts.
class Fingerprint {
 public:
  Fingerprint& add(std::string_view bytes) {
    add(static_cast<std::uint64_t>(bytes.size()));
    for (const char c : bytes) mix(static_cast<unsigned char>(c));
    return *this;
  }
  Fingerprint& add(std::uint64_t value) {
    for (int i = 0; i < 8; ++i) mix(static_cast<unsigned char>(value >> (8 * i)));
    return *this;
  }
  std::uint64_t value() const { return hash_; }

 private:
  void mix(unsigned char byte) {
    hash_ ^= byte;
    hash_ *= 0x100000001B3ull;
  }
  std::uint64_t hash_ = 0xCBF29CE484222325ull;
};

}  // namespace ablate::data
