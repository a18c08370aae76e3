// Language-model windows, the fixed and seed split protocols, batches and the batch sampler.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "ablate/data/dataset.hpp"

#include "data_test_util.hpp"

namespace {

using data_test::error_of;
using data_test::contains;

using namespace ablate::data;

// Document d holds tokens d * 1000, d * 1000 + 1, ...: a token tells its document and place.
TokenizedCorpus numbered_corpus(std::size_t documents, std::size_t base_length = 20) {
  TokenizedCorpus corpus;
  for (std::size_t d = 0; d < documents; ++d) {
    std::vector<std::int32_t> ids;
    for (std::size_t i = 0; i < base_length + 3 * d; ++i) ids.push_back(static_cast<std::int32_t>(d * 1000 + i));
    corpus.add_document(ids);
  }
  return corpus;
}

// Every window's target is its input shifted by one token of the same stream.
void check_shifted(const WindowSet& windows) {
  for (std::size_t w = 0; w < windows.size(); ++w) {
    const auto in = windows.input(w);
    const auto out = windows.target(w);
    REQUIRE(in.size() == windows.seq());
    REQUIRE(out.size() == windows.seq());
    for (std::size_t t = 0; t + 1 < in.size(); ++t) CHECK(out[t] == in[t + 1]);
    CHECK(out.back() == windows.stream()[windows.start(w) + windows.seq()]);
  }
}

}  // namespace

TEST_CASE("data: SplitMix64 and shuffles are fixed across platforms") {
  SplitMix64 rng(0);
  CHECK(rng.next() == 0xE220A8397B1DCDAFull);  // the published splitmix64 sequence for seed 0
  CHECK(rng.next() == 0x6E789E6AA1B965F4ull);
  SplitMix64 bounded(5);
  for (int i = 0; i < 1000; ++i) CHECK(bounded.below(7) < 7);
  const auto order = shuffled_indices(10, 42);
  CHECK(order == shuffled_indices(10, 42));
  CHECK(order != shuffled_indices(10, 43));
  std::vector<std::size_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  CHECK(sorted == std::vector<std::size_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
}

TEST_CASE("data: fixed split keeps training and validation documents apart") {
  const TokenizedCorpus corpus = numbered_corpus(20);
  SplitOptions options;
  options.protocol = SplitProtocol::fixed;
  options.seq = 4;
  options.seed = 7;
  const DataSplits splits = make_splits(corpus, options);

  // 90/10 by documents, disjoint, covering all.
  CHECK(splits.validation_documents.size() == 2);
  CHECK(splits.train_documents.size() == 18);
  std::set<std::size_t> train_docs(splits.train_documents.begin(), splits.train_documents.end());
  std::set<std::size_t> all = train_docs;
  for (const std::size_t d : splits.validation_documents) {
    CHECK(train_docs.count(d) == 0);
    all.insert(d);
  }
  CHECK(all.size() == 20);

  // No window (input or target) touches a document of the other side.
  const auto side_of = [&](std::int32_t token) { return train_docs.count(static_cast<std::size_t>(token / 1000)) ? 't' : 'v'; };
  for (std::size_t w = 0; w < splits.train.size(); ++w) {
    for (const auto t : splits.train.input(w)) CHECK(side_of(t) == 't');
    for (const auto t : splits.train.target(w)) CHECK(side_of(t) == 't');
  }
  for (std::size_t w = 0; w < splits.validation.size(); ++w) {
    for (const auto t : splits.validation.input(w)) CHECK(side_of(t) == 'v');
    for (const auto t : splits.validation.target(w)) CHECK(side_of(t) == 'v');
  }

  // Non-overlapping windows at stride seq over each side's stream.
  std::size_t train_tokens = 0, validation_tokens = 0;
  for (const std::size_t d : splits.train_documents) train_tokens += corpus.document(d).size();
  for (const std::size_t d : splits.validation_documents) validation_tokens += corpus.document(d).size();
  CHECK(splits.train.stream_tokens() == train_tokens);
  CHECK(splits.validation.stream_tokens() == validation_tokens);
  CHECK(splits.train_windows() == (train_tokens - 1) / 4);
  CHECK(splits.validation_windows() == (validation_tokens - 1) / 4);
  for (std::size_t w = 0; w < splits.train.size(); ++w) CHECK(splits.train.start(w) == 4 * w);
  check_shifted(splits.train);
  check_shifted(splits.validation);
  CHECK(contains(splits.summary(), "fixed split (seq 4, seed 7): train 18 documents"));

  // Deterministic in the seed.
  const DataSplits again = make_splits(corpus, options);
  CHECK(again.validation_documents == splits.validation_documents);
  bool some_seed_differs = false;
  for (std::uint64_t seed = 8; seed < 20 && !some_seed_differs; ++seed) {
    options.seed = seed;
    some_seed_differs = make_splits(corpus, options).validation_documents != splits.validation_documents;
  }
  CHECK(some_seed_differs);
}

TEST_CASE("data: a separator token goes between documents") {
  TokenizedCorpus corpus;
  corpus.add_document(std::vector<std::int32_t>{1, 2, 3});
  corpus.add_document(std::vector<std::int32_t>{});
  corpus.add_document(std::vector<std::int32_t>{4, 5});
  SplitOptions options;
  options.protocol = SplitProtocol::seed;
  options.seq = 2;
  options.separator = 0;
  const DataSplits splits = make_splits(corpus, options);
  const auto stream = splits.train.stream();
  CHECK(std::vector<std::int32_t>(stream.begin(), stream.end()) == std::vector<std::int32_t>{1, 2, 3, 0, 4, 5});
}

TEST_CASE("data: seed split makes stride-1 windows over the first max_tokens and splits them 90/10") {
  const TokenizedCorpus corpus = numbered_corpus(30);  // 30 documents, 1905 tokens
  SplitOptions options;
  options.protocol = SplitProtocol::seed;
  options.seq = 8;
  options.seed = 3;
  options.max_tokens = 1000;
  const DataSplits splits = make_splits(corpus, options);

  // The stream is the first 1000 tokens of all documents in order.
  std::vector<std::int32_t> expected;
  for (std::size_t d = 0; d < corpus.num_documents() && expected.size() < 1000; ++d) {
    for (const auto t : corpus.document(d)) {
      if (expected.size() < 1000) expected.push_back(t);
    }
  }
  const auto stream = splits.train.stream();
  CHECK(std::vector<std::int32_t>(stream.begin(), stream.end()) == expected);

  // A window at every offset 0 .. 991, each in exactly one side; 10% validate.
  const std::size_t windows = 1000 - 8;
  CHECK(splits.train_windows() + splits.validation_windows() == windows);
  CHECK(splits.validation_windows() == 99);  // round(0.1 * 992)
  std::vector<std::size_t> starts = splits.train.starts();
  starts.insert(starts.end(), splits.validation.starts().begin(), splits.validation.starts().end());
  std::sort(starts.begin(), starts.end());
  for (std::size_t i = 0; i < windows; ++i) REQUIRE(starts[i] == i);
  for (std::size_t w = 0; w < splits.validation.size(); ++w) {
    const auto in = splits.validation.input(w);
    CHECK(std::equal(in.begin(), in.end(), expected.begin() + static_cast<std::ptrdiff_t>(splits.validation.start(w))));
  }
  check_shifted(splits.train);
  check_shifted(splits.validation);

  // Random, not a block at the end: validation windows come from all over the stream.
  CHECK(splits.validation.start(0) < windows / 4);
  CHECK(splits.validation.starts().back() > 3 * windows / 4);

  // Deterministic in the seed.
  CHECK(make_splits(corpus, options).validation.starts() == splits.validation.starts());
  options.seed = 4;
  CHECK(make_splits(corpus, options).validation.starts() != splits.validation.starts());

  // max_tokens = 0 keeps everything; the default is 100,000.
  options.max_tokens = 0;
  CHECK(make_splits(corpus, options).train.stream_tokens() == corpus.num_tokens());
  CHECK(SplitOptions{}.max_tokens == 100000);
  CHECK(contains(splits.summary(), "seed split (seq 8, seed 3): 1000 tokens, 992 windows at stride 1"));
}

TEST_CASE("data: split errors") {
  SplitOptions options;
  options.seq = 4;

  TokenizedCorpus empty;
  empty.add_document(std::vector<std::int32_t>{});
  CHECK(contains(error_of([&] { make_splits(empty, options); }), "the corpus is empty"));
  CHECK(contains(error_of([&] { make_splits(TokenizedCorpus{}, options); }), "the corpus is empty"));

  options.protocol = SplitProtocol::fixed;
  CHECK(contains(error_of([&] { make_splits(numbered_corpus(1), options); }), "at least 2"));

  options.seq = 100;  // the validation documents are too short
  CHECK(contains(error_of([&] { make_splits(numbered_corpus(5), options); }), "fewer than the seq + 1 = 101"));

  options.protocol = SplitProtocol::seed;
  options.seq = 500;  // longer than all tokens
  const std::string e = error_of([&] { make_splits(numbered_corpus(5), options); });
  CHECK(contains(e, "seed protocol has 130 tokens"));

  options.seq = 0;
  CHECK(contains(error_of([&] { make_splits(numbered_corpus(5), options); }), "seq must be positive"));
  options.seq = 4;
  options.validation_fraction = 1.0;
  CHECK(contains(error_of([&] { make_splits(numbered_corpus(5), options); }), "validation_fraction"));

  // A window length near 2^64: seq + 1 would wrap to 0 and every window would seem to fit.
  options.seq = SIZE_MAX;
  for (const auto protocol : {SplitProtocol::fixed, SplitProtocol::seed}) {
    options.protocol = protocol;
    CHECK(contains(error_of([&] { make_splits(numbered_corpus(5), options); }), "is absurd"));
  }
  auto stream = std::make_shared<const std::vector<std::int32_t>>(400, 1);
  CHECK(contains(error_of([&] { WindowSet(stream, {0}, SIZE_MAX); }), "the stream ends at 400"));
  CHECK(contains(error_of([&] { WindowSet(stream, {SIZE_MAX}, 1); }), "the stream ends at 400"));
  CHECK(contains(error_of([&] { WindowSet(stream, {399}, 1); }), "the stream ends at 400"));
  CHECK(WindowSet(stream, {398}, 1).size() == 1);
  CHECK(ablate::data::window_fits(0, 399, 400));
  CHECK(!ablate::data::window_fits(1, 399, 400));
  CHECK(!ablate::data::window_fits(0, 0, 0));

  options = SplitOptions{};
  options.seq = 4;
  options.separator = -7;
  CHECK(contains(error_of([&] { make_splits(numbered_corpus(5), options); }),
                 "the separator token id must be >= 0, got -7"));
  options.separator.reset();

  // A corpus filled in by hand, its offsets wrong: document() refuses rather than read past
  // the ids (make_splits validates the whole corpus first).
  TokenizedCorpus bad;
  bad.ids.assign(10, 1);
  bad.offsets = {0, 50};
  CHECK(contains(error_of([&] { bad.document(0); }),
                 "document 0 spans ids [0, 50) of 10: the offsets are inconsistent"));
  bad.offsets = {0, 5, 2};
  CHECK(contains(error_of([&] { bad.document(1); }), "document 1 spans ids [5, 2) of 10"));
  CHECK(contains(error_of([&] { make_splits(bad, options); }), "document 1 ends before it starts"));

  CHECK(parse_split_protocol("seed") == SplitProtocol::seed);
  CHECK(contains(error_of([] { parse_split_protocol("random"); }), "unknown split protocol \"random\""));
}

TEST_CASE("data: batches of windows") {
  const TokenizedCorpus corpus = numbered_corpus(10);
  SplitOptions options;
  options.protocol = SplitProtocol::seed;
  options.seq = 5;
  const DataSplits splits = make_splits(corpus, options);
  const WindowSet& train = splits.train;

  const std::vector<std::size_t> pick = {3, 0, 7};
  const Batch b = train.batch(pick);
  CHECK(b.batch == 3);
  CHECK(b.seq == 5);
  REQUIRE(b.inputs.size() == 15);
  REQUIRE(b.targets.size() == 15);
  for (std::size_t r = 0; r < 3; ++r) {
    for (std::size_t t = 0; t < 5; ++t) {
      CHECK(b.inputs[r * 5 + t] == train.input(pick[r])[t]);
      CHECK(b.targets[r * 5 + t] == train.target(pick[r])[t]);
    }
  }
  const Batch range = train.batch_range(2, 4);
  CHECK(range.batch == 4);
  CHECK(range.inputs[0] == train.input(2)[0]);
  CHECK_THROWS_AS(train.batch_range(train.size() - 1, 2), ablate::invalid_input);
  CHECK_THROWS_AS(train.batch(std::vector<std::size_t>{train.size()}), ablate::invalid_input);
  // A default-constructed set has no stream: asking it for a window is an error, not a crash.
  CHECK(contains(error_of([] { WindowSet{}.batch(std::vector<std::size_t>{0}); }),
                 "window 0 out of range (0 windows)"));
}

TEST_CASE("data: BatchSampler visits each window once per epoch, reproducibly") {
  const TokenizedCorpus corpus = numbered_corpus(4);  // 98 tokens
  SplitOptions options;
  options.protocol = SplitProtocol::seed;
  options.seq = 3;
  const DataSplits splits = make_splits(corpus, options);
  const std::size_t n = splits.train.size();

  BatchSampler sampler(splits.train, 8, 11);
  CHECK(sampler.batches_per_epoch() == n / 8);
  std::vector<std::size_t> seen;
  for (std::size_t b = 0; b < sampler.batches_per_epoch(); ++b) {
    const auto indices = sampler.peek_indices();
    const Batch batch = sampler.next();
    CHECK(batch.batch == 8);
    CHECK(batch.inputs[0] == splits.train.input(indices[0])[0]);
    seen.insert(seen.end(), indices.begin(), indices.end());
  }
  std::sort(seen.begin(), seen.end());
  CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());  // no window twice
  CHECK(sampler.epoch() == 1);
  const auto second_epoch_first = sampler.peek_indices();

  BatchSampler resumed(splits.train, 8, 11);
  resumed.seek(sampler.batches_per_epoch());
  CHECK(resumed.peek_indices() == second_epoch_first);
  resumed.seek(0);
  BatchSampler fresh(splits.train, 8, 11);
  CHECK(resumed.next().inputs == fresh.next().inputs);

  BatchSampler in_order(splits.train, 8, 11, /*shuffle=*/false);
  CHECK(in_order.peek_indices() == std::vector<std::size_t>{0, 1, 2, 3, 4, 5, 6, 7});

  CHECK_THROWS_AS(BatchSampler(splits.train, n + 1, 0), ablate::invalid_input);
  CHECK_THROWS_AS(BatchSampler(splits.train, 0, 0), ablate::invalid_input);
}
