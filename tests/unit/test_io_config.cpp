// ModelConfig and TrainConfig as JSON: every field round-trips (non-finite doubles too), and
// wrong types, unknown fields and out-of-range integers are refused by name.
#include <doctest/doctest.h>

#include <ablate/ablate.hpp>
#include <ablate/io/config_json.hpp>
#include <ablate/io/io.hpp>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "io_test_util.hpp"
#include "test_configs.hpp"

namespace {

using namespace ablate;
namespace io = ablate::io;

constexpr double kInf = std::numeric_limits<double>::infinity();

std::string error_of(const nlohmann::json& j) {
  try {
    (void)io::train_config_from_json(j);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("config JSON: every field round-trips, inf and NaN included") {
  ModelConfig m = test::small_moe_model_config();
  m.rope_theta = 12345.678901234567;
  m.router_noise_std = std::numeric_limits<double>::quiet_NaN();
  const ModelConfig m2 = io::model_config_from_json(nlohmann::json::parse(io::to_json(m).dump()));
  CHECK(io::config_differences(m, m2).empty());
  CHECK(m2.rope_theta == m.rope_theta);
  CHECK(std::isnan(m2.router_noise_std));

  TrainConfig t;
  t.grad_clip = kInf;  // no clipping
  t.min_lr_ratio = -kInf;
  t.optimizer.muon.ns_steps = 3;
  t.total_batches = 77;
  const auto text = io::to_json(t).dump();
  CHECK(text.find("\"grad_clip\":\"inf\"") != std::string::npos);
  const TrainConfig t2 = io::train_config_from_json(nlohmann::json::parse(text));
  CHECK(io::config_differences(t, t2).empty());
  CHECK(t2.grad_clip == kInf);
  CHECK(t2.min_lr_ratio == -kInf);
  CHECK(t2.optimizer.muon.ns_steps == 3);
  CHECK(t2.total_batches == 77);
  // A difference in a non-finite field is still reported.
  TrainConfig t3 = t;
  t3.grad_clip = 1.0;
  CHECK(io::config_differences(t, t3).size() == 1);
}

TEST_CASE("config JSON: wrong types, unknown fields and out-of-range integers are refused") {
  using nlohmann::json;
  CHECK(error_of(json::array()) == "TrainConfig JSON: expected a JSON object, got array");
  CHECK(error_of({{"grad_clip", nullptr}}).find("field grad_clip must be a number") !=
        std::string::npos);
  CHECK(error_of({{"grad_clip", "infinity"}}).find("field grad_clip must be a number") !=
        std::string::npos);
  CHECK(error_of({{"optimizer.muon.nesterov", 1}}).find("must be a boolean") != std::string::npos);
  CHECK(error_of({{"total_batches", -1}}).find("must be a non-negative integer") !=
        std::string::npos);
  CHECK(error_of({{"total_batches", 1.5}}).find("must be a non-negative integer") !=
        std::string::npos);
  CHECK(error_of({{"grad_clips", 1.0}}) == "TrainConfig JSON: unknown field 'grad_clips'");
  // A signed field: above INT64_MAX, the value would wrap to -1 if read as int64.
  CHECK(error_of(json::parse(R"({"optimizer.muon.ns_steps": 18446744073709551615})"))
            .find("ns_steps = 18446744073709551615 is out of range") != std::string::npos);
  CHECK(error_of({{"optimizer.muon.ns_steps", std::int64_t{1} << 40}}).find("is out of range") !=
        std::string::npos);
  CHECK(error_of({{"optimizer.muon.ns_steps", "5"}}).find("must be an integer") !=
        std::string::npos);
  // Missing fields keep their defaults (older files load).
  CHECK(io::train_config_from_json(json::object()).grad_clip == TrainConfig{}.grad_clip);
}

TEST_CASE("config JSON: a checkpoint of a run without clipping loads back") {
  using Arch = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
  io_test::TempDir dir;
  const auto cfg = test::small_model_config();
  TrainConfig tcfg;
  tcfg.grad_clip = kInf;
  tcfg.total_batches = 4;
  Model<Arch, CPU> model(cfg, 3);
  Trainer<Model<Arch, CPU>> trainer(model, tcfg);
  io::save_checkpoint(dir / "c.safetensors", model, trainer);
  Model<Arch, CPU> again(cfg, 3);
  Trainer<Model<Arch, CPU>> again_trainer(again, tcfg);
  CHECK_NOTHROW(io::load_checkpoint(dir / "c.safetensors", again, again_trainer));
}
