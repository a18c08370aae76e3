// A strict parser for one JSON shape: an object whose values are all integers, such as GPT-2's
// encoder.json ({"!": 0, "\"": 1, ...}). Small on purpose, so the tokenizer needs no JSON
// library. Errors name the source, the line and the column.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/data/utf8.hpp"

namespace ablate::data {

namespace detail {

class JsonIntObjectParser {
 public:
  JsonIntObjectParser(std::string_view text, std::string_view source)
      : text_(text), source_(source) {}

  std::vector<std::pair<std::string, std::int64_t>> parse() {
    std::vector<std::pair<std::string, std::int64_t>> entries;
    skip_space();
    expect('{', "'{' (the file must hold one JSON object)");
    skip_space();
    if (peek() == '}') {
      ++pos_;
    } else {
      while (true) {
        skip_space();
        std::string key = parse_string();
        skip_space();
        expect(':', "':' after an object key");
        skip_space();
        const std::int64_t value = parse_integer(key);
        entries.emplace_back(std::move(key), value);
        skip_space();
        if (peek() == ',') {
          ++pos_;
          continue;
        }
        expect('}', "',' or '}' after a value");
        break;
      }
    }
    skip_space();
    if (pos_ != text_.size()) fail("unexpected content after the object");
    return entries;
  }

 private:
  [[noreturn]] void fail(std::string_view what) const {
    std::size_t line = 1, column = 1;
    for (std::size_t i = 0; i < pos_ && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
    }
    throw invalid_input(ablate::detail::concat(source_, ": invalid JSON at line ", line,
                                               ", column ", column, ": ", what));
  }

  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  bool at_end() const { return pos_ >= text_.size(); }

  void expect(char c, std::string_view what) {
    if (at_end()) fail(ablate::detail::concat("unexpected end of file, expected ", what));
    if (text_[pos_] != c) fail(ablate::detail::concat("expected ", what));
    ++pos_;
  }

  void skip_space() {
    while (!at_end() && (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' ||
                         text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  unsigned hex4() {
    if (text_.size() - pos_ < 4) fail("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<unsigned>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<unsigned>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<unsigned>(c - 'A' + 10);
      } else {
        --pos_;
        fail("bad hex digit in \\u escape");
      }
    }
    return v;
  }

  std::string parse_string() {
    expect('"', "a string (object keys are strings)");
    std::string out;
    while (true) {
      if (at_end()) fail("unterminated string");
      const auto c = static_cast<unsigned char>(text_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) fail("control character inside a string");
      if (c >= 0x80) {
        std::size_t length = 1;
        if (utf8::decode(text_, pos_, length) == utf8::kInvalid) fail("string is not valid UTF-8");
        out.append(text_.substr(pos_, length));
        pos_ += length;
        continue;
      }
      ++pos_;
      if (c != '\\') {
        out.push_back(static_cast<char>(c));
        continue;
      }
      if (at_end()) fail("unterminated escape");
      const char e = text_[pos_++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          char32_t cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail("unpaired low surrogate in \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (text_.substr(pos_, 2) != "\\u") fail("unpaired high surrogate in \\u escape");
            pos_ += 2;
            const char32_t low = hex4();
            if (low < 0xDC00 || low > 0xDFFF) fail("unpaired high surrogate in \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          utf8::append(out, cp);
          break;
        }
        default:
          --pos_;
          fail("unknown escape sequence");
      }
    }
  }

  std::int64_t parse_integer(const std::string& key) {
    const std::size_t start = pos_;
    bool negative = false;
    if (peek() == '-') negative = true, ++pos_;
    if (peek() < '0' || peek() > '9') {
      pos_ = start;
      fail(ablate::detail::concat("the value of key \"", key, "\" is not an integer"));
    }
    if (peek() == '0' && pos_ + 1 < text_.size() && text_[pos_ + 1] >= '0' && text_[pos_ + 1] <= '9') {
      fail(ablate::detail::concat("the value of key \"", key,
                                  "\" has a leading zero (JSON integers have none)"));
    }
    std::int64_t value = 0;
    while (peek() >= '0' && peek() <= '9') {
      if (value > (INT64_MAX - 9) / 10) fail("integer too large");
      value = value * 10 + (text_[pos_++] - '0');
    }
    if (peek() == '.' || peek() == 'e' || peek() == 'E') {
      fail(ablate::detail::concat("the value of key \"", key, "\" is not an integer"));
    }
    return negative ? -value : value;
  }

  std::string_view text_;
  std::string_view source_;
  std::size_t pos_ = 0;
};

}  // namespace detail

// Entries of the object in file order (a repeated key appears twice; the caller decides).
inline std::vector<std::pair<std::string, std::int64_t>> parse_json_int_object(
    std::string_view json, std::string_view source) {
  return detail::JsonIntObjectParser(json, source).parse();
}

}  // namespace ablate::data
