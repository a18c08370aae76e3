// Token embedding, scaled by sqrt(hidden_size), whose table doubles as the tied LM head.
#pragma once

#include <cmath>

#include "ablate/blocks/linear.hpp"
#include "ablate/core/error.hpp"
#include "ablate/core/tokens.hpp"

namespace ablate {

template <class B>
class TiedEmbedding {
 public:
  using Tensor = typename B::Tensor;

  TiedEmbedding() = default;
  TiedEmbedding(ParameterStore<B>& store, Initializer& init, std::size_t vocab, std::size_t dim)
      : scale_(std::sqrt(static_cast<double>(dim))) {
    table_ = &store.add("embed_tokens.weight", {vocab, dim}, ParamRole::Embedding);
    init.embedding(*table_);
  }

  // x[b*seq + t] = sqrt(d) * table[tokens(b, t)]
  void forward(Tensor& x, const Tokens& tokens) {
    ids_ = tokens;
    B::embedding_forward(x, tokens.data(), static_cast<std::ptrdiff_t>(tokens.size()),
                         table_->value, scale_);
  }
  void backward(const Tensor& dx) {
    // embedding_backward reads one id per row of dx: the forward's tokens must be that many.
    require(static_cast<std::size_t>(dx.rows()) == ids_.size() && ids_.size() > 0,
            "TiedEmbedding backward: dx has ", dx.rows(), " rows but the last forward had ",
            ids_.size(), " tokens");
    B::embedding_backward(table_->grad, ids_.data(), dx, scale_);
  }

  // logits = h table^T
  void head_forward(Tensor& logits, const Tensor& h) {
    B::copy(head_input_, h);
    B::linear_forward(logits, h, table_->value, nullptr);
  }
  void head_backward(Tensor& dh, const Tensor& dlogits) {
    B::linear_backward(&dh, table_->grad, nullptr, dlogits, head_input_, table_->value);
  }

 private:
  Parameter<B>* table_ = nullptr;
  double scale_ = 1.0;
  Tokens ids_;  // the forward's tokens, for the scatter-add
  Tensor head_input_;
};

}  // namespace ablate
