// One training run of one model on one seed: the seed's loop (ablate::Trainer: accumulation,
// clipping, Muon + AdamW, the LambdaLR schedule), evaluations along the way and at the end,
// and optionally the trained model saved to a file; and the evaluation of a saved model.  Both
// are templates over the backend B (ablate::CPU, or ablate::CUDA in a CUDA build).
#pragma once

#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include <ablate/ablate.hpp>
#include <ablate/data/dataset.hpp>
#include <ablate/train/trainer.hpp>

#include "backend.hpp"
#include "progress.hpp"
#include "saved_models.hpp"

namespace examples {

// One evaluation.
struct EvalPoint {
  std::size_t batch = 0;            // training batches done
  std::size_t optimizer_steps = 0;
  std::size_t tokens_seen = 0;      // training tokens so far
  double train_time_s = 0;          // wall time of the training steps so far (evaluations excluded)
  double train_loss = NAN;          // mean CE of the training batches since the previous point
  double val_loss = NAN;            // mean token cross-entropy
  double val_accuracy = NAN;        // argmax == target
  std::size_t val_tokens = 0;       // tokens the two figures average over
  bool all_validation = false;      // the whole validation set (else a fixed subset)
};

struct RunResult {
  std::uint64_t seed = 0;
  std::vector<EvalPoint> curve;     // every evaluation, the last one included
  EvalPoint final;                  // = curve.back()
  double train_time_s = 0;          // training steps only
  double eval_time_s = 0;
  double tokens_per_s = 0;          // training throughput
  std::string model_file;           // where the trained model was saved ("" if it was not)
};

// What every run of an experiment shares.
struct RunPlan {
  Backend backend = Backend::cpu;  // which backend ModelSpec::train / evaluate run on
  const ablate::data::DataSplits* splits = nullptr;
  std::size_t batch = 16;
  std::size_t steps = 0;       // training batches
  std::size_t eval_every = 100;
  ablate::TrainConfig train;
  ablate::InitScheme init = ablate::InitScheme::Normal;  // how fresh models are initialised
  std::vector<std::size_t> eval_during;  // validation windows of the evaluations before the last
  std::vector<std::size_t> eval_final;   // validation windows of the last evaluation
  std::string label;                     // progress-bar prefix, e.g. "[2/15] mlp_512d seed 1"
  std::filesystem::path save_dir;        // save the trained model here (empty: do not save)
  std::map<std::string, std::string> save_metadata;  // example.* keys of the saved file
};

namespace detail {

inline void to_tokens(ablate::Tokens& inputs, ablate::Tokens& targets, const ablate::data::Batch& b) {
  if (inputs.batch() != b.batch || inputs.seq() != b.seq) {
    inputs = ablate::Tokens(b.batch, b.seq);
    targets = ablate::Tokens(b.batch, b.seq);
  }
  std::copy(b.inputs.begin(), b.inputs.end(), inputs.data());
  std::copy(b.targets.begin(), b.targets.end(), targets.data());
}

// Mean loss and accuracy over `windows` of `set`, in batches of `batch`, in eval mode.
template <class Model>
void evaluate(Model& model, const ablate::data::WindowSet& set, const std::vector<std::size_t>& windows,
              std::size_t batch, EvalPoint& point) {
  model.eval();
  double loss_sum = 0, correct = 0;
  std::size_t tokens = 0;
  ablate::Tokens inputs, targets;
  for (std::size_t first = 0; first < windows.size(); first += batch) {
    const std::size_t count = std::min(batch, windows.size() - first);
    const auto b = set.batch(std::span<const std::size_t>(windows).subspan(first, count));
    to_tokens(inputs, targets, b);
    const ablate::LossStats s = model.evaluate(inputs, targets);
    loss_sum += s.loss * static_cast<double>(s.tokens);
    correct += s.accuracy * static_cast<double>(s.tokens);
    tokens += s.tokens;
  }
  model.train(true);
  point.val_loss = loss_sum / static_cast<double>(tokens);
  point.val_accuracy = correct / static_cast<double>(tokens);
  point.val_tokens = tokens;
}

}  // namespace detail

// Trains a fresh Model<Arch, B> with `seed` (initialisation, dropout and the order of the training
// batches all follow it) and evaluates every plan.eval_every batches and at the end.
template <class Arch, class B>
RunResult train_run(const ablate::ModelConfig& cfg, const RunPlan& plan, std::uint64_t seed,
                    Progress& progress) {
  using Clock = std::chrono::steady_clock;
  using Model = ablate::Model<Arch, B>;
  Model model(cfg, seed, plan.init);
  ablate::Trainer<Model> trainer(model, plan.train);
  ablate::data::BatchSampler sampler(plan.splits->train, plan.batch, seed);
  const std::size_t tokens_per_batch = plan.batch * plan.splits->train.seq();

  RunResult result;
  result.seed = seed;
  ablate::Tokens inputs, targets;
  double loss_sum = 0;
  std::size_t loss_count = 0;
  double recent_loss = NAN;
  progress.begin(plan.label, plan.steps);
  for (std::size_t b = 1; b <= plan.steps; ++b) {
    const bool last = b == plan.steps, evaluate = b % plan.eval_every == 0 || last;
    const auto t0 = Clock::now();
    detail::to_tokens(inputs, targets, sampler.next());
    const ablate::TrainStep step = trainer.step(inputs, targets);
    // A device backend may still be running the step's backward: the next step's loss read-back
    // waits for it, so only the time before an evaluation needs the wait.
    if (evaluate) B::synchronize();
    result.train_time_s += std::chrono::duration<double>(Clock::now() - t0).count();
    loss_sum += step.stats.loss;
    ++loss_count;
    recent_loss = std::isfinite(recent_loss) ? 0.9 * recent_loss + 0.1 * step.stats.loss : step.stats.loss;
    progress.update(b, recent_loss,
                    static_cast<double>(b * tokens_per_batch) / std::max(1e-9, result.train_time_s));

    if (evaluate) {
      const auto e0 = Clock::now();
      EvalPoint point;
      point.batch = b;
      point.optimizer_steps = trainer.optimizer_steps();
      point.tokens_seen = b * tokens_per_batch;
      point.train_time_s = result.train_time_s;
      point.train_loss = loss_sum / static_cast<double>(loss_count);
      const auto& windows = last ? plan.eval_final : plan.eval_during;
      point.all_validation = windows.size() == plan.splits->validation.size();
      detail::evaluate(model, plan.splits->validation, windows, plan.batch, point);
      result.curve.push_back(point);
      loss_sum = 0;
      loss_count = 0;
      result.eval_time_s += std::chrono::duration<double>(Clock::now() - e0).count();
    }
  }
  result.final = result.curve.back();
  result.tokens_per_s =
      static_cast<double>(plan.steps * tokens_per_batch) / std::max(1e-9, result.train_time_s);
  if (!plan.save_dir.empty()) {
    const auto file = saved_model_path(plan.save_dir, plan.save_metadata.at(saved::model), seed);
    save_trained_model(model, file, plan.save_metadata, seed, result.final.val_loss,
                       result.final.val_accuracy, result.final.val_tokens);
    result.model_file = file.string();
  }
  return result;
}

// Loads the model saved in `file` (a Model<Arch> of ModelConfig `cfg`) onto backend B and runs
// the last evaluation of a training run on it: plan.eval_final windows of the validation set.
template <class Arch, class B>
EvalPoint evaluate_saved(const std::filesystem::path& file, const ablate::ModelConfig& cfg,
                         const RunPlan& plan) {
  ablate::Model<Arch, B> model(cfg, 0);
  ablate::io::load_weights(model, file);
  EvalPoint point;
  point.all_validation = plan.eval_final.size() == plan.splits->validation.size();
  detail::evaluate(model, plan.splits->validation, plan.eval_final, plan.batch, point);
  return point;
}

}  // namespace examples
