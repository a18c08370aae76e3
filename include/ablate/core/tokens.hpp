// Tokens: a batch of integer token ids, tokens(b, t), stored row-major [batch, seq].
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "ablate/core/dimensions.hpp"
#include "ablate/core/error.hpp"

namespace ablate {

// The position of the first id of ids[0, n) outside [0, limit), or n when there is none.
inline std::size_t first_id_outside(const std::int32_t* ids, std::size_t n, std::size_t limit) {
  for (std::size_t i = 0; i < n; ++i)
    if (ids[i] < 0 || static_cast<std::size_t>(ids[i]) >= limit) return i;
  return n;
}

// Throws std::out_of_range unless ids[0, n) all lie in [0, limit): the backends check the ids
// a kernel indexes a table or a row with on the host, before any memory is touched.
// `what` names the ids ("ablate::CUDA embedding: token id").
inline void check_ids(const std::int32_t* ids, std::size_t n, std::size_t limit, const char* what) {
  const std::size_t i = first_id_outside(ids, n, limit);
  if (i < n)
    throw std::out_of_range(std::string(what) + " " + std::to_string(ids[i]) + " at row " +
                            std::to_string(i) + " is outside [0, " + std::to_string(limit) +
                            ")");
}

class Tokens {
 public:
  using value_type = std::int32_t;

  Tokens() = default;
  // batch x seq must not exceed kMaxDimension (rows of the activations).
  Tokens(std::size_t batch, std::size_t seq, value_type fill = 0)
      : batch_(batch), seq_(seq), ids_(dimension_product(batch, seq, "Tokens: batch x seq"), fill) {}

  std::size_t batch() const { return batch_; }
  std::size_t seq() const { return seq_; }
  std::size_t size() const { return ids_.size(); }

  value_type& operator()(std::size_t b, std::size_t t) { return ids_[b * seq_ + t]; }
  value_type operator()(std::size_t b, std::size_t t) const { return ids_[b * seq_ + t]; }
  value_type operator[](std::size_t i) const { return ids_[i]; }
  value_type& operator[](std::size_t i) { return ids_[i]; }

  const value_type* data() const { return ids_.data(); }
  value_type* data() { return ids_.data(); }

  // Throws invalid_input unless every id lies in [0, vocab_size), naming the first that does not
  // by its (batch, position).
  void check_range(std::size_t vocab_size, const char* what = "token id") const {
    const std::size_t i = first_id_outside(ids_.data(), ids_.size(), vocab_size);
    if (i == ids_.size()) return;
    const std::size_t seq = seq_ ? seq_ : 1;
    throw invalid_input(detail::concat(what, " ", ids_[i], " at (", i / seq, ", ", i % seq,
                                       ") is outside the vocabulary [0, ", vocab_size, ")"));
  }

 private:
  std::size_t batch_ = 0, seq_ = 0;
  std::vector<value_type> ids_;
};

}  // namespace ablate
