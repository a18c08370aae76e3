// Model<Arch, Backend>: token embedding (x sqrt(d)) -> dropout -> layers -> final norm ->
// dropout -> tied LM head.  Forward, backward and the loss live here; optimizers in train/.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ablate/blocks/dropout.hpp"
#include "ablate/blocks/embedding.hpp"
#include "ablate/core/config.hpp"
#include "ablate/core/context.hpp"
#include "ablate/core/init.hpp"
#include "ablate/core/loss_stats.hpp"
#include "ablate/core/parameter.hpp"
#include "ablate/core/random.hpp"
#include "ablate/core/tokens.hpp"
#include "ablate/model/architecture.hpp"
#include "ablate/model/transformer_layer.hpp"

namespace ablate {

template <class Arch, class B>
class Model {
 public:
  using Backend = B;
  using Architecture = Arch;
  using Tensor = typename B::Tensor;
  using Layer = TransformerLayer<B, Arch>;
  using FinalNormBlock = typename Arch::final_norm::template Block<B>;

  Model(const ModelConfig& cfg, std::uint64_t seed, InitScheme scheme = InitScheme::Seed)
      : cfg_(validated(cfg)), rng_(seed) {
    Initializer init(seed, cfg_.initializer_range, scheme);
    embedding_ = TiedEmbedding<B>(params_, init, cfg_.vocab_size, cfg_.hidden_size);
    embed_dropout_ = Dropout<B>(cfg_.hidden_dropout);
    layers_.reserve(cfg_.num_hidden_layers);
    for (std::size_t i = 0; i < cfg_.num_hidden_layers; ++i)
      layers_.emplace_back(params_, init, "layers." + std::to_string(i), cfg_);
    final_norm_ = Arch::final_norm::make(params_, init, "norm", cfg_);
    final_dropout_ = Dropout<B>(cfg_.hidden_dropout);
  }

  // Blocks point into this model's parameter store: a copy would share or dangle.
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return cfg_; }
  static std::string architecture_name() { return Arch::name(); }

  std::size_t parameter_count() const { return params_.numel(); }
  ParameterStore<B>& parameters() { return params_; }
  const ParameterStore<B>& parameters() const { return params_; }
  void zero_grad() { params_.zero_grad(); }

  void train(bool on = true) { training_ = on; }
  void eval() { training_ = false; }
  bool training() const { return training_; }

  RandomStream& rng() { return rng_; }
  const RandomStream& rng() const { return rng_; }
  std::vector<Layer>& layers() { return layers_; }
  const std::vector<Layer>& layers() const { return layers_; }

  // Logits for every position: logits(b * seq + t, v).  `loss_scale` is the weight of this
  // pass's loss in a following backward (it scales auxiliary-loss gradients).
  const Tensor& forward(const Tokens& tokens, double loss_scale = 1.0) {
    check_tokens(tokens, "token id");
    forward_done_ = false;  // until the logits below are those of `tokens`
    ctx_.training = training_;
    ctx_.batch = tokens.batch();
    ctx_.seq = tokens.seq();
    ctx_.rng = &rng_;
    ctx_.loss_scale = loss_scale;
    embedding_.forward(hidden_, tokens);
    embed_dropout_.forward(hidden_, ctx_);
    for (Layer& layer : layers_) layer.forward(hidden_, ctx_);
    final_norm_.forward(normed_, hidden_);
    final_dropout_.forward(normed_, ctx_);
    embedding_.head_forward(logits_, normed_);
    forward_done_ = true;
    return logits_;
  }

  // Sum of the layers' auxiliary losses from the last forward.
  double aux_loss() const {
    double total = 0;
    for (const Layer& layer : layers_) total += layer.aux_loss();
    return total;
  }

  // Accumulates gradients given d(loss)/d(logits) of the last forward.
  void backward(const Tensor& dlogits) {
    require_forward("backward()");
    embedding_.head_backward(dnormed_, dlogits);
    final_dropout_.backward(dnormed_);
    final_norm_.backward(dhidden_, dnormed_);
    for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) it->backward(dhidden_);
    embed_dropout_.backward(dhidden_);
    embedding_.backward(dhidden_);
  }

  // Cross-entropy of the last forward's logits against `targets`; with `with_grad`, also
  // leaves d(grad_scale * mean CE)/d(logits) for backward().
  LossStats loss(const Tokens& targets, bool with_grad = false, double grad_scale = 1.0) {
    require_forward("loss()");
    require(targets.batch() == ctx_.batch && targets.seq() == ctx_.seq,
            "targets shape [", targets.batch(), ", ", targets.seq(),
            "] does not match the inputs [", ctx_.batch, ", ", ctx_.seq, "]");
    check_tokens(targets, "target id");
    const double n = static_cast<double>(targets.size());
    const auto sums = B::cross_entropy(logits_, targets.data(), with_grad ? &dlogits_ : nullptr,
                                       grad_scale / n);
    LossStats s;
    s.loss = sums.loss_sum / n;
    s.accuracy = static_cast<double>(sums.correct) / n;
    s.aux_loss = aux_loss();
    s.tokens = targets.size();
    return s;
  }

  // One training micro-batch: forward, loss, backward of grad_scale * (mean CE + aux loss).
  // Gradients accumulate; call zero_grad() between optimizer steps.
  LossStats forward_backward(const Tokens& inputs, const Tokens& targets, double grad_scale = 1.0) {
    forward(inputs, grad_scale);
    LossStats s = loss(targets, /*with_grad=*/true, grad_scale);
    backward(dlogits_);
    return s;
  }

  // Loss without gradients, in whatever mode the model is in.
  LossStats evaluate(const Tokens& inputs, const Tokens& targets) {
    forward(inputs, 0.0);
    return loss(targets);
  }

  // Hook for state that moves once per optimizer step (MoE bias balancing).
  void after_optimizer_step() {
    for (Layer& layer : layers_) layer.after_optimizer_step();
  }
  // Hook for the trainer dropping the batches since the last optimizer step (a non-finite loss,
  // memory run out): what their forwards counted for the next step (GLM4 router loads) goes.
  void discard_accumulation_group() {
    for (Layer& layer : layers_) layer.discard_accumulation_group();
  }

 private:
  static ModelConfig validated(const ModelConfig& cfg) {
    cfg.validate();
    return cfg;
  }
  // A forward that threw (out of memory, say) leaves the activations of no batch in particular.
  void require_forward(const char* what) const {
    require(forward_done_, what, " needs the activations of a forward() that finished",
            ctx_.batch > 0 ? " (the last one did not)" : "");
  }
  void check_tokens(const Tokens& tokens, const char* what) const {
    require(tokens.batch() > 0 && tokens.seq() > 0, "tokens must have batch > 0 and seq > 0, got [",
            tokens.batch(), ", ", tokens.seq(), "]");
    require(tokens.seq() <= cfg_.max_position_embeddings, "sequence length ", tokens.seq(),
            " exceeds max_position_embeddings ", cfg_.max_position_embeddings);
    tokens.check_range(cfg_.vocab_size, what);
  }

  ModelConfig cfg_;
  RandomStream rng_;
  ParameterStore<B> params_;
  TiedEmbedding<B> embedding_;
  Dropout<B> embed_dropout_;
  std::vector<Layer> layers_;
  FinalNormBlock final_norm_;
  Dropout<B> final_dropout_;
  bool training_ = true;
  bool forward_done_ = false;  // logits_ and the blocks' caches are those of ctx_'s batch
  PassContext ctx_;
  Tensor hidden_, normed_, logits_, dlogits_, dnormed_, dhidden_;
};

}  // namespace ablate
