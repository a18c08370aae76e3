// What one training run produces: its evaluations and timings, and their JSON form in
// results.json, which reads back to the same values (a resumed experiment reloads its finished
// runs from there).
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace examples {

using json = nlohmann::ordered_json;

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
  std::string diverged;             // why training stopped at a NaN or inf ("" if it did not)
};

// JSON has no NaN or infinity: they are written as null and read back as NaN.
inline json num(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }
inline double num_of(const json& j) { return j.is_null() ? NAN : j.get<double>(); }

inline json point_json(const EvalPoint& p) {
  return json{{"batch", p.batch},
              {"optimizer_steps", p.optimizer_steps},
              {"tokens_seen", p.tokens_seen},
              {"train_time_s", p.train_time_s},
              {"train_loss", num(p.train_loss)},
              {"val_loss", num(p.val_loss)},
              {"val_accuracy", num(p.val_accuracy)},
              {"val_perplexity", num(std::exp(p.val_loss))},
              {"val_tokens", p.val_tokens},
              {"all_validation", p.all_validation}};
}

// A count or a seed: a whole number >= 0 (JSON's -1, 0.5 or 1e20 would convert to garbage).
inline std::uint64_t count_of(const json& j, const char* key) {
  const json& v = j.at(key);
  if (!v.is_number_unsigned())
    throw std::runtime_error(std::string(key) + " is " + v.dump() + ", not a whole number >= 0");
  return v.get<std::uint64_t>();
}

// Throws for a missing key or a value of another type.
inline EvalPoint point_of(const json& j) {
  EvalPoint p;
  p.batch = count_of(j, "batch");
  p.optimizer_steps = count_of(j, "optimizer_steps");
  p.tokens_seen = count_of(j, "tokens_seen");
  p.train_time_s = j.at("train_time_s").get<double>();
  p.train_loss = num_of(j.at("train_loss"));
  p.val_loss = num_of(j.at("val_loss"));
  p.val_accuracy = num_of(j.at("val_accuracy"));
  p.val_tokens = count_of(j, "val_tokens");
  p.all_validation = j.at("all_validation").get<bool>();
  return p;
}

inline json curve_json(const std::vector<EvalPoint>& curve) {
  json points = json::array();
  for (const EvalPoint& p : curve) points.push_back(point_json(p));
  return points;
}

inline std::vector<EvalPoint> curve_of(const json& j) {
  if (!j.is_array()) throw std::runtime_error("a curve is a list of evaluations, not " + j.dump());
  std::vector<EvalPoint> curve;
  for (const json& p : j) curve.push_back(point_of(p));
  return curve;
}

inline json run_json(const RunResult& r) {
  json run{{"seed", r.seed},
           {"val_loss", num(r.final.val_loss)},
           {"val_accuracy", num(r.final.val_accuracy)},
           {"val_perplexity", num(std::exp(r.final.val_loss))},
           {"train_time_s", r.train_time_s},
           {"eval_time_s", r.eval_time_s},
           {"tokens_per_s", r.tokens_per_s}};
  if (!r.model_file.empty()) run["model_file"] = r.model_file;
  if (!r.diverged.empty()) run["diverged"] = r.diverged;
  run["curve"] = curve_json(r.curve);
  return run;
}

inline RunResult run_of(const json& j) {
  RunResult r;
  r.seed = count_of(j, "seed");
  r.curve = curve_of(j.at("curve"));
  if (r.curve.empty()) throw std::runtime_error("a finished run without evaluations");
  r.final = r.curve.back();
  r.train_time_s = j.at("train_time_s").get<double>();
  r.eval_time_s = j.at("eval_time_s").get<double>();
  r.tokens_per_s = j.at("tokens_per_s").get<double>();
  if (j.contains("model_file")) r.model_file = j.at("model_file").get<std::string>();
  if (j.contains("diverged")) r.diverged = j.at("diverged").get<std::string>();
  return r;
}

}  // namespace examples
