// A model of an experiment: a name, an Architecture<...> type and its ModelConfig, with the
// type erased behind three functions (count its parameters, train it once, evaluate a saved
// one) so the programs can keep their models in a list.  Training and evaluation run on the
// backend the RunPlan names.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>
#include <type_traits>

#include <ablate/ablate.hpp>
#include <ablate/io/weights.hpp>

#include "training.hpp"

namespace examples {

struct ParamCounts {
  std::size_t total = 0;
  std::size_t active = 0;  // what one token passes through: K of E routed experts, the rest whole
};

struct ModelSpec {
  std::string name;          // as the seed named it, e.g. "attention_mlp_512d"
  std::string summary;       // for people, e.g. "causal MLA + GatedMLP 512"
  std::string architecture;  // Architecture<...>::name()
  ablate::ModelConfig config;
  std::function<ParamCounts(const ablate::ModelConfig&)> count;
  // Trains it once on plan.backend.
  std::function<RunResult(const ablate::ModelConfig&, const RunPlan&, std::uint64_t, Progress&)> train;
  // Throws unless the file's tensors are those of this architecture at the config (no model is
  // built: an edited config fails here, before anything allocates).
  std::function<void(const ablate::io::SafetensorsReader&, const ablate::ModelConfig&)> check_saved;
  // Loads a file saved from this architecture (with the file's ModelConfig) and evaluates it on
  // plan.backend.
  std::function<EvalPoint(const std::filesystem::path&, const ablate::ModelConfig&, const RunPlan&)>
      evaluate;
};

namespace detail {

template <class FFN>
concept RoutedMoE = requires {
  FFN::n_routed_experts;
  FFN::num_experts_per_tok;
};

// Total and active parameters of Model<Arch> at `cfg`, from its parameter layout (no model is
// allocated, so --params is instant at any size).  Routed expert weights are the parameters
// named "<layer>.mlp.experts.<e>.*"; a token uses K of the E experts of a layer.
template <class Arch>
ParamCounts count_parameters(const ablate::ModelConfig& cfg) {
  std::size_t total = 0, routed = 0;
  for (const auto& p : ablate::parameter_layout<Arch>(cfg)) {
    total += p.numel();
    if (p.name.find(".mlp.experts.") != std::string::npos) routed += p.numel();
  }
  ParamCounts counts{total, total};
  if constexpr (RoutedMoE<typename Arch::ffn>) {
    constexpr std::size_t E = Arch::ffn::n_routed_experts, K = Arch::ffn::num_experts_per_tok;
    counts.active = total - routed + routed / E * K;
  }
  return counts;
}

}  // namespace detail

template <class Arch>
ModelSpec model_spec(std::string name, std::string summary, const ablate::ModelConfig& cfg) {
  ModelSpec spec;
  spec.name = std::move(name);
  spec.summary = std::move(summary);
  spec.architecture = Arch::name();
  spec.config = cfg;
  spec.count = &detail::count_parameters<Arch>;
  spec.check_saved = &ablate::io::check_weights_fit<Arch>;
  spec.train = [](const ablate::ModelConfig& c, const RunPlan& plan, std::uint64_t seed,
                  Progress& progress) {
    return with_backend(plan.backend,
                        [&]<class B>() { return train_run<Arch, B>(c, plan, seed, progress); });
  };
  spec.evaluate = [](const std::filesystem::path& file, const ablate::ModelConfig& c,
                     const RunPlan& plan) {
    return with_backend(plan.backend, [&]<class B>() { return evaluate_saved<Arch, B>(file, c, plan); });
  };
  return spec;
}

}  // namespace examples
