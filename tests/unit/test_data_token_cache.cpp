// Token cache files: round trip, atomic write, and a clear error for each kind of corruption.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "ablate/data/token_cache.hpp"

#include "data_test_util.hpp"

namespace {

using data_test::TempDir;
using data_test::contains;

namespace fs = std::filesystem;
using namespace ablate::data;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void spit(const fs::path& p, std::string_view bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

void put_u64(std::string& bytes, std::size_t at, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) bytes[at + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}

std::string load_error(const fs::path& p) {
  try {
    load_token_cache(p);
  } catch (const ablate::invalid_input& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("wrong exception type: ") + e.what();
  }
  return "(no error)";
}

TokenizedCorpus sample_corpus() {
  TokenizedCorpus corpus;
  corpus.add_document(std::vector<std::int32_t>{464, 3290, 50256});
  corpus.add_document(std::vector<std::int32_t>{});
  corpus.add_document(std::vector<std::int32_t>{0, 1, 2, 3, 50000});
  return corpus;
}

}  // namespace

TEST_CASE("data: token cache round trip") {
  TempDir dir;
  const fs::path file = dir.path / "sub" / "brown.tokens";
  const TokenizedCorpus corpus = sample_corpus();
  const std::uint64_t fp = Fingerprint().add("encoder").add("corpus").value();
  save_token_cache(file, corpus, 50257, fp);

  // 40-byte header, 8 bytes per document, 4 per token; nothing else left in the folder.
  CHECK(fs::file_size(file) == 40 + 8 * 3 + 4 * 8);
  CHECK(std::distance(fs::directory_iterator(file.parent_path()), fs::directory_iterator()) == 1);
  const std::string bytes = slurp(file);
  CHECK(bytes.substr(0, 8) == std::string_view("ABLTOKC\n", 8));
  CHECK(static_cast<unsigned char>(bytes[40 + 24]) == (464 & 0xFF));  // little-endian ids
  CHECK(static_cast<unsigned char>(bytes[40 + 25]) == (464 >> 8));

  const TokenCache loaded = load_token_cache(file);
  CHECK(loaded.vocab_size == 50257);
  CHECK(loaded.fingerprint == fp);
  CHECK(loaded.corpus.ids == corpus.ids);
  CHECK(loaded.corpus.offsets == corpus.offsets);

  // Overwriting replaces the file.
  TokenizedCorpus smaller;
  smaller.add_document(std::vector<std::int32_t>{7});
  save_token_cache(file, smaller, 50257, fp);
  CHECK(load_token_cache(file).corpus.ids == std::vector<std::int32_t>{7});

  // The "if current" form: missing or stale files give nothing.
  CHECK_FALSE(load_token_cache_if_current(dir.path / "none.tokens", 50257, fp).has_value());
  CHECK_FALSE(load_token_cache_if_current(file, 50257, fp + 1).has_value());
  CHECK_FALSE(load_token_cache_if_current(file, 50000, fp).has_value());
  CHECK(load_token_cache_if_current(file, 50257, fp)->ids == std::vector<std::int32_t>{7});

  CHECK(Fingerprint().add("ab").add("c").value() != Fingerprint().add("a").add("bc").value());
}

TEST_CASE("data: token cache corruption is reported") {
  TempDir dir;
  const fs::path good = dir.path / "good.tokens";
  save_token_cache(good, sample_corpus(), 50257, 99);
  const std::string bytes = slurp(good);
  const fs::path bad = dir.path / "bad.tokens";

  SUBCASE("truncated") {
    for (const std::size_t keep : {std::size_t{0}, std::size_t{5}, std::size_t{39}}) {
      spit(bad, bytes.substr(0, keep));
      const std::string e = load_error(bad);
      INFO(e);
      CHECK(contains(e, "bad.tokens"));
      CHECK(contains(e, "truncated"));
    }
    spit(bad, bytes.substr(0, bytes.size() - 1));
    const std::string e = load_error(bad);
    CHECK(contains(e, "the file has 95 bytes (truncated or corrupt)"));
  }
  SUBCASE("wrong magic") {
    std::string b = bytes;
    b[0] = 'X';
    spit(bad, b);
    CHECK(contains(load_error(bad), "not a token cache (wrong magic bytes)"));
    spit(bad, "{\"not\": \"a cache\"}");
    CHECK(contains(load_error(bad), "wrong magic"));
  }
  SUBCASE("unknown version") {
    std::string b = bytes;
    b[8] = 2;
    spit(bad, b);
    CHECK(contains(load_error(bad), "format version 2"));
  }
  SUBCASE("counts that do not match the size") {
    std::string b = bytes;
    put_u64(b, 32, 9);  // 9 tokens claimed, 8 stored
    spit(bad, b);
    CHECK(contains(load_error(bad), "says 3 documents and 9 tokens"));
    put_u64(b, 24, 0xFFFFFFFFFFFFFFFFull);  // absurd document count must not overflow
    spit(bad, b);
    CHECK(contains(load_error(bad), "truncated or corrupt"));
    b += std::string(4, '\0');  // extra bytes
    put_u64(b, 24, 3);
    put_u64(b, 32, 8);
    spit(bad, b);
    CHECK(contains(load_error(bad), "the file has 100 bytes"));
  }
  SUBCASE("document lengths that do not add up") {
    std::string b = bytes;
    put_u64(b, 40, 2);  // first document: 2 tokens instead of 3
    spit(bad, b);
    CHECK(contains(load_error(bad), "add up to 7, not to the 8 tokens"));
    put_u64(b, 40, 100);
    spit(bad, b);
    CHECK(contains(load_error(bad), "add up to more than the 8 tokens"));
  }
  SUBCASE("ids outside the vocabulary") {
    std::string b = bytes;
    b[40 + 24 + 2] = 0x10;  // first id: 464 + 0x100000
    spit(bad, b);
    CHECK(contains(load_error(bad), "token 0 has id 1049040, outside the vocabulary [0, 50257)"));
    std::string n = bytes;
    for (int i = 0; i < 4; ++i) n[40 + 24 + 4 * 7 + i] = static_cast<char>(0xFF);  // id -1
    spit(bad, n);
    CHECK(contains(load_error(bad), "token 7 has id -1, outside the vocabulary [0, 50257)"));
  }
  SUBCASE("missing file") {
    CHECK_THROWS_AS(load_token_cache(dir.path / "absent.tokens"), io_error);
  }
}

TEST_CASE("data: save_token_cache checks its input") {
  TempDir dir;
  TokenizedCorpus corpus = sample_corpus();
  CHECK_THROWS_AS(save_token_cache(dir.path / "a", corpus, 0), ablate::invalid_input);
  CHECK_THROWS_AS(save_token_cache(dir.path / "a", corpus, 50000), ablate::invalid_input);  // 50256
  corpus.offsets.back() = 3;
  CHECK_THROWS_AS(save_token_cache(dir.path / "a", corpus, 50257), ablate::invalid_input);
  CHECK_FALSE(fs::exists(dir.path / "a"));

  // A parent that is a file cannot hold the cache.
  spit(dir.path / "file", "x");
  CHECK_THROWS_AS(save_token_cache(dir.path / "file" / "c.tokens", sample_corpus(), 50257),
                  io_error);
}
