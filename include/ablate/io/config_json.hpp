// ModelConfig and TrainConfig as JSON objects (field names as in the structs, HF style), for
// checkpoint metadata.  Doubles round-trip exactly.  Reading is strict: unknown fields and
// wrong types throw; missing fields keep their defaults, so older files still load.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "ablate/core/config.hpp"
#include "ablate/core/error.hpp"
#include "ablate/train/train_config.hpp"

namespace ablate::io {

namespace detail {

// Calls f(name, field) for every field of a ModelConfig (const or not).
template <class C, class F>
void visit_fields(C& c, F&& f) requires std::is_same_v<std::remove_const_t<C>, ModelConfig> {
  f("vocab_size", c.vocab_size);
  f("hidden_size", c.hidden_size);
  f("num_attention_heads", c.num_attention_heads);
  f("num_hidden_layers", c.num_hidden_layers);
  f("intermediate_size", c.intermediate_size);
  f("max_position_embeddings", c.max_position_embeddings);
  f("hidden_dropout", c.hidden_dropout);
  f("attention_dropout", c.attention_dropout);
  f("rms_norm_eps", c.rms_norm_eps);
  f("layer_norm_eps", c.layer_norm_eps);
  f("rope_theta", c.rope_theta);
  f("attention_bias", c.attention_bias);
  f("initializer_range", c.initializer_range);
  f("q_lora_rank", c.q_lora_rank);
  f("kv_lora_rank", c.kv_lora_rank);
  f("qk_rope_head_dim", c.qk_rope_head_dim);
  f("qk_nope_head_dim", c.qk_nope_head_dim);
  f("v_head_dim", c.v_head_dim);
  f("mla_rms_norm_eps", c.mla_rms_norm_eps);
  f("moe_intermediate_size", c.moe_intermediate_size);
  f("n_shared_experts", c.n_shared_experts);
  f("n_group", c.n_group);
  f("topk_group", c.topk_group);
  f("norm_topk_prob", c.norm_topk_prob);
  f("routed_scaling_factor", c.routed_scaling_factor);
  f("router_aux_loss_coef", c.router_aux_loss_coef);
  f("router_noise_std", c.router_noise_std);
  f("router_bias_update_rate", c.router_bias_update_rate);
}

// The same for a TrainConfig, with the optimizer settings as dotted names.
template <class C, class F>
void visit_fields(C& c, F&& f) requires std::is_same_v<std::remove_const_t<C>, TrainConfig> {
  f("total_batches", c.total_batches);
  f("grad_accumulation", c.grad_accumulation);
  f("grad_clip", c.grad_clip);
  f("warmup_divisor", c.warmup_divisor);
  f("min_lr_ratio", c.min_lr_ratio);
  f("schedule_over_batches", c.schedule_over_batches);
  f("optimizer.muon_lr", c.optimizer.muon_lr);
  f("optimizer.muon.momentum", c.optimizer.muon.momentum);
  f("optimizer.muon.nesterov", c.optimizer.muon.nesterov);
  f("optimizer.muon.ns_steps", c.optimizer.muon.ns_steps);
  f("optimizer.adamw_lr", c.optimizer.adamw_lr);
  f("optimizer.adamw.beta1", c.optimizer.adamw.beta1);
  f("optimizer.adamw.beta2", c.optimizer.adamw.beta2);
  f("optimizer.adamw.eps", c.optimizer.adamw.eps);
  f("optimizer.adamw.weight_decay", c.optimizer.adamw.weight_decay);
}

// JSON has no inf or NaN (nlohmann would write null, which then fails to load), so a
// non-finite double is written as the string "inf", "-inf" or "nan" and read back from it:
// grad_clip = inf (no clipping) is a setting a run may save and resume.
template <class T>
nlohmann::ordered_json number_to_json(T value) {
  if constexpr (std::is_floating_point_v<T>) {
    if (std::isnan(value)) return "nan";
    if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  }
  return value;
}
template <class T>
std::optional<T> non_finite_from_json(const nlohmann::json& j) {
  if (!j.is_string()) return std::nullopt;
  const auto& text = j.template get_ref<const std::string&>();
  if (text == "inf") return std::numeric_limits<T>::infinity();
  if (text == "-inf") return -std::numeric_limits<T>::infinity();
  if (text == "nan") return std::numeric_limits<T>::quiet_NaN();
  return std::nullopt;
}

template <class C>
nlohmann::ordered_json config_to_json(const C& c) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  visit_fields(c, [&](const char* name, const auto& value) { j[name] = number_to_json(value); });
  return j;
}

template <class C>
C config_from_json(const nlohmann::json& j, std::string_view what) {
  require(j.is_object(), what, ": expected a JSON object, got ", j.type_name());
  C c;
  std::size_t known = 0;
  visit_fields(c, [&](const char* name, auto& field) {
    const auto it = j.find(name);
    if (it == j.end()) return;
    ++known;
    using T = std::remove_reference_t<decltype(field)>;
    if constexpr (std::is_same_v<T, bool>) {
      require(it->is_boolean(), what, ": field ", name, " must be a boolean, got ", it->dump());
      field = it->template get<bool>();
    } else if constexpr (std::is_floating_point_v<T>) {
      if (const auto special = non_finite_from_json<T>(*it)) {
        field = *special;
        return;
      }
      require(it->is_number(), what, ": field ", name,
              " must be a number (or \"inf\", \"-inf\", \"nan\"), got ", it->dump());
      field = it->template get<T>();
    } else if constexpr (std::is_unsigned_v<T>) {
      require(it->is_number_unsigned(), what, ": field ", name,
              " must be a non-negative integer, got ", it->dump());
      const auto v = it->template get<std::uint64_t>();
      require(std::in_range<T>(v), what, ": field ", name, " = ", v, " is out of range");
      field = static_cast<T>(v);
    } else {
      require(it->is_number_integer(), what, ": field ", name, " must be an integer, got ",
              it->dump());
      // A value above INT64_MAX is stored unsigned: get<int64_t> would wrap it negative.
      require(!it->is_number_unsigned() ||
                  it->template get<std::uint64_t>() <=
                      static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()),
              what, ": field ", name, " = ", it->dump(), " is out of range");
      const auto v = it->template get<std::int64_t>();
      require(std::in_range<T>(v), what, ": field ", name, " = ", v, " is out of range");
      field = static_cast<T>(v);
    }
  });
  if (known != j.size()) {
    for (const auto& item : j.items()) {
      const std::string& key = item.key();  // (a structured binding: clang < 16 cannot capture it)
      bool found = false;
      visit_fields(c, [&](const char* name, const auto&) { found = found || key == name; });
      require(found, what, ": unknown field '", key, "'");
    }
  }
  return c;
}

// "name: a vs b" for every field that differs.
template <class C>
std::vector<std::string> config_differences(const C& a, const C& b) {
  const nlohmann::ordered_json ja = config_to_json(a), jb = config_to_json(b);
  std::vector<std::string> out;
  for (const auto& [key, value] : ja.items())
    if (value != jb[key]) out.push_back(key + ": " + value.dump() + " vs " + jb[key].dump());
  return out;
}

}  // namespace detail

inline nlohmann::ordered_json to_json(const ModelConfig& c) { return detail::config_to_json(c); }
inline nlohmann::ordered_json to_json(const TrainConfig& c) { return detail::config_to_json(c); }

inline ModelConfig model_config_from_json(const nlohmann::json& j) {
  return detail::config_from_json<ModelConfig>(j, "ModelConfig JSON");
}
inline TrainConfig train_config_from_json(const nlohmann::json& j) {
  return detail::config_from_json<TrainConfig>(j, "TrainConfig JSON");
}

// Fields that differ, as "name: a vs b".
inline std::vector<std::string> config_differences(const ModelConfig& a, const ModelConfig& b) {
  return detail::config_differences(a, b);
}
// The same, for the named fields only (an architecture's config_fields()).
inline std::vector<std::string> config_differences(const ModelConfig& a, const ModelConfig& b,
                                                   const std::vector<std::string_view>& fields) {
  std::vector<std::string> out;
  for (std::string& d : detail::config_differences(a, b))
    if (std::find(fields.begin(), fields.end(), std::string_view(d).substr(0, d.find(':'))) != fields.end())
      out.push_back(std::move(d));
  return out;
}
inline std::vector<std::string> config_differences(const TrainConfig& a, const TrainConfig& b) {
  return detail::config_differences(a, b);
}

}  // namespace ablate::io
