// What --resume and --evaluate read back: a finished run of results.json, the checkpoint of the
// run in progress, a saved model.  Hand-edited values must be refused, not converted: a seed of
// -1 or 1e20 read as 2^64 - 1, a checkpoint after a run's last batch (whose run then had no final
// evaluation), a saved model whose forward overflows (reported as a loss of nan).
#include <doctest/doctest.h>

#include <ablate/ablate.hpp>
#include <ablate/train/trainer.hpp>
#include <filesystem>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>
#include <unistd.h>

#include "common/resume.hpp"
#include "common/training.hpp"

namespace {

using namespace examples;
using Arch = ablate::Architecture<ablate::Attention<ablate::MHA>, ablate::FFN<ablate::GatedMLP>,
                                  ablate::Norm<ablate::RMS>>;
using Model = ablate::Model<Arch, ablate::CPU>;

ablate::ModelConfig tiny_config() {
  ablate::ModelConfig cfg;
  cfg.vocab_size = 40;
  cfg.hidden_size = 16;
  cfg.num_attention_heads = 2;
  cfg.num_hidden_layers = 1;
  cfg.intermediate_size = 32;
  cfg.max_position_embeddings = 8;
  return cfg;
}

EvalPoint point_at(std::size_t batch) {
  EvalPoint p;
  p.batch = batch;
  p.val_loss = 3.5;
  p.val_accuracy = 0.25;
  p.val_tokens = 64;
  return p;
}

// The message of the exception f throws, or "".
template <class F>
std::string refusal(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("run records: a finished run's seed and counts must be whole numbers >= 0") {
  RunResult r;
  r.seed = 3;
  r.curve = {point_at(4), point_at(8)};
  r.final = r.curve.back();
  const json good = run_json(r);
  CHECK(run_of(good).seed == 3);
  CHECK(run_of(good).final.batch == 8);
  for (const char* seed : {"-1", "0.5", "1e20", "\"3\"", "null"}) {
    CAPTURE(seed);
    json edited = good;
    edited["seed"] = json::parse(seed);
    CHECK(refusal([&] { (void)run_of(edited); }) ==
          std::string("seed is ") + json::parse(seed).dump() + ", not a whole number >= 0");
  }
  json edited = good;
  edited["curve"][0]["batch"] = -4;
  CHECK(refusal([&] { (void)run_of(edited); }) == "batch is -4, not a whole number >= 0");
  edited = good;
  edited["curve"][1]["val_tokens"] = 1e300;
  CHECK(refusal([&] { (void)run_of(edited); }).find("val_tokens is 1e+300") == 0);
  edited = good;
  edited["curve"] = nullptr;
  CHECK(refusal([&] { (void)run_of(edited); }) == "a curve is a list of evaluations, not null");
}

TEST_CASE("run records: a checkpoint must be of a batch before the run's last, with its curve in order") {
  const auto file = std::filesystem::temp_directory_path() /
                    ("ablate-run-record-test-" + std::to_string(::getpid()) + ".safetensors");
  Model model(tiny_config(), 1);
  ablate::Trainer<Model> trainer(model, ablate::TrainConfig{});
  auto save_at = [&](std::size_t batch, std::vector<EvalPoint> curve) {
    RunProgress at;
    at.batch = batch;
    at.curve = std::move(curve);
    ablate::io::save_checkpoint(file, model, trainer, progress_metadata("m", 0, at));
  };
  auto load = [&](std::size_t steps) {
    Model other(tiny_config(), 2);
    ablate::Trainer<Model> other_trainer(other, ablate::TrainConfig{});
    return refusal([&] { (void)load_run_checkpoint(file, other, other_trainer, "m", 0, steps); });
  };
  save_at(0, {});
  CHECK(load(8).empty());  // (the trainer has run no batch either)
  save_at(8, {point_at(4), point_at(8)});
  CHECK(load(8).find(": a checkpoint after batch 8 of a run of 8 batches") != std::string::npos);
  CHECK(load(4).find(": a checkpoint after batch 8 of a run of 4 batches") != std::string::npos);
  save_at(6, {point_at(4), point_at(2)});
  CHECK(load(8).find("has a point after batch 2 that follows one after batch 4") != std::string::npos);
  save_at(6, {point_at(8)});
  CHECK(load(16).find("has a point after batch 8 in a run checkpointed after batch 6") !=
        std::string::npos);
  std::filesystem::remove(file);
}

TEST_CASE("run records: a saved model whose forward overflows gives no figures") {
  const auto file = std::filesystem::temp_directory_path() /
                    ("ablate-saved-eval-test-" + std::to_string(::getpid()) + ".safetensors");
  auto stream = std::make_shared<std::vector<std::int32_t>>(40);
  std::iota(stream->begin(), stream->end(), 0);
  ablate::data::DataSplits splits;
  splits.validation = ablate::data::WindowSet(stream, {0, 8, 16}, 8);
  RunPlan plan;
  plan.splits = &splits;
  plan.batch = 2;
  plan.eval_final = {0, 1, 2};

  Model model(tiny_config(), 1);
  ablate::io::save_weights(model, file);
  const EvalPoint point = evaluate_saved<Arch, ablate::CPU>(file, tiny_config(), plan);
  CHECK(point.val_tokens == 3 * 8);
  CHECK(std::isfinite(point.val_loss));

  // Finite weights whose logits overflow float.
  model.parameters().at("norm.weight").value.setConstant(std::numeric_limits<float>::max());
  ablate::io::save_weights(model, file);
  const std::string refused =
      refusal([&] { (void)evaluate_saved<Arch, ablate::CPU>(file, tiny_config(), plan); });
  CHECK(refused.find(": the model's validation loss is ") != std::string::npos);
  CHECK(refused.find(": its forward pass overflows") != std::string::npos);
  std::filesystem::remove(file);
}
