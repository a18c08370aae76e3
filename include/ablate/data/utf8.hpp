// UTF-8: strict decoding of one code point, validation with the offset of the first bad byte,
// and encoding. "Strict" means what the Unicode standard calls well-formed: no overlong forms,
// no surrogates (U+D800..U+DFFF), nothing above U+10FFFF, no truncated sequences.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "ablate/core/error.hpp"

namespace ablate::data::utf8 {

// Returned by decode() for a malformed sequence.
inline constexpr char32_t kInvalid = 0xFFFFFFFFu;

// Decodes the code point that starts at text[pos] (pos < text.size()) and sets `length` to the
// number of bytes it takes. A malformed sequence gives kInvalid and length 1.
constexpr char32_t decode(std::string_view text, std::size_t pos, std::size_t& length) noexcept {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
  const unsigned char b0 = byte(pos);
  length = 1;
  if (b0 < 0x80) return b0;

  std::size_t need = 0;
  char32_t cp = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1, cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return kInvalid;
  }
  if (text.size() - pos <= need) return kInvalid;
  for (std::size_t k = 1; k <= need; ++k) {
    const unsigned char b = byte(pos + k);
    const unsigned char min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
    if (b < min || b > max) return kInvalid;
    cp = (cp << 6) | (b & 0x3F);
  }
  length = need + 1;
  return cp;
}

// Byte offset of the first malformed sequence, or std::string_view::npos when `text` is valid.
constexpr std::size_t first_invalid(std::string_view text) noexcept {
  std::size_t pos = 0, length = 0;
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    if (decode(text, pos, length) == kInvalid) return pos;
    pos += length;
  }
  return std::string_view::npos;
}

// Throws invalid_input naming `what` (e.g. a file name) and the offset of the first bad byte.
inline void require_valid(std::string_view text, std::string_view what) {
  const std::size_t bad = first_invalid(text);
  if (bad == std::string_view::npos) return;
  throw invalid_input(ablate::detail::concat(
      what, " is not valid UTF-8 (malformed byte 0x", std::hex,
      static_cast<unsigned>(static_cast<unsigned char>(text[bad])), std::dec, " at byte offset ",
      bad, ")"));
}

// Appends the UTF-8 encoding of `cp` (which must be a scalar value) to `out`.
inline void append(std::string& out, char32_t cp) {
  require(cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF), "utf8::append: U+", std::hex,
          static_cast<unsigned long>(cp), " is not a Unicode scalar value");
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace ablate::data::utf8
