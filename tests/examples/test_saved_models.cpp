// A saved model's config is checked against the file's tensors before a model is built from
// it: an edited config (a hidden size of 65536, a million layers) would otherwise allocate
// until the machine runs out of memory.
#include <doctest/doctest.h>

#include <ablate/ablate.hpp>
#include <ablate/io/io.hpp>
#include <filesystem>
#include <string>
#include <unistd.h>

#include "common/saved_models.hpp"

namespace {

using Arch = ablate::Architecture<ablate::Attention<ablate::MHA>, ablate::FFN<ablate::GatedMLP>,
                                  ablate::Norm<ablate::RMS>>;

ablate::ModelConfig tiny_config() {
  ablate::ModelConfig cfg;
  cfg.vocab_size = 40;
  cfg.hidden_size = 16;
  cfg.num_attention_heads = 2;
  cfg.num_hidden_layers = 2;
  cfg.intermediate_size = 64;
  cfg.max_position_embeddings = 32;
  return cfg;
}

// The message check_config_fits_tensors throws for the file's tensors and `cfg`, or "".
std::string refusal(const ablate::io::SafetensorsReader& r, const ablate::ModelConfig& cfg) {
  try {
    examples::check_config_fits_tensors(r, cfg);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("saved models: a config that does not fit the file's tensors is refused before a model is built") {
  const auto file = std::filesystem::temp_directory_path() /
                    ("ablate-saved-model-test-" + std::to_string(::getpid()) + ".safetensors");
  const ablate::ModelConfig cfg = tiny_config();
  ablate::Model<Arch, ablate::CPU> model(cfg, 1);
  ablate::io::save_weights(model, file);
  const auto r = ablate::io::SafetensorsReader::open(file);
  std::filesystem::remove(file);

  CHECK(refusal(r, cfg).empty());
  auto edited = cfg;
  edited.num_hidden_layers = 1000000;
  CHECK(refusal(r, edited).find("its config says num_hidden_layers 1000000, its tensors hold 2 layers") !=
        std::string::npos);
  edited = cfg;
  edited.hidden_size = 65536;
  CHECK(refusal(r, edited).find("its config says vocab_size 40 and hidden_size 65536, its "
                                "embed_tokens.weight is [40, 16]") != std::string::npos);
  edited = cfg;
  edited.vocab_size = 41;
  CHECK(!refusal(r, edited).empty());
}
