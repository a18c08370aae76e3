// Model FLOP counts for throughput figures: 2 FLOPs per multiply-add of every projection a
// token passes through, plus attention's two T x T products; training is 3x the forward
// (forward, gradient wrt inputs, gradient wrt weights).
#pragma once

#include <cstddef>
#include <string>

#include <ablate/ablate.hpp>

namespace ablate::bench {

// Forward FLOPs per token of the Matrix-role weights in `params`.  A routed expert's weights
// (".experts." in the name) are seen by a fraction `routed_fraction` (= K / E) of the tokens.
template <class B>
double matrix_flops_per_token(const ParameterStore<B>& params, double routed_fraction = 1.0) {
  double flops = 0;
  for (const auto& p : params) {
    if (p.role != ParamRole::Matrix) continue;
    const bool routed = p.name.find(".experts.") != std::string::npos;
    flops += 2.0 * static_cast<double>(p.numel()) * (routed ? routed_fraction : 1.0);
  }
  return flops;
}

// The same plus the tied LM head, for a whole model.
template <class B>
double projection_flops_per_token(const ParameterStore<B>& params, const ModelConfig& cfg,
                                  double routed_fraction = 1.0) {
  return 2.0 * static_cast<double>(cfg.vocab_size * cfg.hidden_size) +
         matrix_flops_per_token(params, routed_fraction);
}

// Forward FLOPs per token of full (unmasked) attention: Q K^T and P V over seq positions.
inline double attention_flops_per_token(std::size_t seq, std::size_t heads, std::size_t qk_dim,
                                        std::size_t v_dim, std::size_t layers) {
  return 2.0 * static_cast<double>(seq * heads * (qk_dim + v_dim) * layers);
}

}  // namespace ablate::bench
