// Training checkpoints: everything a Trainer run needs to continue bit for bit, in one
// safetensors file.
//
//   ablate::io::save_checkpoint("run/ckpt.safetensors", model, trainer);
//   ...
//   Model<Arch, CPU> model(cfg, /*any seed*/ 0);
//   Trainer<Model<Arch, CPU>> trainer(model, train_cfg);
//   ablate::io::load_checkpoint("run/ckpt.safetensors", model, trainer);  // then keep stepping
//
// Tensors, in the backend's own dtype (F32 / F64) so nothing rounds:
//   <HF name>                                  parameters and buffers, as in io/weights.hpp
//   optimizer.adamw.exp_avg.<param>            AdamW first moment     (torch: exp_avg)
//   optimizer.adamw.exp_avg_sq.<param>         AdamW second moment    (torch: exp_avg_sq)
//   optimizer.muon.momentum_buffer.<param>     Muon momentum          (torch: momentum_buffer)
//   trainer.pending_load.<router>              I64 [E]: GLM4 router loads since the last step
//   trainer.grad.<param>                       accumulated gradients, only when the checkpoint
//                                              falls inside a gradient-accumulation group
// Metadata, besides io/weights.hpp's (ablate.kind = "checkpoint"):
//   ablate.checkpoint_format   "1"
//   ablate.train_config        the TrainConfig as JSON
//   ablate.trainer.batches, ablate.trainer.optimizer_steps
//   ablate.adamw.steps, ablate.muon.steps
//   ablate.rng.seed, ablate.rng.counter       the model's RandomStream (dropout, router noise)
//
// load_checkpoint validates the whole file against the model and trainer (kind, format,
// architecture, ModelConfig, TrainConfig, every tensor's presence, shape and dtype, no extra
// tensors) before it changes anything; a mismatch throws invalid_input naming the file and
// the difference.  Only an I/O error while reading the tensor data can leave the model and
// trainer partly restored.  Device backends (B::host_memory == false) go through host copies,
// as in io/weights.hpp.
#pragma once

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/core/random.hpp"
#include "ablate/io/config_json.hpp"
#include "ablate/io/safetensors.hpp"
#include "ablate/io/weights.hpp"
#include "ablate/model/model.hpp"
#include "ablate/train/trainer.hpp"

namespace ablate::io {

namespace meta {
inline constexpr const char* checkpoint_format = "ablate.checkpoint_format";
inline constexpr const char* train_config = "ablate.train_config";
inline constexpr const char* batches = "ablate.trainer.batches";
inline constexpr const char* optimizer_steps = "ablate.trainer.optimizer_steps";
inline constexpr const char* adamw_steps = "ablate.adamw.steps";
inline constexpr const char* muon_steps = "ablate.muon.steps";
inline constexpr const char* rng_seed = "ablate.rng.seed";
inline constexpr const char* rng_counter = "ablate.rng.counter";
}  // namespace meta

inline constexpr std::string_view kCheckpointFormat = "1";

namespace detail {

inline std::string adamw_m_name(const std::string& p) { return "optimizer.adamw.exp_avg." + p; }
inline std::string adamw_v_name(const std::string& p) { return "optimizer.adamw.exp_avg_sq." + p; }
inline std::string muon_name(const std::string& p) { return "optimizer.muon.momentum_buffer." + p; }
inline constexpr std::string_view grad_prefix = "trainer.grad.";
inline std::string grad_name(const std::string& p) { return std::string(grad_prefix) + p; }
inline std::string pending_load_name(const std::string& router) {
  return "trainer.pending_load." + router;
}

// A metadata value parsed as an integer of type T (all digits, in range).
template <class T>
T metadata_integer(const SafetensorsReader& r, const char* key) {
  const std::string* text = r.metadata_value(key);
  if (text == nullptr) throw invalid_input(concat(r.source(), ": checkpoint metadata lacks ", key));
  T value{};
  const char* end = text->data() + text->size();
  const auto [ptr, ec] = std::from_chars(text->data(), end, value);
  if (ec != std::errc() || ptr != end || text->empty())
    throw invalid_input(concat(r.source(), ": checkpoint metadata ", key, " = '", *text,
                               "' is not a valid integer of its type"));
  return value;
}

template <class C>
C metadata_config(const SafetensorsReader& r, const char* key,
                  C (*from_json)(const nlohmann::json&)) {
  const std::string* text = r.metadata_value(key);
  if (text == nullptr) throw invalid_input(concat(r.source(), ": checkpoint metadata lacks ", key));
  const nlohmann::json j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    throw invalid_input(concat(r.source(), ": checkpoint metadata ", key, " is not valid JSON"));
  try {
    return from_json(j);
  } catch (const invalid_input& e) {
    throw invalid_input(concat(r.source(), ": ", key, ": ", e.what()));
  }
}

}  // namespace detail

// Writes model, optimizer and trainer state to `path` atomically.
template <class Arch, class B>
void save_checkpoint(const std::filesystem::path& path, const Model<Arch, B>& model,
                     const Trainer<Model<Arch, B>>& trainer,
                     const std::map<std::string, std::string>& metadata = {}) {
  constexpr Dtype d = native_dtype<B>();
  SafetensorsWriter w;
  detail::add_model_metadata(w, model, "checkpoint", metadata);
  w.set_metadata(meta::checkpoint_format, std::string(kCheckpointFormat));
  w.set_metadata(meta::train_config, to_json(trainer.config()).dump());
  w.set_metadata(meta::batches, std::to_string(trainer.batches()));
  w.set_metadata(meta::optimizer_steps, std::to_string(trainer.optimizer_steps()));
  const auto& optimizer = trainer.optimizer();
  w.set_metadata(meta::adamw_steps, std::to_string(optimizer.adamw().steps()));
  w.set_metadata(meta::muon_steps, std::to_string(optimizer.muon().steps()));
  w.set_metadata(meta::rng_seed, std::to_string(model.rng().seed()));
  w.set_metadata(meta::rng_counter, std::to_string(model.rng().counter()));

  for (const auto& slot : detail::model_tensors(model))
    detail::add_tensor<B>(w, slot.name, d, slot.shape, *slot.tensor);
  for (const auto& s : optimizer.adamw().states()) {
    detail::add_tensor<B>(w, detail::adamw_m_name(s.param->name), d, s.param->shape, s.m);
    detail::add_tensor<B>(w, detail::adamw_v_name(s.param->name), d, s.param->shape, s.v);
  }
  for (const auto& s : optimizer.muon().states())
    detail::add_tensor<B>(w, detail::muon_name(s.param->name), d, s.param->shape, s.momentum);
  detail::for_each_bias_router(model, [&](const std::string& prefix, const auto& router) {
    const auto& load = router.pending_load();
    w.add(detail::pending_load_name(prefix), Dtype::I64, {load.size()},
          std::span<const std::size_t>(load));
  });
  if (trainer.batches() % trainer.config().grad_accumulation != 0)
    for (const auto& p : model.parameters())
      detail::add_tensor<B>(w, detail::grad_name(p.name), d, p.shape, p.grad);
  w.write(path);
}

// Restores what save_checkpoint wrote into a model and trainer built with the same
// architecture, ModelConfig and TrainConfig (the model's own seed does not matter).  The
// reader overload serves a caller that reads the file's metadata first: both come from the
// one file it opened, even if another process replaces the file in between.
template <class Arch, class B>
void load_checkpoint(const SafetensorsReader& r, Model<Arch, B>& model,
                     Trainer<Model<Arch, B>>& trainer) {
  using M = Model<Arch, B>;
  using Tensor = typename B::Tensor;
  constexpr Dtype d = native_dtype<B>();
  const std::string& src = r.source();

  // What kind of file, and for which model.
  const std::string* kind = r.metadata_value(meta::kind);
  if (kind == nullptr || *kind != "checkpoint")
    throw invalid_input(detail::concat(src, ": not a training checkpoint (ablate.kind = '",
                                       kind ? *kind : "",
                                       "'); use load_weights for weights files"));
  const std::string* format = r.metadata_value(meta::checkpoint_format);
  if (format == nullptr || *format != kCheckpointFormat)
    throw invalid_input(detail::concat(src, ": checkpoint format '", format ? *format : "",
                                       "' is not supported (this version reads '",
                                       kCheckpointFormat, "')"));
  const std::string* arch = r.metadata_value(meta::architecture);
  if (arch == nullptr)
    throw invalid_input(detail::concat(src, ": checkpoint metadata lacks ", meta::architecture));
  detail::check_architecture(r, M::architecture_name(), "a checkpoint");
  const ModelConfig stored_config = read_model_config(r);
  if (const auto diff = config_differences(stored_config, model.config()); !diff.empty())
    throw invalid_input(detail::concat(
        src, ": the checkpoint's ModelConfig differs from the model's (checkpoint vs model): ",
        detail::joined(diff)));
  const TrainConfig stored_train =
      detail::metadata_config<TrainConfig>(r, meta::train_config, &train_config_from_json);
  if (const auto diff = config_differences(stored_train, trainer.config()); !diff.empty())
    throw invalid_input(detail::concat(
        src, ": the checkpoint's TrainConfig differs from the trainer's (checkpoint vs trainer): ",
        detail::joined(diff)));
  const auto batches = detail::metadata_integer<std::size_t>(r, meta::batches);
  const auto optimizer_steps = detail::metadata_integer<std::size_t>(r, meta::optimizer_steps);
  const auto adamw_steps = detail::metadata_integer<std::int64_t>(r, meta::adamw_steps);
  const auto muon_steps = detail::metadata_integer<std::int64_t>(r, meta::muon_steps);
  const auto rng_seed = detail::metadata_integer<std::uint64_t>(r, meta::rng_seed);
  const auto rng_counter = detail::metadata_integer<std::uint64_t>(r, meta::rng_counter);
  require(adamw_steps >= 0 && muon_steps >= 0, src, ": negative optimizer step count");
  // Counts past 2^53 no run reaches, and they would lose exactness as the doubles of AdamW's
  // bias correction (or overflow its int64 step count).
  constexpr std::uint64_t max_count = std::uint64_t{1} << 53;
  require(batches <= max_count && static_cast<std::uint64_t>(adamw_steps) <= max_count &&
              static_cast<std::uint64_t>(muon_steps) <= max_count,
          src, ": a step count exceeds 2^53 (", batches, " batches, ", adamw_steps, " AdamW and ",
          muon_steps, " Muon steps)");
  const std::size_t accumulation = trainer.config().grad_accumulation;
  require(optimizer_steps == batches / accumulation, src, ": ", optimizer_steps,
          " optimizer steps after ", batches, " batches of ", accumulation,
          "-batch gradient accumulation, which make ", batches / accumulation);
  require(static_cast<std::uint64_t>(adamw_steps) <= optimizer_steps &&
              static_cast<std::uint64_t>(muon_steps) <= optimizer_steps,
          src, ": more AdamW (", adamw_steps, ") or Muon (", muon_steps,
          ") steps than optimizer steps (", optimizer_steps, ")");

  // The trainer's optimizer must be the one over this model's parameters.
  std::unordered_map<std::string, Parameter<B>*> params;
  for (auto& p : model.parameters()) params.emplace(p.name, &p);
  auto& optimizer = trainer.optimizer();
  auto check_owner = [&](const Parameter<B>* p) {
    const auto it = params.find(p->name);
    require(it != params.end() && it->second == p,
            "load_checkpoint: the trainer's optimizer does not hold parameter ", p->name,
            " of this model (was the trainer built for another model?)");
  };
  for (const auto& s : optimizer.adamw().states()) check_owner(s.param);
  for (const auto& s : optimizer.muon().states()) check_owner(s.param);

  // Every tensor to restore, checked before anything changes.
  std::vector<detail::TensorSlot<Tensor>> slots = detail::model_tensors(model);
  for (auto& s : optimizer.adamw().states()) {
    slots.push_back({detail::adamw_m_name(s.param->name), s.param->shape, &s.m, s.param->numel()});
    slots.push_back({detail::adamw_v_name(s.param->name), s.param->shape, &s.v, s.param->numel()});
  }
  for (auto& s : optimizer.muon().states())
    slots.push_back(
        {detail::muon_name(s.param->name), s.param->shape, &s.momentum, s.param->numel()});
  const bool mid_accumulation = batches % trainer.config().grad_accumulation != 0;
  if (mid_accumulation)
    for (auto& p : model.parameters())
      slots.push_back({detail::grad_name(p.name), p.shape, &p.grad, p.numel()});

  std::set<std::string, std::less<>> expected;
  std::vector<std::string> missing;
  std::vector<const TensorInfo*> infos;
  for (const auto& slot : slots) {
    expected.insert(slot.name);
    const TensorInfo* info = r.find(slot.name);
    infos.push_back(info);
    if (info == nullptr) {
      missing.push_back(slot.name);
    } else {
      detail::check_slot(r, *info, slot, d);
    }
  }
  std::vector<std::string> loads;  // pending-load tensors, in router order
  detail::for_each_bias_router(model, [&](const std::string& prefix, auto& router) {
    const std::string name = detail::pending_load_name(prefix);
    expected.insert(name);
    const TensorInfo* info = r.find(name);
    if (info == nullptr) {
      missing.push_back(name);
      return;
    }
    const std::vector<std::size_t> shape{router.pending_load().size()};
    require(info->shape == shape && is_integer(info->dtype), src, ": tensor '", name,
            "' must be an integer tensor of shape ", detail::shape_string(shape), ", got ",
            info->dtype, " ", detail::shape_string(info->shape));
    loads.push_back(name);
  });
  if (!missing.empty())
    throw invalid_input(detail::concat(src, ": checkpoint lacks ",
                                       missing.size() == 1 ? "tensor " : "tensors ",
                                       detail::name_list(missing)));
  std::vector<std::string> extra;
  for (const TensorInfo& info : r.tensors())
    if (expected.count(info.name) == 0) extra.push_back(info.name);
  if (!extra.empty())
    throw invalid_input(
        detail::concat(src, ": unexpected ", extra.size() == 1 ? "tensor " : "tensors ",
                       detail::name_list(extra), " in a checkpoint of ", M::architecture_name(),
                       extra.size() == 1 && extra[0].starts_with(detail::grad_prefix)
                           ? " (gradients saved at an accumulation boundary?)"
                           : ""));
  // Weights and optimizer state must be finite.  Gradients of an accumulation group in
  // progress may not be (a finite loss, an overflowing gradient): the Trainer's check at the
  // group's optimizer step reports them, as it would have without the checkpoint.
  std::vector<const TensorInfo*> state;
  for (const TensorInfo* info : infos)
    if (!info->name.starts_with(detail::grad_prefix)) state.push_back(info);
  detail::require_finite<typename B::Scalar>(r, state);
  std::vector<std::vector<std::size_t>> load_values;
  for (const std::string& name : loads) load_values.push_back(r.read<std::size_t>(name));

  // Restore.
  if (!mid_accumulation) model.zero_grad();
  for (std::size_t i = 0; i < slots.size(); ++i)
    detail::read_tensor<B>(r, *infos[i], *slots[i].tensor, slots[i].count);
  std::size_t next = 0;
  detail::for_each_bias_router(model, [&](const std::string&, auto& router) {
    router.set_pending_load(load_values[next++]);
  });
  optimizer.adamw().set_steps(adamw_steps);
  optimizer.muon().set_steps(muon_steps);
  model.rng() = RandomStream(rng_seed);
  model.rng().set_counter(rng_counter);
  trainer.set_progress(batches, optimizer_steps);
}

template <class Arch, class B>
void load_checkpoint(const std::filesystem::path& path, Model<Arch, B>& model,
                     Trainer<Model<Arch, B>>& trainer) {
  load_checkpoint(SafetensorsReader::open(path), model, trainer);
}

}  // namespace ablate::io
