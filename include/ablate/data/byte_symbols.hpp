// GPT-2's byte symbols (bytes_to_unicode): every byte value gets a printable code point, so a
// BPE vocabulary over bytes can be stored as text. The 188 printable bytes ('!'..'~',
// U+00A1..U+00AC, U+00AE..U+00FF) stand for themselves; the other 68 bytes (control characters,
// space, DEL, U+0080..U+00A0, the soft hyphen U+00AD) get U+0100, U+0101, ... in byte order.
// A space, for example, is written as U+0120 'Ġ' and a newline as U+010A 'Ċ'.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ablate/data/utf8.hpp"

namespace ablate::data {

// The code point that stands for each byte value.
constexpr std::array<char32_t, 256> gpt2_byte_to_symbol() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (unsigned b = 0; b < 256; ++b) {
    const bool printable =
        (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

// Code points below this bound may be byte symbols; all others are not.
inline constexpr char32_t kGpt2SymbolBound = 256 + 68;

// Inverse of gpt2_byte_to_symbol(): byte value per symbol code point, -1 for non-symbols.
constexpr std::array<std::int16_t, kGpt2SymbolBound> gpt2_symbol_to_byte_table() {
  std::array<std::int16_t, kGpt2SymbolBound> inverse{};
  inverse.fill(-1);
  const std::array<char32_t, 256> table = gpt2_byte_to_symbol();
  for (unsigned b = 0; b < 256; ++b) inverse[table[b]] = static_cast<std::int16_t>(b);
  return inverse;
}

// The byte value a symbol code point stands for, or -1 when it stands for none.
constexpr int gpt2_symbol_to_byte(char32_t symbol) {
  constexpr std::array<std::int16_t, kGpt2SymbolBound> inverse = gpt2_symbol_to_byte_table();
  return symbol < kGpt2SymbolBound ? inverse[symbol] : -1;
}

// Raw bytes -> their symbols, UTF-8 encoded (the spelling used in encoder.json and vocab.bpe).
inline std::string bytes_to_symbols(std::string_view bytes) {
  constexpr std::array<char32_t, 256> table = gpt2_byte_to_symbol();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) utf8::append(out, table[static_cast<unsigned char>(c)]);
  return out;
}

// Symbols (UTF-8) -> raw bytes. Returns false, leaving `bytes` unspecified, when the text is
// not valid UTF-8 or holds a code point that is not a byte symbol.
inline bool symbols_to_bytes(std::string_view symbols, std::string& bytes) {
  bytes.clear();
  std::size_t pos = 0, length = 0;
  while (pos < symbols.size()) {
    const char32_t cp = utf8::decode(symbols, pos, length);
    const int b = cp == utf8::kInvalid ? -1 : gpt2_symbol_to_byte(cp);
    if (b < 0) return false;
    bytes.push_back(static_cast<char>(static_cast<unsigned char>(b)));
    pos += length;
  }
  return true;
}

}  // namespace ablate::data
