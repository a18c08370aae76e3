// Model weights as safetensors files, by Hugging Face names.
//
//   ablate::io::save_weights(model, "model.safetensors", {{"run", "exp1"}});
//   ablate::io::load_weights(other_model, "model.safetensors");
//
// A weights file holds every parameter under its HF name (embed_tokens.weight,
// layers.0.self_attn.o_proj.weight, ...) in its PyTorch shape, plus the non-parameter buffers
// HF checkpoints carry (layers.<i>.mlp.gate.e_score_correction_bias of the GLM4 / DeepSeek-V3
// router), and metadata:
//   format               "pt" (what transformers expects of a PyTorch safetensors file)
//   ablate.kind          "weights" (or "checkpoint" for io/checkpoint.hpp's training state)
//   ablate.architecture  Arch::name(), e.g. "mha+gated-mlp+rms+prenorm"
//   ablate.version       the library version that wrote it
//   ablate.config        the ModelConfig as JSON
// Loading checks the architecture (when the file names one), then that every tensor of the
// model is present with its shape and a floating-point dtype, that the file holds nothing
// else and that every value is finite, before anything in the model changes; errors name the
// file and the tensor.
//
// A backend whose tensors are not in host memory (B::host_memory == false, e.g. ablate::CUDA)
// is saved and loaded through host copies (B::to_host / B::from_host), one tensor at a time.
#pragma once

#include <cstddef>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "ablate/core/config.hpp"
#include "ablate/core/error.hpp"
#include "ablate/io/config_json.hpp"
#include "ablate/io/safetensors.hpp"
#include "ablate/model/model.hpp"
#include "ablate/model/parameter_layout.hpp"
#include "ablate/version.hpp"

namespace ablate::io {

// __metadata__ keys written by this library.
namespace meta {
inline constexpr const char* format = "format";
inline constexpr const char* kind = "ablate.kind";
inline constexpr const char* architecture = "ablate.architecture";
inline constexpr const char* version = "ablate.version";
inline constexpr const char* config = "ablate.config";
}  // namespace meta

// The dtype that holds a backend's parameters exactly.
template <class B>
constexpr Dtype native_dtype() {
  using S = typename B::Scalar;
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>,
                "safetensors I/O supports float and double backends");
  return std::is_same_v<S, float> ? Dtype::F32 : Dtype::F64;
}

// Tensors that only training checkpoints hold (optimizer and trainer state); load_weights
// skips them when it reads a checkpoint.
inline bool is_training_state_tensor(std::string_view name) {
  return name.starts_with("optimizer.") || name.starts_with("trainer.");
}

namespace detail {

// Calls f(prefix, router) for every layer whose FFN is a MoE with a bias-balanced router
// (GLM4 / DeepSeek-V3: e_score_correction_bias); prefix is the router's HF module name,
// layers.<i>.mlp.gate (TransformerLayer names its FFN <layer>.mlp, MoE its router <ffn>.gate).
template <class M, class F>
void for_each_bias_router(M& model, F&& f) {
  std::size_t i = 0;
  for (auto& layer : model.layers()) {
    auto& ffn = layer.ffn();
    if constexpr (requires { ffn.router().e_score_correction_bias(); }) {
      f("layers." + std::to_string(i) + ".mlp.gate", ffn.router());
    }
    ++i;
  }
}

// A tensor of the model as it appears in a file: HF name, PyTorch shape, the backend tensor
// that holds it (T is B::Tensor or const B::Tensor) and its element count.
template <class T>
struct TensorSlot {
  std::string name;
  std::vector<std::size_t> shape;
  T* tensor;
  std::size_t count;
};

// Every parameter, then every buffer.
template <class M>
auto model_tensors(M& model) {
  using Tensor = typename std::remove_const_t<M>::Backend::Tensor;
  using T = std::conditional_t<std::is_const_v<M>, const Tensor, Tensor>;
  std::vector<TensorSlot<T>> out;
  for (auto& p : model.parameters()) {
    require(static_cast<std::size_t>(p.value.size()) == p.numel(), "parameter ", p.name, " holds ",
            p.value.size(), " values for shape of ", p.numel());
    out.push_back({p.name, p.shape, &p.value, p.numel()});
  }
  for_each_bias_router(model, [&](const std::string& prefix, auto& router) {
    auto& bias = router.e_score_correction_bias();
    out.push_back({prefix + ".e_score_correction_bias",
                   {static_cast<std::size_t>(bias.size())},
                   &bias,
                   static_cast<std::size_t>(bias.size())});
  });
  return out;
}

// Adds backend tensor `t` (`shape`, stored as `dtype`) to `w`: a view of its memory on a host
// backend (read when the file is written), a host copy made now on any other.
template <class B>
void add_tensor(SafetensorsWriter& w, std::string name, Dtype dtype, std::vector<std::size_t> shape,
                const typename B::Tensor& t) {
  if constexpr (B::host_memory) {
    w.add_view(std::move(name), dtype, std::move(shape), t.data());
  } else {
    w.add(std::move(name), dtype, std::move(shape), B::to_host(t));
  }
}

// Reads tensor `info` of `r` into the first `count` values of backend tensor `t`, directly on a
// host backend, through a host buffer on any other.
template <class B>
void read_tensor(const SafetensorsReader& r, const TensorInfo& info, typename B::Tensor& t,
                 std::size_t count) {
  if constexpr (B::host_memory) {
    r.read(info, std::span(t.data(), count));
  } else {
    std::vector<double> host(count);  // exact for every floating-point dtype of a file
    r.read(info, std::span<double>(host));
    B::from_host(t, host);
  }
}

inline bool is_reserved_metadata_key(std::string_view key) {
  return key == meta::format || key.starts_with("ablate.");
}

// The metadata every file of this library carries, plus the caller's own keys.
template <class M>
void add_model_metadata(SafetensorsWriter& w, const M& model, std::string_view kind,
                        const std::map<std::string, std::string>& user) {
  for (const auto& [key, value] : user) {
    require(!is_reserved_metadata_key(key), "metadata key '", key,
            "' is reserved (\"format\" and \"ablate.*\" are written by ablate)");
    w.set_metadata(key, value);
  }
  w.set_metadata(meta::format, "pt");
  w.set_metadata(meta::kind, std::string(kind));
  w.set_metadata(meta::architecture, M::architecture_name());
  w.set_metadata(meta::version, ablate::version);
  w.set_metadata(meta::config, to_json(model.config()).dump());
}

inline void check_architecture(const SafetensorsReader& r, const std::string& model_arch,
                               std::string_view what) {
  const std::string* stored = r.metadata_value(meta::architecture);
  if (stored != nullptr && *stored != model_arch)
    throw invalid_input(concat(r.source(), ": ", what, " of architecture '", *stored,
                               "' cannot be loaded into a model of architecture '", model_arch,
                               "'"));
}

inline std::string joined(const std::vector<std::string>& parts) {
  std::string s;
  for (std::size_t i = 0; i < parts.size(); ++i) s += (i ? "; " : "") + parts[i];
  return s;
}

inline std::string name_list(const std::vector<std::string>& names) {
  std::string s;
  for (std::size_t i = 0; i < names.size() && i < 5; ++i) s += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > 5) s += concat(" and ", names.size() - 5, " more");
  return s;
}

// Checks that `info` can fill `slot`: same shape, and a floating-point dtype (exactly `exact`
// when given).
template <class T>
void check_slot(const SafetensorsReader& r, const TensorInfo& info, const TensorSlot<T>& slot,
                std::optional<Dtype> exact = std::nullopt) {
  if (info.shape != slot.shape)
    throw invalid_input(concat(r.source(), ": tensor '", slot.name, "' has shape ",
                               shape_string(info.shape), " in the file, the model expects ",
                               shape_string(slot.shape)));
  if (exact && info.dtype != *exact)
    throw invalid_input(concat(r.source(), ": tensor '", slot.name, "' is stored as ", info.dtype,
                               ", the model's backend needs ", *exact, " for an exact resume"));
  if (!is_floating_point(info.dtype))
    throw invalid_input(concat(r.source(), ": tensor '", slot.name, "' has dtype ", info.dtype,
                               "; weights must be floating point"));
}

// Every value of the tensors is finite as the model's scalar type S: a NaN or an infinity
// would load, then turn every loss NaN.  A pass over the file before anything changes.
template <class S>
void require_finite(const SafetensorsReader& r, const std::vector<const TensorInfo*>& infos) {
  for (const TensorInfo* info : infos)
    if (const auto i = r.first_non_finite<S>(*info))
      throw invalid_input(concat(r.source(), ": tensor '", info->name, "' element ", *i,
                                 " is NaN or infinite", std::is_same_v<S, float> ? " as float" : "",
                                 " (a corrupt file, or a model saved after it diverged)"));
}

}  // namespace detail

// Writes every parameter and buffer of `model` (as `dtype`, by default the backend's own:
// F32 for float, F64 for double) with the metadata above plus the caller's `metadata`.
template <class Arch, class B>
void save_weights(const Model<Arch, B>& model, const std::filesystem::path& path,
                  const std::map<std::string, std::string>& metadata = {},
                  std::optional<Dtype> dtype = std::nullopt) {
  const Dtype d = dtype.value_or(native_dtype<B>());
  require(d == Dtype::F64 || d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16,
          "save_weights: dtype must be F64, F32, F16 or BF16, got ", d);
  SafetensorsWriter w;
  detail::add_model_metadata(w, model, "weights", metadata);
  for (const auto& slot : detail::model_tensors(model))
    detail::add_tensor<B>(w, slot.name, d, slot.shape, *slot.tensor);
  w.write(path);
}

// The ModelConfig a weights file or checkpoint was saved with, so a matching model can be
// built before loading.
inline ModelConfig read_model_config(const SafetensorsReader& reader) {
  const std::string* text = reader.metadata_value(meta::config);
  require(text != nullptr, reader.source(), ": no ", meta::config, " in the metadata");
  nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  require(!j.is_discarded(), reader.source(), ": ", meta::config, " is not valid JSON");
  try {
    return model_config_from_json(j);
  } catch (const invalid_input& e) {
    throw invalid_input(detail::concat(reader.source(), ": ", e.what()));
  }
}
namespace detail {

// What load_weights checks before it changes the model: the file's kind, architecture and
// config, then that it holds every slot's tensor with its shape and a floating-point dtype and
// nothing else (a checkpoint's training state aside).  The file's tensor for every slot.
template <class Arch, class B, class T>
std::vector<const TensorInfo*> checked_tensors(const Model<Arch, B>& model,
                                               const std::vector<TensorSlot<T>>& slots,
                                               const SafetensorsReader& reader) {
  const std::string* kind = reader.metadata_value(meta::kind);
  require(kind == nullptr || *kind == "weights" || *kind == "checkpoint", reader.source(),
          ": unknown ablate.kind '", kind ? *kind : "", "'");
  const bool checkpoint = kind != nullptr && *kind == "checkpoint";
  check_architecture(reader, Model<Arch, B>::architecture_name(),
                     checkpoint ? "a checkpoint" : "weights");
  // Same shapes do not make the same function (heads, eps, rope_theta, ...): a file that
  // records its ModelConfig must agree with the model's on the fields the architecture reads.
  if (reader.metadata_value(meta::config) != nullptr)
    if (const auto diff = io::config_differences(read_model_config(reader), model.config(),
                                                 Arch::config_fields());
        !diff.empty())
      throw invalid_input(concat(
          reader.source(), ": the weights were saved from a model of another ModelConfig (file vs "
          "model): ", joined(diff), "; build the model from io::read_model_config(file)"));

  std::set<std::string, std::less<>> expected;
  std::vector<std::string> missing;
  std::vector<const TensorInfo*> infos;
  for (const auto& slot : slots) {
    expected.insert(slot.name);
    const TensorInfo* info = reader.find(slot.name);
    infos.push_back(info);
    if (info == nullptr) {
      missing.push_back(slot.name);
    } else {
      check_slot(reader, *info, slot);
    }
  }
  if (!missing.empty())
    throw invalid_input(
        concat(reader.source(), ": missing ", missing.size() == 1 ? "tensor " : "tensors ",
               name_list(missing), " of ", Model<Arch, B>::architecture_name()));
  std::vector<std::string> extra;
  for (const TensorInfo& info : reader.tensors())
    if (expected.count(info.name) == 0 && !(checkpoint && is_training_state_tensor(info.name)))
      extra.push_back(info.name);
  if (!extra.empty())
    throw invalid_input(concat(reader.source(), ": unexpected ",
                               extra.size() == 1 ? "tensor " : "tensors ", name_list(extra),
                               " (not a parameter or buffer of ",
                               Model<Arch, B>::architecture_name(), ")"));
  return infos;
}

}  // namespace detail

// Loads every parameter and buffer of `model` from `reader` (a weights file, or the weights of
// a training checkpoint), converting from the stored floating-point dtype.
template <class Arch, class B>
void load_weights(Model<Arch, B>& model, const SafetensorsReader& reader) {
  const auto slots = detail::model_tensors(model);
  const auto infos = detail::checked_tensors(model, slots, reader);
  detail::require_finite<typename B::Scalar>(reader, infos);
  for (std::size_t i = 0; i < slots.size(); ++i)
    detail::read_tensor<B>(reader, *infos[i], *slots[i].tensor, slots[i].count);
}

// Checks, before a model is built, that `reader` holds the weights of Model<Arch, B> at `cfg`:
// load_weights' checks of names, shapes, dtypes and config, on a model of shapes only
// (model/parameter_layout.hpp); the values are read, and checked finite, by load_weights.  A
// config that does not fit its file, say edited to a hidden size of 65536 or a million layers,
// fails here naming the tensor that differs, instead of allocating a model that cannot load.
template <class Arch>
void check_weights_fit(const SafetensorsReader& reader, const ModelConfig& cfg) {
  // The layer count first, by tensor counts: a model of shapes still costs a few KB a layer,
  // and a config may say 2^31 layers.  Layers are alike, so models of one and two layers give
  // the tensors outside the layers and those of each.  A file up to a layer short passes on to
  // the checks below, which name what is missing.
  cfg.validate();
  auto tensors_of = [&](std::size_t layers) {
    ModelConfig c = cfg;
    c.num_hidden_layers = layers;
    const Model<Arch, ShapeOnlyBackend> m(c, 0);
    return detail::model_tensors(m).size();
  };
  const std::size_t one = tensors_of(1), per_layer = tensors_of(2) - one;
  const std::size_t expected = one + per_layer * (cfg.num_hidden_layers - 1);  // >= 1 layer, < 2^31
  require(expected <= reader.size() + per_layer, reader.source(), ": a config of ",
          cfg.num_hidden_layers, " layers (", expected, " tensors) for a file of ", reader.size(),
          " tensors");
  const Model<Arch, ShapeOnlyBackend> shapes(cfg, 0);
  detail::checked_tensors(shapes, detail::model_tensors(shapes), reader);
}

template <class Arch, class B>
void load_weights(Model<Arch, B>& model, const std::filesystem::path& path) {
  load_weights(model, SafetensorsReader::open(path));
}

inline ModelConfig read_model_config(const std::filesystem::path& path) {
  return read_model_config(SafetensorsReader::open(path));
}

// The architecture name a file was saved from ("" when it names none).
inline std::string read_architecture(const std::filesystem::path& path) {
  const SafetensorsReader r = SafetensorsReader::open(path);
  const std::string* a = r.metadata_value(meta::architecture);
  return a ? *a : std::string();
}

}  // namespace ablate::io
