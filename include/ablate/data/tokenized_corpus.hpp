// TokenizedCorpus: the token ids of a list of documents, concatenated, with the boundaries.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/data/documents.hpp"

namespace ablate::data {

struct TokenizedCorpus {
  std::vector<std::int32_t> ids;           // every document's ids, one after the other
  std::vector<std::uint64_t> offsets{0};  // document d is ids[offsets[d], offsets[d + 1])

  std::size_t num_documents() const { return offsets.empty() ? 0 : offsets.size() - 1; }
  std::size_t num_tokens() const { return ids.size(); }

  std::span<const std::int32_t> document(std::size_t d) const {
    require(d < num_documents(), "TokenizedCorpus: document ", d, " out of range (",
            num_documents(), " documents)");
    require(offsets[d] <= offsets[d + 1] && offsets[d + 1] <= ids.size(), "TokenizedCorpus: document ",
            d, " spans ids [", offsets[d], ", ", offsets[d + 1], ") of ", ids.size(),
            ": the offsets are inconsistent (validate() says where)");
    return std::span<const std::int32_t>(ids).subspan(
        static_cast<std::size_t>(offsets[d]), static_cast<std::size_t>(offsets[d + 1] - offsets[d]));
  }

  void add_document(std::span<const std::int32_t> document_ids) {
    ids.insert(ids.end(), document_ids.begin(), document_ids.end());
    offsets.push_back(ids.size());
  }

  // Throws unless the offsets start at 0, never decrease and end at ids.size(), and (when
  // vocab_size > 0) every id lies in [0, vocab_size).
  void validate(std::string_view what = "TokenizedCorpus", std::size_t vocab_size = 0) const {
    require(!offsets.empty() && offsets.front() == 0, what, ": offsets must start with 0");
    for (std::size_t d = 0; d + 1 < offsets.size(); ++d) {
      require(offsets[d] <= offsets[d + 1], what, ": document ", d, " ends before it starts");
    }
    require(offsets.back() == ids.size(), what, ": the offsets end at ", offsets.back(), " but there are ",
            ids.size(), " tokens");
    if (vocab_size == 0) return;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      require(ids[i] >= 0 && static_cast<std::size_t>(ids[i]) < vocab_size, what, ": token id ",
              ids[i], " at position ", i, " is outside the vocabulary [0, ", vocab_size, ")");
    }
  }
};

// Encodes every document with `tokenizer` (anything with encode_append(text, ids), such as
// Gpt2Tokenizer), keeping the document boundaries.
template <class Tokenizer>
TokenizedCorpus tokenize_documents(const Tokenizer& tokenizer, std::span<const Document> documents) {
  TokenizedCorpus corpus;
  corpus.offsets.reserve(documents.size() + 1);
  for (const Document& doc : documents) {
    try {
      tokenizer.encode_append(doc.text, corpus.ids);
    } catch (const invalid_input& e) {
      throw invalid_input("document " + doc.name + ": " + e.what());
    }
    corpus.offsets.push_back(corpus.ids.size());
  }
  return corpus;
}

template <class Tokenizer>
TokenizedCorpus tokenize_documents(const Tokenizer& tokenizer, const std::vector<Document>& documents) {
  return tokenize_documents(tokenizer, std::span<const Document>(documents));
}

}  // namespace ablate::data
