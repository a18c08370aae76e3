// Token cache: a TokenizedCorpus in a small binary file, so experiments need not re-tokenize.
//
// Format (all integers little-endian, whatever the machine):
//   offset 0   8 bytes  magic "ABLTOKC\n"
//          8   u32      format version (1)
//         12   u32      vocab_size: every id lies in [0, vocab_size)
//         16   u64      fingerprint of what the tokens were made from (see Fingerprint)
//         24   u64      D = number of documents
//         32   u64      N = number of tokens
//         40   u64[D]   token count of each document (they add up to N)
//   40 + 8 D   i32[N]   token ids
// The file is exactly 40 + 8 D + 4 N bytes. load_token_cache() checks all of it and names the
// file and the problem; save_token_cache() writes a temporary file and renames it into place.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "ablate/core/error.hpp"
#include "ablate/data/atomic_file.hpp"
#include "ablate/data/file_io.hpp"
#include "ablate/data/fingerprint.hpp"
#include "ablate/data/tokenized_corpus.hpp"

namespace ablate::data {

inline constexpr std::string_view kTokenCacheMagic{"ABLTOKC\n", 8};
inline constexpr std::uint32_t kTokenCacheVersion = 1;
inline constexpr std::size_t kTokenCacheHeaderBytes = 40;

struct TokenCache {
  TokenizedCorpus corpus;
  std::uint32_t vocab_size = 0;
  std::uint64_t fingerprint = 0;
};

namespace detail {

inline void put_le(std::string& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
}

inline std::uint64_t get_le(std::string_view in, std::size_t pos, int bytes) {
  std::uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) {
    value |= static_cast<std::uint64_t>(static_cast<unsigned char>(in[pos + i])) << (8 * i);
  }
  return value;
}

}  // namespace detail

// Writes `corpus` to `path` (atomically; parent directories are created).
inline void save_token_cache(const std::filesystem::path& path, const TokenizedCorpus& corpus,
                             std::uint32_t vocab_size, std::uint64_t fingerprint = 0) {
  require(vocab_size > 0, "save_token_cache(", path.string(), "): vocab_size must be positive");
  corpus.validate("save_token_cache(" + path.string() + ")", vocab_size);
  const std::size_t docs = corpus.num_documents(), tokens = corpus.num_tokens();
  std::string bytes;
  bytes.reserve(kTokenCacheHeaderBytes + 8 * docs + 4 * tokens);
  bytes.append(kTokenCacheMagic);
  detail::put_le(bytes, kTokenCacheVersion, 4);
  detail::put_le(bytes, vocab_size, 4);
  detail::put_le(bytes, fingerprint, 8);
  detail::put_le(bytes, docs, 8);
  detail::put_le(bytes, tokens, 8);
  for (std::size_t d = 0; d < docs; ++d) detail::put_le(bytes, corpus.offsets[d + 1] - corpus.offsets[d], 8);
  for (const std::int32_t id : corpus.ids) detail::put_le(bytes, static_cast<std::uint32_t>(id), 4);
  write_file_atomically(path, bytes);
}

// Reads and checks a cache file. Throws io_error when it cannot be read and invalid_input when
// it is not a complete, consistent token cache.
inline TokenCache load_token_cache(const std::filesystem::path& path) {
  const std::string bytes = read_file(path);
  const std::string name = "token cache " + path.string();
  const std::size_t size = bytes.size();
  const std::size_t magic_bytes = size < kTokenCacheMagic.size() ? size : kTokenCacheMagic.size();
  require(std::string_view(bytes).substr(0, magic_bytes) == kTokenCacheMagic.substr(0, magic_bytes),
          name, ": not a token cache (wrong magic bytes)");
  require(size >= kTokenCacheHeaderBytes, name, ": truncated: ", size,
          " bytes, less than the ", kTokenCacheHeaderBytes, "-byte header");
  const auto version = static_cast<std::uint32_t>(detail::get_le(bytes, 8, 4));
  require(version == kTokenCacheVersion, name, ": format version ", version,
          ", but this build reads version ", kTokenCacheVersion);
  TokenCache cache;
  cache.vocab_size = static_cast<std::uint32_t>(detail::get_le(bytes, 12, 4));
  cache.fingerprint = detail::get_le(bytes, 16, 8);
  const std::uint64_t docs = detail::get_le(bytes, 24, 8);
  const std::uint64_t tokens = detail::get_le(bytes, 32, 8);
  const std::uint64_t body = size - kTokenCacheHeaderBytes;
  // Compare without overflow: 8 D + 4 N == body.
  const bool sizes_match = docs <= body / 8 && tokens <= (body - 8 * docs) / 4 &&
                           8 * docs + 4 * tokens == body;
  require(sizes_match, name, ": the header says ", docs, " documents and ", tokens,
          " tokens, which need ", kTokenCacheHeaderBytes, " + 8*", docs, " + 4*", tokens,
          " bytes, but the file has ", size, " bytes (truncated or corrupt)");
  require(cache.vocab_size > 0 || tokens == 0, name, ": vocab_size is 0");

  cache.corpus.offsets.assign(1, 0);
  cache.corpus.offsets.reserve(static_cast<std::size_t>(docs) + 1);
  std::uint64_t total = 0;
  for (std::uint64_t d = 0; d < docs; ++d) {
    const std::uint64_t length =
        detail::get_le(bytes, kTokenCacheHeaderBytes + static_cast<std::size_t>(8 * d), 8);
    require(length <= tokens - total, name, ": the document lengths add up to more than the ",
            tokens, " tokens in the header (document ", d, ")");
    total += length;
    cache.corpus.offsets.push_back(total);
  }
  require(total == tokens, name, ": the document lengths add up to ", total, ", not to the ",
          tokens, " tokens in the header");

  const std::size_t ids_at = kTokenCacheHeaderBytes + static_cast<std::size_t>(8 * docs);
  cache.corpus.ids.resize(static_cast<std::size_t>(tokens));
  for (std::size_t i = 0; i < cache.corpus.ids.size(); ++i) {
    const auto raw = static_cast<std::uint32_t>(detail::get_le(bytes, ids_at + 4 * i, 4));
    require(raw < cache.vocab_size && raw <= 0x7FFFFFFFu, name, ": token ", i, " has id ",
            static_cast<std::int32_t>(raw), ", outside the vocabulary [0, ", cache.vocab_size, ")");
    cache.corpus.ids[i] = static_cast<std::int32_t>(raw);
  }
  return cache;
}

// The cached corpus if `path` exists and was made with this vocab_size and fingerprint;
// std::nullopt if the file is missing or stale. A corrupt file still throws.
inline std::optional<TokenizedCorpus> load_token_cache_if_current(const std::filesystem::path& path,
                                                                  std::uint32_t vocab_size,
                                                                  std::uint64_t fingerprint) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return std::nullopt;
  TokenCache cache = load_token_cache(path);
  if (cache.vocab_size != vocab_size || cache.fingerprint != fingerprint) return std::nullopt;
  return std::move(cache.corpus);
}

}  // namespace ablate::data
