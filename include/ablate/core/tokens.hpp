// Tokens: a batch of integer token ids, tokens(b, t), stored row-major [batch, seq].
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "ablate/core/error.hpp"

namespace ablate {

// Throws std::out_of_range unless ids[0, n) all lie in [0, limit): the backends check the ids
// a kernel indexes a table or a row with on the host, before any memory is touched.
// `what` names the ids ("ablate::CUDA embedding: token id").
inline void check_ids(const std::int32_t* ids, std::size_t n, std::size_t limit, const char* what) {
  for (std::size_t i = 0; i < n; ++i)
    if (ids[i] < 0 || static_cast<std::size_t>(ids[i]) >= limit)
      throw std::out_of_range(std::string(what) + " " + std::to_string(ids[i]) + " at row " +
                              std::to_string(i) + " is outside [0, " + std::to_string(limit) +
                              ")");
}

class Tokens {
 public:
  using value_type = std::int32_t;

  Tokens() = default;
  Tokens(std::size_t batch, std::size_t seq, value_type fill = 0)
      : batch_(batch), seq_(seq), ids_(batch * seq, fill) {}

  std::size_t batch() const { return batch_; }
  std::size_t seq() const { return seq_; }
  std::size_t size() const { return ids_.size(); }

  value_type& operator()(std::size_t b, std::size_t t) { return ids_[b * seq_ + t]; }
  value_type operator()(std::size_t b, std::size_t t) const { return ids_[b * seq_ + t]; }
  value_type operator[](std::size_t i) const { return ids_[i]; }
  value_type& operator[](std::size_t i) { return ids_[i]; }

  const value_type* data() const { return ids_.data(); }
  value_type* data() { return ids_.data(); }

  // Throws unless every id lies in [0, vocab_size).
  void check_range(std::size_t vocab_size, const char* what = "token id") const {
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      require(ids_[i] >= 0 && static_cast<std::size_t>(ids_[i]) < vocab_size, what, " ",
              ids_[i], " at (", i / (seq_ ? seq_ : 1), ", ", i % (seq_ ? seq_ : 1),
              ") is outside the vocabulary [0, ", vocab_size, ")");
    }
  }

 private:
  std::size_t batch_ = 0, seq_ = 0;
  std::vector<value_type> ids_;
};

}  // namespace ablate
