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
#include <stdexcept>
#include <string>
#include <vector>

#include <ablate/ablate.hpp>
#include <ablate/data/dataset.hpp>
#include <ablate/train/trainer.hpp>

#include "backend.hpp"
#include "progress.hpp"
#include "resume.hpp"
#include "run_record.hpp"
#include "saved_models.hpp"

namespace examples {

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
  std::string model;                     // the model's name in the experiment
  std::filesystem::path save_dir;        // save the trained model here (empty: do not save)
  std::map<std::string, std::string> save_metadata;  // example.* keys of the saved file
  // Checkpoints (resume.hpp): written to `checkpoint` when `stop` asks the run to stop and
  // every checkpoint_interval_s seconds of the run (0: only when it stops).
  std::filesystem::path checkpoint;      // empty: no checkpoints, and `stop` is not asked
  StopControl* stop = nullptr;
  double checkpoint_interval_s = 0;
  bool resume = false;                   // continue the run saved in `checkpoint`
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
// batches all follow it), or with plan.resume the one saved in plan.checkpoint, and evaluates
// every plan.eval_every batches and at the end.  Throws run_stopped, after writing the
// checkpoint, when plan.stop asks it to stop before its last batch.  A run whose loss or
// gradients become NaN or infinite ends there, as a diverged run: its last curve point has no
// figures (NaN) and RunResult::diverged says what happened; it is not saved.
template <class Arch, class B>
RunResult train_run(const ablate::ModelConfig& cfg, const RunPlan& plan, std::uint64_t seed,
                    Progress& progress) {
  using Clock = std::chrono::steady_clock;
  using Model = ablate::Model<Arch, B>;
  Model model(cfg, seed, plan.init);
  ablate::Trainer<Model> trainer(model, plan.train);
  ablate::data::BatchSampler sampler(plan.splits->train, plan.batch, seed);
  const std::size_t tokens_per_batch = plan.batch * plan.splits->train.seq();

  RunProgress at;
  if (plan.resume) {
    at = load_run_checkpoint(plan.checkpoint, model, trainer, plan.model, seed, plan.steps);
    sampler.seek(at.batch);
  }
  auto last_checkpoint = Clock::now();
  auto save_checkpoint = [&] {
    ablate::io::save_checkpoint(plan.checkpoint, model, trainer,
                                progress_metadata(plan.model, seed, at));
    last_checkpoint = Clock::now();
  };
  // An evaluation point after batch b, before its figures.
  auto point_after = [&](std::size_t b) {
    EvalPoint point;
    point.batch = b;
    point.optimizer_steps = trainer.optimizer_steps();
    point.tokens_seen = b * tokens_per_batch;
    point.train_time_s = at.train_time_s;
    return point;
  };
  ablate::Tokens inputs, targets;
  std::string diverged;
  progress.begin(plan.label, plan.steps, at.batch);
  for (std::size_t b = at.batch + 1; b <= plan.steps; ++b) {
    const bool last = b == plan.steps, evaluate = b % plan.eval_every == 0 || last;
    const auto t0 = Clock::now();
    detail::to_tokens(inputs, targets, sampler.next());
    ablate::TrainStep step;
    try {
      step = trainer.step(inputs, targets);
    } catch (const ablate::non_finite_error& e) {
      diverged = e.what();
      at.curve.push_back(point_after(b));  // the batch it diverged at, with no figures
      break;
    }
    // A device backend may still be running the step's backward: the next step's loss read-back
    // waits for it, so only the time before an evaluation needs the wait.
    if (evaluate) B::synchronize();
    at.batch = b;
    at.train_time_s += std::chrono::duration<double>(Clock::now() - t0).count();
    at.loss_sum += step.stats.loss;
    ++at.loss_count;
    at.recent_loss = std::isfinite(at.recent_loss) ? 0.9 * at.recent_loss + 0.1 * step.stats.loss
                                                   : step.stats.loss;
    progress.update(b, at.recent_loss,
                    static_cast<double>(b * tokens_per_batch) / std::max(1e-9, at.train_time_s));

    if (evaluate) {
      const auto e0 = Clock::now();
      EvalPoint point = point_after(b);
      point.train_loss = at.loss_sum / static_cast<double>(at.loss_count);
      const auto& windows = last ? plan.eval_final : plan.eval_during;
      point.all_validation = windows.size() == plan.splits->validation.size();
      detail::evaluate(model, plan.splits->validation, windows, plan.batch, point);
      at.curve.push_back(point);
      at.loss_sum = 0;
      at.loss_count = 0;
      at.eval_time_s += std::chrono::duration<double>(Clock::now() - e0).count();
    }
    if (plan.checkpoint.empty() || last) continue;
    plan.stop->count_batch();
    if (plan.stop->requested()) {
      save_checkpoint();
      throw run_stopped(plan.label + ": stopped after batch " + std::to_string(b) + " of " +
                            std::to_string(plan.steps) + " (" + plan.stop->reason() + ")",
                        plan.stop->exit_code());
    }
    if (plan.checkpoint_interval_s > 0 &&
        std::chrono::duration<double>(Clock::now() - last_checkpoint).count() >= plan.checkpoint_interval_s)
      save_checkpoint();
  }
  if (!plan.checkpoint.empty()) plan.stop->count_batch();  // the last batch

  RunResult result;
  result.seed = seed;
  result.curve = std::move(at.curve);
  result.final = result.curve.back();
  result.train_time_s = at.train_time_s;
  result.eval_time_s = at.eval_time_s;
  result.tokens_per_s = static_cast<double>(result.final.batch * tokens_per_batch) /
                        std::max(1e-9, result.train_time_s);
  result.diverged = std::move(diverged);
  if (!plan.save_dir.empty() && result.diverged.empty()) {
    const auto file = saved_model_path(plan.save_dir, plan.model, seed);
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
  const auto reader = ablate::io::SafetensorsReader::open(file);
  // (evaluate_saved_model checked the file already; a caller of this function may not have)
  ablate::io::check_weights_fit<Arch>(reader, cfg);  // before a model of an edited config allocates
  ablate::Model<Arch, B> model(cfg, 0);
  ablate::io::load_weights(model, reader);
  EvalPoint point;
  point.all_validation = plan.eval_final.size() == plan.splits->validation.size();
  detail::evaluate(model, plan.splits->validation, plan.eval_final, plan.batch, point);
  // Finite weights can still overflow (a config value edited to 1e308, say): no figures then.
  if (!std::isfinite(point.val_loss))
    throw std::runtime_error(file.string() + ": the model's validation loss is " +
                             (std::isnan(point.val_loss) ? "nan" : "infinite") +
                             ": its forward pass overflows (weights or config values too large?)");
  return point;
}

}  // namespace examples
