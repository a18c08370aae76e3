// Language-model training data: (input, target) windows over token streams, the train and
// validation splits, and batches of windows.
//
// A window of length seq starting at token s of a stream is the input stream[s, s + seq) and
// the target stream[s + 1, s + seq + 1): the target is the input shifted by one token, so a
// window needs seq + 1 tokens.
//
// Two split protocols (SplitOptions::protocol):
//   fixed  Documents are split, not windows: the documents are shuffled with the seed, the first
//          round((1 - validation_fraction) * D) go to training and the rest to validation (at
//          least one each), and each side keeps its documents in corpus order. Each side's
//          documents are concatenated into one stream and cut into non-overlapping windows at
//          stride seq (starts 0, seq, 2 seq, ...; a remainder shorter than seq + 1 is dropped).
//          A window may span two documents of the same side, never a training and a validation
//          document.
//   seed   The seed protocol: all documents are concatenated, the first max_tokens tokens kept
//          (default 100,000; 0 keeps all), and a window made at every offset (stride 1), so n
//          tokens give n - seq windows. The windows are shuffled with the seed; the first
//          round((1 - validation_fraction) * W) train and the rest validate (at least one each).
//          Overlapping windows mean validation text also occurs in training windows: the
//          protocol measures fitting, not generalisation.
// With SplitOptions::separator set (e.g. GPT-2's <|endoftext|>, 50256), that token is placed
// between consecutive non-empty documents when they are concatenated.
//
// Everything is deterministic in the seed on every platform (SplitMix64, shuffle.hpp). Window
// lists are sorted by start; BatchSampler shuffles them per epoch.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/data/shuffle.hpp"
#include "ablate/data/tokenized_corpus.hpp"

namespace ablate::data {

enum class SplitProtocol { fixed, seed };

inline std::string_view to_string(SplitProtocol protocol) {
  return protocol == SplitProtocol::fixed ? "fixed" : "seed";
}

inline SplitProtocol parse_split_protocol(std::string_view name) {
  if (name == "fixed") return SplitProtocol::fixed;
  if (name == "seed") return SplitProtocol::seed;
  throw invalid_input(ablate::detail::concat("unknown split protocol \"", name,
                                             "\" (expected \"fixed\" or \"seed\")"));
}

struct SplitOptions {
  SplitProtocol protocol = SplitProtocol::fixed;
  std::size_t seq = 128;                    // window length
  std::uint64_t seed = 0;                   // for the document / window shuffle
  double validation_fraction = 0.1;         // in (0, 1)
  std::size_t max_tokens = 100000;          // seed protocol only; 0 keeps every token
  std::optional<std::int32_t> separator;    // token placed between documents
};

// B windows: inputs and targets, each [batch, seq] row-major.
struct Batch {
  std::size_t batch = 0;
  std::size_t seq = 0;
  std::vector<std::int32_t> inputs;
  std::vector<std::int32_t> targets;
};

// Whether a window at `start` of length `seq` (seq + 1 tokens with its target) lies within a
// stream of `size` tokens, written so that no sum can wrap around.
constexpr bool window_fits(std::size_t start, std::size_t seq, std::size_t size) {
  return seq < size && start < size - seq;
}

// Windows of one length over one token stream (shared between copies).
class WindowSet {
 public:
  WindowSet() = default;

  WindowSet(std::shared_ptr<const std::vector<std::int32_t>> stream, std::vector<std::size_t> starts,
            std::size_t seq)
      : stream_(std::move(stream)), starts_(std::move(starts)), seq_(seq) {
    require(stream_ != nullptr, "WindowSet: no token stream");
    require(seq_ > 0, "WindowSet: seq must be positive");
    for (const std::size_t s : starts_) {
      require(window_fits(s, seq_, stream_->size()), "WindowSet: a window at ", s, " of length ",
              seq_, " needs ", seq_, " + 1 tokens but the stream ends at ", stream_->size());
    }
  }

  std::size_t size() const { return starts_.size(); }
  bool empty() const { return starts_.empty(); }
  std::size_t seq() const { return seq_; }
  std::size_t start(std::size_t window) const { return starts_.at(window); }
  const std::vector<std::size_t>& starts() const { return starts_; }
  std::size_t stream_tokens() const { return stream_ ? stream_->size() : 0; }
  std::span<const std::int32_t> stream() const {
    return stream_ ? std::span<const std::int32_t>(*stream_) : std::span<const std::int32_t>();
  }

  std::span<const std::int32_t> input(std::size_t window) const {
    return stream().subspan(checked_start(window), seq_);
  }
  std::span<const std::int32_t> target(std::size_t window) const {
    return stream().subspan(checked_start(window) + 1, seq_);
  }

  // The windows with these indices, in this order.
  Batch batch(std::span<const std::size_t> windows) const {
    require(!windows.empty(), "WindowSet::batch: no windows requested");
    Batch b;
    b.batch = windows.size();
    b.seq = seq_;
    b.inputs.resize(b.batch * seq_);
    b.targets.resize(b.batch * seq_);
    const std::int32_t* data = stream().data();  // null only without windows: checked_start throws
    for (std::size_t r = 0; r < windows.size(); ++r) {
      const std::size_t s = checked_start(windows[r]);
      std::copy(data + s, data + s + seq_, b.inputs.begin() + static_cast<std::ptrdiff_t>(r * seq_));
      std::copy(data + s + 1, data + s + seq_ + 1,
                b.targets.begin() + static_cast<std::ptrdiff_t>(r * seq_));
    }
    return b;
  }

  // Windows first, first + 1, ..., first + count - 1 (e.g. to sweep a validation set).
  Batch batch_range(std::size_t first, std::size_t count) const {
    require(count > 0 && first <= size() && count <= size() - first, "WindowSet::batch_range: windows [",
            first, ", ", first + count, ") are not within the ", size(), " windows");
    std::vector<std::size_t> indices(count);
    for (std::size_t i = 0; i < count; ++i) indices[i] = first + i;
    return batch(indices);
  }

 private:
  std::size_t checked_start(std::size_t window) const {
    require(window < starts_.size(), "WindowSet: window ", window, " out of range (", starts_.size(),
            " windows)");
    return starts_[window];
  }

  std::shared_ptr<const std::vector<std::int32_t>> stream_;
  std::vector<std::size_t> starts_;
  std::size_t seq_ = 0;
};

struct DataSplits {
  SplitOptions options;
  WindowSet train;
  WindowSet validation;
  std::vector<std::size_t> train_documents;       // fixed protocol: corpus document indices
  std::vector<std::size_t> validation_documents;  // (empty for the seed protocol)

  std::size_t train_windows() const { return train.size(); }
  std::size_t validation_windows() const { return validation.size(); }

  // One line for logs, e.g. "fixed split (seq 128, seed 0): train 450 documents, 1.2e6 tokens,
  // 9000 windows; validation ...".
  std::string summary() const {
    std::ostringstream out;
    out << to_string(options.protocol) << " split (seq " << options.seq << ", seed " << options.seed
        << "): ";
    if (options.protocol == SplitProtocol::fixed) {
      out << "train " << train_documents.size() << " documents, " << train.stream_tokens()
          << " tokens, " << train.size() << " windows; validation " << validation_documents.size()
          << " documents, " << validation.stream_tokens() << " tokens, " << validation.size()
          << " windows";
    } else {
      out << train.stream_tokens() << " tokens, " << train.size() + validation.size()
          << " windows at stride 1: train " << train.size() << ", validation " << validation.size();
    }
    return out.str();
  }
};

namespace detail {

// Independent generator seeds for the different shuffles made from one user seed.
inline std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t purpose) {
  SplitMix64 rng(seed ^ (purpose * 0xD1B54A32D192ED03ull));
  return rng.next();
}

inline constexpr std::uint64_t kFixedSplitPurpose = 1;
inline constexpr std::uint64_t kSeedSplitPurpose = 2;
inline constexpr std::uint64_t kEpochPurpose = 3;

// How many of `count` items validate: round(fraction * count), kept within [1, count - 1].
inline std::size_t validation_count(std::size_t count, double fraction) {
  auto n = static_cast<std::size_t>(std::llround(fraction * static_cast<double>(count)));
  if (n < 1) n = 1;
  if (n > count - 1) n = count - 1;
  return n;
}

// The listed documents' tokens one after the other, `separator` between non-empty ones.
inline std::vector<std::int32_t> concatenate(const TokenizedCorpus& corpus,
                                             const std::vector<std::size_t>& documents,
                                             std::optional<std::int32_t> separator) {
  std::vector<std::int32_t> stream;
  for (const std::size_t d : documents) {
    const auto ids = corpus.document(d);
    if (ids.empty()) continue;
    if (separator && !stream.empty()) stream.push_back(*separator);
    stream.insert(stream.end(), ids.begin(), ids.end());
  }
  return stream;
}

inline WindowSet strided_windows(std::vector<std::int32_t> stream, std::size_t seq) {
  std::vector<std::size_t> starts;
  for (std::size_t s = 0; window_fits(s, seq, stream.size()); s += seq) starts.push_back(s);
  return WindowSet(std::make_shared<const std::vector<std::int32_t>>(std::move(stream)),
                   std::move(starts), seq);
}

}  // namespace detail

// Splits `corpus` into training and validation windows by options.protocol.
inline DataSplits make_splits(const TokenizedCorpus& corpus, const SplitOptions& options) {
  require(options.seq > 0, "make_splits: seq must be positive");
  require(options.seq < (std::size_t{1} << 40), "make_splits: seq ", options.seq, " is absurd");
  require(options.validation_fraction > 0.0 && options.validation_fraction < 1.0,
          "make_splits: validation_fraction must lie in (0, 1), got ", options.validation_fraction);
  require(!options.separator || *options.separator >= 0, "make_splits: the separator token id must be >= 0, got ",
          options.separator.value_or(0));
  corpus.validate("make_splits: the corpus");
  require(corpus.num_tokens() > 0, "make_splits: the corpus is empty (", corpus.num_documents(),
          " documents, no tokens)");

  DataSplits splits;
  splits.options = options;
  const std::size_t seq = options.seq;

  if (options.protocol == SplitProtocol::fixed) {
    const std::size_t docs = corpus.num_documents();
    require(docs >= 2, "make_splits: the fixed protocol splits documents and needs at least 2, got ",
            docs, " (use the seed protocol for a single text)");
    std::vector<std::size_t> order =
        shuffled_indices(docs, detail::derive_seed(options.seed, detail::kFixedSplitPurpose));
    const std::size_t n_validation = detail::validation_count(docs, options.validation_fraction);
    splits.train_documents.assign(order.begin(), order.end() - static_cast<std::ptrdiff_t>(n_validation));
    splits.validation_documents.assign(order.end() - static_cast<std::ptrdiff_t>(n_validation), order.end());
    std::sort(splits.train_documents.begin(), splits.train_documents.end());
    std::sort(splits.validation_documents.begin(), splits.validation_documents.end());

    splits.train = detail::strided_windows(
        detail::concatenate(corpus, splits.train_documents, options.separator), seq);
    splits.validation = detail::strided_windows(
        detail::concatenate(corpus, splits.validation_documents, options.separator), seq);
    require(!splits.train.empty(), "make_splits: the ", splits.train_documents.size(),
            " training documents hold ", splits.train.stream_tokens(),
            " tokens, fewer than the seq + 1 = ", seq + 1, " one window needs");
    require(!splits.validation.empty(), "make_splits: the ", splits.validation_documents.size(),
            " validation documents hold ", splits.validation.stream_tokens(),
            " tokens, fewer than the seq + 1 = ", seq + 1,
            " one window needs (use a shorter seq or a larger validation_fraction)");
    return splits;
  }

  // Seed protocol.
  std::vector<std::size_t> all(corpus.num_documents());
  for (std::size_t d = 0; d < all.size(); ++d) all[d] = d;
  std::vector<std::int32_t> stream = detail::concatenate(corpus, all, options.separator);
  if (options.max_tokens > 0 && stream.size() > options.max_tokens) stream.resize(options.max_tokens);
  const std::size_t windows = stream.size() > seq ? stream.size() - seq : 0;
  require(windows >= 2, "make_splits: the seed protocol has ", stream.size(),
          " tokens, which give ", windows, " windows of seq + 1 = ", seq + 1,
          " tokens; it needs at least 2 (use a shorter seq or more tokens)");
  std::vector<std::size_t> order =
      shuffled_indices(windows, detail::derive_seed(options.seed, detail::kSeedSplitPurpose));
  const std::size_t n_validation = detail::validation_count(windows, options.validation_fraction);
  std::vector<std::size_t> train_starts(order.begin(), order.end() - static_cast<std::ptrdiff_t>(n_validation));
  std::vector<std::size_t> validation_starts(order.end() - static_cast<std::ptrdiff_t>(n_validation),
                                             order.end());
  std::sort(train_starts.begin(), train_starts.end());
  std::sort(validation_starts.begin(), validation_starts.end());
  auto shared = std::make_shared<const std::vector<std::int32_t>>(std::move(stream));
  splits.train = WindowSet(shared, std::move(train_starts), seq);
  splits.validation = WindowSet(shared, std::move(validation_starts), seq);
  return splits;
}

// Hands out training batches: each epoch visits the windows in a fresh seeded order (or in
// order, with shuffle off) in batches of batch_size; the last windows of an epoch that do not
// fill a batch are left out of it. The n-th batch depends only on (seed, n), so a run resumed
// with seek(n) continues exactly.
class BatchSampler {
 public:
  BatchSampler(WindowSet windows, std::size_t batch_size, std::uint64_t seed, bool shuffle = true)
      : windows_(std::move(windows)), batch_size_(batch_size), seed_(seed), shuffle_(shuffle) {
    require(batch_size_ > 0, "BatchSampler: batch_size must be positive");
    require(batch_size_ <= windows_.size(), "BatchSampler: batch_size ", batch_size_,
            " exceeds the ", windows_.size(), " windows");
  }

  std::size_t batch_size() const { return batch_size_; }
  std::size_t batches_per_epoch() const { return windows_.size() / batch_size_; }
  std::uint64_t step() const { return step_; }
  std::uint64_t epoch() const { return step_ / batches_per_epoch(); }
  void seek(std::uint64_t step) { step_ = step; }
  const WindowSet& windows() const { return windows_; }

  // Window indices of the batch at the current step (without advancing).
  std::vector<std::size_t> peek_indices() {
    const std::uint64_t epoch_index = epoch();
    if (!order_ready_ || order_epoch_ != epoch_index) {
      if (shuffle_) {
        order_ = shuffled_indices(windows_.size(),
                                  detail::derive_seed(seed_ ^ detail::derive_seed(epoch_index, 0),
                                                      detail::kEpochPurpose));
      } else {
        order_.resize(windows_.size());
        for (std::size_t i = 0; i < order_.size(); ++i) order_[i] = i;
      }
      order_epoch_ = epoch_index;
      order_ready_ = true;
    }
    const std::size_t first = static_cast<std::size_t>(step_ % batches_per_epoch()) * batch_size_;
    return std::vector<std::size_t>(order_.begin() + static_cast<std::ptrdiff_t>(first),
                                    order_.begin() + static_cast<std::ptrdiff_t>(first + batch_size_));
  }

  // The batch at the current step; then advances.
  Batch next() {
    const std::vector<std::size_t> indices = peek_indices();
    ++step_;
    return windows_.batch(indices);
  }

 private:
  WindowSet windows_;
  std::size_t batch_size_;
  std::uint64_t seed_;
  bool shuffle_;
  std::uint64_t step_ = 0;
  std::vector<std::size_t> order_;
  std::uint64_t order_epoch_ = 0;
  bool order_ready_ = false;
};

}  // namespace ablate::data
