// Trained models on disk: --save-models DIR writes one safetensors file per model and seed,
// --evaluate FILE reads one back.
//
// A saved model is <DIR>/<model>-seed<seed>.safetensors, written atomically (temporary file,
// then rename) by ablate::io::save_weights: every parameter under its Hugging Face name, the
// architecture and the ModelConfig (ablate.* metadata), and what the run was (example.*):
//   example.program, example.model, example.protocol, example.preset, example.seed,
//   example.command_line     the training run
//   example.vocabulary       what its token ids stand for (PreparedData::vocabulary)
//   example.val_loss, example.val_accuracy, example.val_tokens
//                            its last evaluation, which --evaluate repeats
// A model is rebuilt from the file's own ModelConfig, so the size flags of the training run
// need not be repeated; its architecture must be the one --models names.
#pragma once

#include <algorithm>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <ablate/io/weights.hpp>

namespace examples {

namespace saved {
inline constexpr const char* program = "example.program";
inline constexpr const char* model = "example.model";
inline constexpr const char* protocol = "example.protocol";
inline constexpr const char* preset = "example.preset";
inline constexpr const char* seed = "example.seed";
inline constexpr const char* command_line = "example.command_line";
inline constexpr const char* vocabulary = "example.vocabulary";
inline constexpr const char* val_loss = "example.val_loss";
inline constexpr const char* val_accuracy = "example.val_accuracy";
inline constexpr const char* val_tokens = "example.val_tokens";
}  // namespace saved

inline std::filesystem::path saved_model_path(const std::filesystem::path& dir,
                                              const std::string& model, std::uint64_t seed) {
  return dir / (model + "-seed" + std::to_string(seed) + ".safetensors");
}

// A double as text that reads back to the same double.
inline std::string exact_number(double x) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

// Writes `model` with the run's metadata and its last evaluation.
template <class Model>
void save_trained_model(const Model& model, const std::filesystem::path& file,
                        std::map<std::string, std::string> metadata, std::uint64_t seed,
                        double val_loss, double val_accuracy, std::size_t val_tokens) {
  metadata[saved::seed] = std::to_string(seed);
  metadata[saved::val_loss] = exact_number(val_loss);
  metadata[saved::val_accuracy] = exact_number(val_accuracy);
  metadata[saved::val_tokens] = std::to_string(val_tokens);
  ablate::io::save_weights(model, file, metadata);
}

// What a saved model file says about itself (tensors are read later, by the model).
struct SavedModelInfo {
  std::filesystem::path file;
  std::string architecture;
  ablate::ModelConfig config;
  std::map<std::string, std::string> metadata;

  std::string meta(const char* key) const {
    const auto it = metadata.find(key);
    return it == metadata.end() ? std::string() : it->second;
  }
  std::optional<double> number(const char* key) const {
    const std::string text = meta(key);
    double v = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
    return v;
  }
  // " (saved by exp1_ablation as mlp_512d, fixed protocol, seed 0)", or "".
  std::string origin() const {
    if (meta(saved::model).empty()) return "";
    std::string s = " (saved by ";
    s.append(meta(saved::program)).append(" as ").append(meta(saved::model)).append(", ");
    s.append(meta(saved::protocol)).append(" protocol, seed ").append(meta(saved::seed)).append(")");
    return s;
  }
};

// Reads and checks the header of a saved model: a safetensors file written by ablate, with an
// architecture and a ModelConfig.  Throws with the file's name for a missing, unreadable,
// corrupt or foreign file.
inline SavedModelInfo inspect_saved_model(const std::filesystem::path& file) {
  const auto reader = ablate::io::SafetensorsReader::open(file);
  SavedModelInfo info;
  info.file = file;
  const std::string* kind = reader.metadata_value(ablate::io::meta::kind);
  const std::string* arch = reader.metadata_value(ablate::io::meta::architecture);
  if (kind == nullptr || arch == nullptr)
    throw std::runtime_error(file.string() +
                             ": a safetensors file, but not a model saved by ablate (its metadata "
                             "names no ablate.kind and ablate.architecture)");
  if (*kind != "weights" && *kind != "checkpoint")
    throw std::runtime_error(file.string() + ": ablate.kind is '" + *kind +
                             "', not model weights or a checkpoint");
  info.architecture = *arch;
  info.config = ablate::io::read_model_config(reader);
  info.metadata = reader.metadata();
  return info;
}

}  // namespace examples
