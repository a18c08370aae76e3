// GPT-2 pre-tokenization: splits text into the pieces that BPE then encodes one by one. It is a
// hand-written scanner equivalent to the JavaScript regular expression of gpt-3-encoder,
//
//   /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu
//
// with JavaScript's \s and the Unicode classes of unicode_classes.hpp. At each position the
// alternatives are tried in order:
//   1. an ASCII apostrophe followed by s, t, re, ve, m, ll or d (case-sensitive);
//   2. an optional U+0020 space and a maximal run of letters, or of numbers, or of "other" code
//      points (neither letter, number nor space);
//   3. a run of white space, minus its last code point when more white space and then something
//      else follows (so that " word" keeps its space); a single white space code point before
//      non-space is matched on its own.
// Every code point matches one alternative, so the pieces cover the text without gaps.
#pragma once

#include <array>
#include <cstddef>
#include <string_view>
#include <utility>
#include <vector>

#include "ablate/data/unicode_classes.hpp"
#include "ablate/data/utf8.hpp"

namespace ablate::data {

namespace detail {

inline constexpr std::array<CharClass, 128> kAsciiClasses = [] {
  std::array<CharClass, 128> table{};
  for (char32_t c = 0; c < 128; ++c) table[c] = classify_code_point(c);
  return table;
}();

struct ClassAndLength {
  CharClass cls;
  std::size_t length;
};

// Class and byte length of the code point at text[pos]; a malformed byte counts as one "other".
inline ClassAndLength class_at(std::string_view text, std::size_t pos) {
  const auto b = static_cast<unsigned char>(text[pos]);
  if (b < 0x80) return {kAsciiClasses[b], 1};
  std::size_t length = 1;
  const char32_t cp = utf8::decode(text, pos, length);
  return {cp == utf8::kInvalid ? CharClass::other : classify_code_point(cp), length};
}

// Length of the contraction ('s 't 're 've 'm 'll 'd) at text[pos], or 0.
inline std::size_t contraction_length(std::string_view text, std::size_t pos) {
  if (text[pos] != '\'' || pos + 1 >= text.size()) return 0;
  const char a = text[pos + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (pos + 2 >= text.size()) return 0;
  const char b = text[pos + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

}  // namespace detail

// Calls emit(std::string_view piece) for every piece of `text`, in order. Malformed UTF-8 bytes
// are treated as single "other" code points (Gpt2Tokenizer rejects such text before this).
template <class Emit>
void gpt2_pretokenize(std::string_view text, Emit&& emit) {
  using detail::class_at;
  const std::size_t n = text.size();
  std::size_t pos = 0;
  while (pos < n) {
    if (const std::size_t len = detail::contraction_length(text, pos)) {
      emit(text.substr(pos, len));
      pos += len;
      continue;
    }
    const std::size_t start = pos;
    CharClass run = class_at(text, pos).cls;
    std::size_t p = pos;
    if (text[pos] == ' ' && pos + 1 < n) {
      const CharClass next = class_at(text, pos + 1).cls;
      if (next != CharClass::space) run = next, p = pos + 1;  // " ?" takes the space
    }
    if (run != CharClass::space) {
      while (p < n) {
        const auto c = class_at(text, p);
        if (c.cls != run) break;
        p += c.length;
      }
      emit(text.substr(start, p - start));
      pos = p;
      continue;
    }
    // White space: \s+(?!\S) backtracks by one code point unless the run ends the text or is a
    // single code point (then \s+ takes it).
    std::size_t last = pos, count = 0;
    while (p < n) {
      const auto c = class_at(text, p);
      if (c.cls != CharClass::space) break;
      last = p;
      p += c.length;
      ++count;
    }
    const std::size_t end = (p == n || count == 1) ? p : last;
    emit(text.substr(start, end - start));
    pos = end;
  }
}

// The pieces of `text` as views into it.
inline std::vector<std::string_view> gpt2_pretokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  gpt2_pretokenize(text, [&](std::string_view piece) { pieces.push_back(piece); });
  return pieces;
}

}  // namespace ablate::data
