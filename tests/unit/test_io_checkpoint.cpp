// Training checkpoints: N batches straight must equal N/2 batches, save, load into fresh
// objects, N/2 more -- losses and parameters bit for bit -- with dropout on, for a dense MHA
// model, an MLA model and a GLM4 MoE with bias balancing; and mismatches are refused.
#include <doctest/doctest.h>

#include <ablate/ablate.hpp>
#include <ablate/data/file_io.hpp>
#include <ablate/io/io.hpp>
#include <ablate/train/trainer.hpp>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "resume_test_util.hpp"
#include "test_configs.hpp"

namespace {

using namespace ablate;
namespace io = ablate::io;
using resume_test::kBatches;
using resume_test::train;
using resume_test::train_config;

using DenseArch = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
using MlaArch = Architecture<Attention<MLA>, FFN<MLP>, Norm<LN>, Placement<PostNorm>>;
using MoeArch = Architecture<Attention<MHA>, FFN<Glm4MoE<4, 2>>, Norm<RMS>>;

template <class M>
bool same_tensors(const M& a, const M& b) {
  for (const auto& p : a.parameters()) {
    const auto* q = b.parameters().find(p.name);
    if (q == nullptr ||
        std::memcmp(p.value.data(), q->value.data(), sizeof(float) * p.numel()) != 0)
      return false;
  }
  for (std::size_t i = 0; i < a.layers().size(); ++i) {
    if constexpr (requires { a.layers()[i].ffn().router().e_score_correction_bias(); }) {
      const auto& x = a.layers()[i].ffn().router().e_score_correction_bias();
      const auto& y = b.layers()[i].ffn().router().e_score_correction_bias();
      if (std::memcmp(x.data(), y.data(), sizeof(float) * static_cast<std::size_t>(x.size())) != 0)
        return false;
    }
  }
  return true;
}

// Copies checkpoint `from` to `to` with element `at` of tensor `name` set to `value`.
void with_value(const std::filesystem::path& from, const std::filesystem::path& to,
                const std::string& name, std::size_t at, float value) {
  const auto r = io::SafetensorsReader::open(from);
  io::SafetensorsWriter w;
  for (const auto& [k, v] : r.metadata()) w.set_metadata(k, v);
  for (const auto& info : r.tensors()) {
    if (info.name != name) {
      w.add_raw(info.name, info.dtype, info.shape, r.read_bytes(info));
      continue;
    }
    auto values = r.read<float>(info.name);
    values.at(at) = value;
    w.add(info.name, info.dtype, info.shape, values);
  }
  w.write(to);
}

}  // namespace

TEST_CASE_TEMPLATE("checkpoint: resume is bit-exact", Arch, DenseArch, MlaArch, MoeArch) {
  using M = Model<Arch, CPU>;
  io_test::TempDir dir;
  const auto cfg = test::small_moe_model_config();
  const auto tcfg = train_config();

  M straight(cfg, 7);
  Trainer<M> straight_trainer(straight, tcfg);
  std::vector<double> straight_losses;
  train(straight_trainer, 0, kBatches, straight_losses);

  // 4 ends an accumulation group; 3 and 5 fall inside one (gradients and router loads pending).
  bool bias_moved = false;
  for (std::size_t split : {std::size_t{4}, std::size_t{3}, std::size_t{5}}) {
    CAPTURE(split);
    std::vector<double> losses;
    const auto path = dir / ("ckpt-" + std::to_string(split) + ".safetensors");
    std::vector<std::vector<std::size_t>> pending;  // GLM4 router loads since the last step
    {
      M first(cfg, 7);
      Trainer<M> trainer(first, tcfg);
      train(trainer, 0, split, losses);
      if constexpr (std::is_same_v<Arch, MoeArch>) {
        for (const auto& layer : first.layers()) {
          bias_moved = bias_moved ||
                       layer.ffn().router().e_score_correction_bias().cwiseAbs().maxCoeff() > 0;
          pending.push_back(layer.ffn().router().pending_load());
        }
      }
      io::save_checkpoint(path, first, trainer, {{"note", "half way"}});
    }
    M resumed(cfg, 12345);  // another seed: everything must come from the checkpoint
    Trainer<M> trainer(resumed, tcfg);
    io::load_checkpoint(path, resumed, trainer);
    if constexpr (std::is_same_v<Arch, MoeArch>) {
      for (std::size_t l = 0; l < pending.size(); ++l) {
        CHECK(resumed.layers()[l].ffn().router().pending_load() == pending[l]);
        CHECK(std::accumulate(pending[l].begin(), pending[l].end(), std::size_t{0}) ==
              (split % 2) * 2 * 8 * 2);
      }
    }
    CHECK(trainer.batches() == split);
    CHECK(trainer.optimizer_steps() == split / 2);
    train(trainer, split, kBatches, losses);

    REQUIRE(losses.size() == straight_losses.size());
    for (std::size_t i = 0; i < losses.size(); ++i) {
      CAPTURE(i);
      CHECK(std::memcmp(&losses[i], &straight_losses[i], sizeof(double)) == 0);
    }
    CHECK(same_tensors(straight, resumed));
    CHECK(resumed.rng().counter() == straight.rng().counter());
    CHECK(trainer.optimizer().adamw().steps() == straight_trainer.optimizer().adamw().steps());
  }

  // The balancing really moved the biases, so the test covers restoring them.
  if constexpr (std::is_same_v<Arch, MoeArch>) CHECK(bias_moved);
}

TEST_CASE("checkpoint: the test above would notice missing state") {
  io_test::TempDir dir;
  using M = Model<MoeArch, CPU>;
  const auto cfg = test::small_moe_model_config();
  const auto tcfg = train_config();
  M straight(cfg, 7);
  Trainer<M> straight_trainer(straight, tcfg);
  std::vector<double> straight_losses;
  train(straight_trainer, 0, kBatches, straight_losses);

  std::vector<double> losses;
  M first(cfg, 7);
  Trainer<M> first_trainer(first, tcfg);
  train(first_trainer, 0, 4, losses);
  io::save_weights(first, dir / "w.safetensors");
  // Weights alone (fresh optimizer, fresh RNG position) do not continue the same run.
  M resumed(cfg, 7);
  Trainer<M> trainer(resumed, tcfg);
  io::load_weights(resumed, dir / "w.safetensors");
  trainer.set_progress(4, 2);
  train(trainer, 4, kBatches, losses);
  CHECK(losses != straight_losses);
  CHECK_FALSE(same_tensors(straight, resumed));
}

TEST_CASE("checkpoint: mismatched models, trainers and files are refused, and a failed save changes nothing") {
  io_test::TempDir dir;
  using M = Model<DenseArch, CPU>;
  const auto cfg = test::small_moe_model_config();
  const auto tcfg = train_config();
  M model(cfg, 1);
  Trainer<M> trainer(model, tcfg);
  std::vector<double> losses;
  train(trainer, 0, 2, losses);
  const auto path = dir / "ckpt.safetensors";
  io::save_checkpoint(path, model, trainer);

  SUBCASE("a save that fails on a full disk leaves the previous checkpoint, which loads") {
    const std::string before = data::read_file(path);
    M saved(cfg, 1);
    Trainer<M> saved_trainer(saved, tcfg);
    io::load_checkpoint(path, saved, saved_trainer);
    train(trainer, 2, 4, losses);
    std::string message;
    {
      io_test::FileSizeLimit full(before.size() / 2);
      message = io_test::io_error_of([&] { io::save_checkpoint(path, model, trainer); });
    }
    CHECK(message == "cannot write " + path.string() +
                         ": File too large (the previous file, if any, is unchanged)");
    CHECK(data::read_file(path) == before);
    CHECK(dir.listing() == "ckpt.safetensors\n");
    M resumed(cfg, 9);
    Trainer<M> resumed_trainer(resumed, tcfg);
    io::load_checkpoint(path, resumed, resumed_trainer);
    CHECK(same_tensors(resumed, saved));
    CHECK_FALSE(same_tensors(resumed, model));
    CHECK(resumed_trainer.optimizer_steps() == saved_trainer.optimizer_steps());
  }
  SUBCASE("another architecture: the error names both") {
    using Other = Model<MoeArch, CPU>;
    Other other(cfg, 1);
    Trainer<Other> other_trainer(other, tcfg);
    CHECK_THROWS_WITH_AS(io::load_checkpoint(path, other, other_trainer),
                         doctest::Contains(("a checkpoint of architecture '" + DenseArch::name() +
                                            "' cannot be loaded into a model of architecture '" +
                                            MoeArch::name() + "'")
                                               .c_str()),
                         invalid_input);
  }
  SUBCASE("another ModelConfig") {
    auto changed = cfg;
    changed.hidden_dropout = 0.2;
    M other(changed, 1);
    Trainer<M> other_trainer(other, tcfg);
    CHECK_THROWS_WITH_AS(io::load_checkpoint(path, other, other_trainer),
                         doctest::Contains("ModelConfig differs from the model's (checkpoint vs "
                                           "model): hidden_dropout: 0.1 vs 0.2"),
                         invalid_input);
  }
  SUBCASE("another TrainConfig") {
    auto changed = tcfg;
    changed.optimizer.adamw.beta2 = 0.95;
    M other(cfg, 1);
    Trainer<M> other_trainer(other, changed);
    CHECK_THROWS_WITH_AS(io::load_checkpoint(path, other, other_trainer),
                         doctest::Contains("TrainConfig differs from the trainer's (checkpoint vs "
                                           "trainer): optimizer.adamw.beta2: 0.999 vs 0.95"),
                         invalid_input);
  }
  SUBCASE("a trainer built for another model") {
    M other(cfg, 1), stranger(cfg, 2);
    Trainer<M> stranger_trainer(stranger, tcfg);
    CHECK_THROWS_WITH_AS(io::load_checkpoint(path, other, stranger_trainer),
                         doctest::Contains("was the trainer built for another model?"),
                         invalid_input);
  }
  SUBCASE("a weights file is not a checkpoint, but a checkpoint's weights load") {
    io::save_weights(model, dir / "w.safetensors");
    M other(cfg, 1);
    Trainer<M> other_trainer(other, tcfg);
    CHECK_THROWS_WITH_AS(io::load_checkpoint(dir / "w.safetensors", other, other_trainer),
                         doctest::Contains("not a training checkpoint"), invalid_input);
    M fresh(cfg, 5);
    io::load_weights(fresh, path);
    CHECK(same_tensors(model, fresh));
  }
  SUBCASE("a missing optimizer tensor") {
    const auto r = io::SafetensorsReader::open(path);
    CHECK(r.find("optimizer.adamw.exp_avg.embed_tokens.weight") != nullptr);
    CHECK(r.find("optimizer.adamw.exp_avg_sq.norm.weight") != nullptr);
    CHECK(r.find("optimizer.muon.momentum_buffer.layers.0.mlp.up_proj.weight") != nullptr);
    CHECK(r.find("trainer.grad.norm.weight") == nullptr);  // saved at an accumulation boundary
    CHECK(*r.metadata_value("ablate.trainer.batches") == "2");
    CHECK(*r.metadata_value("ablate.rng.seed") == "1");
    io::SafetensorsWriter w;
    for (const auto& [k, v] : r.metadata()) w.set_metadata(k, v);
    for (const auto& info : r.tensors())
      if (info.name != "optimizer.muon.momentum_buffer.layers.0.mlp.up_proj.weight")
        w.add_raw(info.name, info.dtype, info.shape, r.read_bytes(info));
    w.write(dir / "cut.safetensors");
    M other(cfg, 1);
    Trainer<M> other_trainer(other, tcfg);
    const auto before = other.parameters().at("norm.weight").value;
    CHECK_THROWS_WITH_AS(
        io::load_checkpoint(dir / "cut.safetensors", other, other_trainer),
        doctest::Contains(
            "checkpoint lacks tensor 'optimizer.muon.momentum_buffer.layers.0.mlp.up_proj.weight'"),
        invalid_input);
    CHECK(other.parameters().at("norm.weight").value == before);
    CHECK(other_trainer.batches() == 0);
  }
  SUBCASE("a NaN in an optimizer moment") {
    const std::string moment = "optimizer.adamw.exp_avg_sq.norm.weight";
    with_value(path, dir / "nan.safetensors", moment, 5, NAN);
    M other(cfg, 1);
    Trainer<M> other_trainer(other, tcfg);
    const auto before = other.parameters().at("embed_tokens.weight").value;
    CHECK_THROWS_WITH_AS(io::load_checkpoint(dir / "nan.safetensors", other, other_trainer),
                         doctest::Contains(("tensor '" + moment + "' element 5 is NaN or infinite").c_str()),
                         invalid_input);
    CHECK(other.parameters().at("embed_tokens.weight").value == before);
    CHECK(other_trainer.batches() == 0);
  }
  SUBCASE("an infinite gradient inside an accumulation group loads; the group's step refuses it") {
    train(trainer, 2, 3, losses);  // one batch into the second group
    const auto mid = dir / "mid.safetensors";
    io::save_checkpoint(mid, model, trainer);
    with_value(mid, dir / "inf-grad.safetensors", "trainer.grad.norm.weight", 0, INFINITY);
    M other(cfg, 1);
    Trainer<M> other_trainer(other, tcfg);
    io::load_checkpoint(dir / "inf-grad.safetensors", other, other_trainer);
    CHECK(other_trainer.batches() == 3);
    CHECK_THROWS_WITH_AS(other_trainer.step(resume_test::batch(3, 0), resume_test::batch(3, 1)),
                         doctest::Contains("the gradient norm of optimizer step 2 is inf"),
                         non_finite_error);
  }
  SUBCASE("step counts that no run makes") {
    // The saved file with one metadata value replaced.
    auto with_count = [&](const char* key, const std::string& value) {
      const auto r = io::SafetensorsReader::open(path);
      io::SafetensorsWriter w;
      for (const auto& [k, v] : r.metadata()) w.set_metadata(k, k == key ? value : v);
      for (const auto& info : r.tensors()) w.add_raw(info.name, info.dtype, info.shape, r.read_bytes(info));
      const auto edited = dir / "edited.safetensors";
      w.write(edited);
      return edited;
    };
    M other(cfg, 1);
    Trainer<M> other_trainer(other, tcfg);
    auto refused = [&](const char* key, const std::string& value, const char* message) {
      CHECK_THROWS_WITH_AS(io::load_checkpoint(with_count(key, value), other, other_trainer),
                           doctest::Contains(message), invalid_input);
      CHECK(other_trainer.batches() == 0);
    };
    refused("ablate.trainer.optimizer_steps", "2",
            "2 optimizer steps after 2 batches of 2-batch gradient accumulation, which make 1");
    refused("ablate.trainer.batches", "18446744073709551614", "a step count exceeds 2^53");
    refused("ablate.adamw.steps", "9223372036854775807", "a step count exceeds 2^53");
    refused("ablate.muon.steps", "2", "more AdamW (1) or Muon (2) steps than optimizer steps (1)");
  }
}
