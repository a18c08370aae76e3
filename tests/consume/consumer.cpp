// The program the consume tests build against ablate (via add_subdirectory, an installed CMake
// package, and plain -I flags).  Exits 0 only if a tiny model builds and its forward pass gives
// finite logits of the right shape.
#include <ablate/ablate.hpp>

#include <cstddef>
#include <cstdio>

int main() {
  using Arch = ablate::Architecture<ablate::Attention<ablate::MHA>,
                                    ablate::FFN<ablate::GatedMLP>,
                                    ablate::Norm<ablate::RMS>>;

  ablate::ModelConfig cfg;
  cfg.vocab_size = 50;
  cfg.hidden_size = 16;
  cfg.num_attention_heads = 2;
  cfg.num_hidden_layers = 1;
  cfg.intermediate_size = 32;
  cfg.max_position_embeddings = 8;

  ablate::Model<Arch, ablate::CPU> model(cfg, /*seed=*/42);
  const std::size_t n = model.parameter_count();

  const std::size_t batch = 2, seq = 8;
  ablate::Tokens tokens(batch, seq);
  for (std::size_t b = 0; b < batch; ++b) {
    for (std::size_t t = 0; t < seq; ++t) {
      tokens(b, t) = static_cast<ablate::Tokens::value_type>((7 * b + 3 * t) % cfg.vocab_size);
    }
  }

  const auto& logits = model.forward(tokens);
  const auto rows = static_cast<std::size_t>(logits.rows());
  const auto cols = static_cast<std::size_t>(logits.cols());
  const bool ok = n > 0 && rows == batch * seq && cols == cfg.vocab_size && logits.allFinite();

  std::printf("ablate %s consumer: %zu parameters, logits %zu x %zu, %s\n", ablate::version, n,
              rows, cols, ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}
