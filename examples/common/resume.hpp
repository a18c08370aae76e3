// Stopping and resuming an experiment (--stop-after, Ctrl-C, --resume).
//
// An experiment is a sequence of runs (model x seed).  results.json in the --out folder holds
// every finished run, rewritten after each one; OUT/checkpoint.safetensors holds the run in
// progress: an ablate training checkpoint (weights, optimizer moments, trainer counters, the
// dropout stream) plus what the run had measured (example.run.* metadata, below).  It is
// written when the run is asked to stop (SIGINT, SIGTERM, --stop-after) and every
// --checkpoint-every minutes, and removed when the run finishes.  --resume reloads the
// finished runs from results.json, continues the run in progress from the checkpoint and runs
// the rest: the figures equal those of an uninterrupted run to the last bit (the times do not).
#pragma once

#include <atomic>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include <ablate/data/file_io.hpp>
#include <ablate/io/checkpoint.hpp>

#include "run_record.hpp"
#include "saved_models.hpp"

namespace examples {

inline constexpr const char* kCheckpointFile = "checkpoint.safetensors";

// Exit statuses of a run that stopped on request: --stop-after (try again later, as
// sysexits' EX_TEMPFAIL) and a signal (128 + its number, as a shell reports it).
inline constexpr int kStoppedExitCode = 75;

namespace run_meta {
inline constexpr const char* model = "example.run.model";
inline constexpr const char* seed = "example.run.seed";
inline constexpr const char* batch = "example.run.batch";
inline constexpr const char* curve = "example.run.curve";
inline constexpr const char* train_time_s = "example.run.train_time_s";
inline constexpr const char* eval_time_s = "example.run.eval_time_s";
inline constexpr const char* loss_sum = "example.run.loss_sum";
inline constexpr const char* loss_count = "example.run.loss_count";
inline constexpr const char* recent_loss = "example.run.recent_loss";
}  // namespace run_meta

// Where a run stands between two batches: what its checkpoint holds beside the trainer's state.
struct RunProgress {
  std::size_t batch = 0;         // training batches done
  std::vector<EvalPoint> curve;  // evaluations so far
  double train_time_s = 0, eval_time_s = 0;
  double loss_sum = 0;           // training losses since the last evaluation
  std::size_t loss_count = 0;
  double recent_loss = NAN;      // the progress bar's moving average
};

// Thrown by a run (after it wrote its checkpoint) or between runs, when asked to stop.
class run_stopped : public std::runtime_error {
 public:
  run_stopped(const std::string& what, int exit_code)
      : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

namespace detail {
// Lock-free, so the handler may set it on any thread (OpenMP's or the CUDA runtime's too).
inline std::atomic<int> stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

inline void on_stop_signal(int sig) {
  int none = 0;
  stop_signal.compare_exchange_strong(none, sig);  // the first signal names the stop
  // Both signals back to their default: a second one, of either kind, ends the program at
  // once.  Async-signal-safe calls only (sigaction, write).
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGINT, &dfl, nullptr);
  sigaction(SIGTERM, &dfl, nullptr);
  constexpr char note[] = "\nstopping after this batch (a second signal stops at once)\n";
  [[maybe_unused]] const auto n = ::write(STDERR_FILENO, note, sizeof note - 1);
}
}  // namespace detail

// Asks the runs to stop between two batches: after SIGINT or SIGTERM, or once `budget`
// training batches (--stop-after) have run in this invocation.  Installs the signal handlers
// for its lifetime.
class StopControl {
 public:
  explicit StopControl(std::optional<std::size_t> budget) : budget_(budget) {
    detail::stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = &detail::on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~StopControl() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  StopControl(const StopControl&) = delete;
  StopControl& operator=(const StopControl&) = delete;

  void count_batch() {
    if (budget_ && *budget_ > 0) --*budget_;
  }
  bool requested() const { return detail::stop_signal != 0 || (budget_ && *budget_ == 0); }
  int exit_code() const {
    return detail::stop_signal != 0 ? 128 + detail::stop_signal : kStoppedExitCode;
  }
  std::string reason() const {
    if (detail::stop_signal == SIGINT) return "SIGINT";
    if (detail::stop_signal == SIGTERM) return "SIGTERM";
    return "--stop-after";
  }

 private:
  std::optional<std::size_t> budget_;
  struct sigaction old_int_ {}, old_term_ {};
};

// The run named in a checkpoint's metadata.
struct CheckpointRun {
  std::string model;
  std::uint64_t seed = 0;
  std::size_t batch = 0;
};

inline std::map<std::string, std::string> progress_metadata(const std::string& model,
                                                             std::uint64_t seed,
                                                             const RunProgress& at) {
  return {{run_meta::model, model},
          {run_meta::seed, std::to_string(seed)},
          {run_meta::batch, std::to_string(at.batch)},
          {run_meta::curve, curve_json(at.curve).dump()},
          {run_meta::train_time_s, exact_number(at.train_time_s)},
          {run_meta::eval_time_s, exact_number(at.eval_time_s)},
          {run_meta::loss_sum, exact_number(at.loss_sum)},
          {run_meta::loss_count, std::to_string(at.loss_count)},
          {run_meta::recent_loss, exact_number(at.recent_loss)}};
}

namespace detail {

inline const std::string& run_value(const ablate::io::SafetensorsReader& r, const char* key) {
  const std::string* v = r.metadata_value(key);
  if (v == nullptr)
    throw std::runtime_error(r.source() + ": not a checkpoint of an example run (no " + key + ")");
  return *v;
}

inline double run_number(const ablate::io::SafetensorsReader& r, const char* key) {
  const std::string& text = run_value(r, key);
  if (text == "nan" || text == "-nan") return NAN;
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size())
    throw std::runtime_error(r.source() + ": " + key + " is not a number: '" + text + "'");
  return v;
}

}  // namespace detail

// Which run a checkpoint is of; throws for a file that is not one.
inline CheckpointRun checkpoint_run(const ablate::io::SafetensorsReader& r) {
  using ablate::io::detail::metadata_integer;
  CheckpointRun run;
  run.model = detail::run_value(r, run_meta::model);
  run.seed = metadata_integer<std::uint64_t>(r, run_meta::seed);
  run.batch = metadata_integer<std::size_t>(r, run_meta::batch);
  return run;
}
inline CheckpointRun checkpoint_run(const std::filesystem::path& file) {
  return checkpoint_run(ablate::io::SafetensorsReader::open(file));
}

// Restores model, trainer and the run's measurements from the checkpoint of (model, seed), a
// run of `steps` batches.
template <class Model, class Trainer>
RunProgress load_run_checkpoint(const std::filesystem::path& file, Model& model, Trainer& trainer,
                                const std::string& model_name, std::uint64_t seed,
                                std::size_t steps) {
  const auto r = ablate::io::SafetensorsReader::open(file);
  const CheckpointRun run = checkpoint_run(r);
  if (run.model != model_name || run.seed != seed)
    throw std::runtime_error(file.string() + " holds " + run.model + " seed " +
                             std::to_string(run.seed) + ", not " + model_name + " seed " +
                             std::to_string(seed));
  // A run is checkpointed before its last batch only: after it, it is finished.
  if (run.batch >= steps)
    throw std::runtime_error(file.string() + ": a checkpoint after batch " + std::to_string(run.batch) +
                             " of a run of " + std::to_string(steps) + " batches");
  RunProgress at;
  at.batch = run.batch;
  try {
    at.curve = curve_of(json::parse(detail::run_value(r, run_meta::curve)));
  } catch (const std::exception& e) {
    throw std::runtime_error(file.string() + ": " + run_meta::curve + " is not a curve: " + e.what());
  }
  for (std::size_t i = 0; i < at.curve.size(); ++i) {
    const bool out_of_order = i > 0 && at.curve[i].batch <= at.curve[i - 1].batch;
    if (out_of_order || at.curve[i].batch > at.batch)
      throw std::runtime_error(file.string() + ": " + run_meta::curve + " has a point after batch " +
                               std::to_string(at.curve[i].batch) +
                               (out_of_order
                                    ? " that follows one after batch " + std::to_string(at.curve[i - 1].batch)
                                    : " in a run checkpointed after batch " + std::to_string(at.batch)));
  }
  at.train_time_s = detail::run_number(r, run_meta::train_time_s);
  at.eval_time_s = detail::run_number(r, run_meta::eval_time_s);
  at.loss_sum = detail::run_number(r, run_meta::loss_sum);
  at.loss_count = ablate::io::detail::metadata_integer<std::size_t>(r, run_meta::loss_count);
  at.recent_loss = detail::run_number(r, run_meta::recent_loss);
  ablate::io::load_checkpoint(r, model, trainer);
  if (trainer.batches() != at.batch)
    throw std::runtime_error(file.string() + ": the trainer has run " +
                             std::to_string(trainer.batches()) + " batches, the run says " +
                             std::to_string(at.batch));
  return at;
}

// OUT/results.json, or nullopt where there is none.  A file that does not parse is an error
// when it is needed (`required`, for --resume) and is otherwise taken as absent.
inline std::optional<json> read_results(const std::filesystem::path& file, bool required) {
  if (!std::filesystem::exists(file)) return std::nullopt;
  try {
    // (a pipe would block until something writes to it)
    if (!std::filesystem::is_regular_file(file)) throw std::runtime_error("not a regular file");
    json doc = json::parse(ablate::data::read_file(file));
    if (!doc.is_object() || !doc.contains("complete") || !doc.at("complete").is_boolean())
      throw std::runtime_error("not the results.json of an experiment program");
    return doc;
  } catch (const std::exception& e) {
    if (!required) return std::nullopt;
    throw std::runtime_error("cannot resume from " + file.string() + ": " + e.what());
  }
}

inline std::size_t finished_runs(const json& results) {
  std::size_t n = 0;
  for (const json& m : results.value("models", json::array())) n += m.value("runs", json::array()).size();
  return n;
}

// Throws unless results.json of an unfinished experiment (`previous`) was written by the same
// experiment as `current` (the document this command line starts): same program, library
// version, protocol, preset, backend, threads, GPU and its attention kernels, sizes, schedule,
// seeds, data and models.
inline void check_resumable(const json& previous, const json& current, const std::filesystem::path& file) {
  auto differs = [&](const std::string& what, const json& was, const json& now) {
    std::string a = was.dump(), b = now.dump();
    if (a.size() > 200) a = a.substr(0, 200) + "...";
    if (b.size() > 200) b = b.substr(0, 200) + "...";
    throw std::runtime_error("cannot resume " + file.string() + ": it was started with another " +
                             what + " (" + a + ", this command line: " + b +
                             "); resume with the command line that started it (" +
                             previous.value("command_line", std::string("?")) + ")");
  };
  // Equal JSON whatever the order of the keys (a results.json another tool rewrote, keys
  // sorted, resumes); a difference is named down to the innermost key.
  auto same = [](const json& a, const json& b) {
    return a == b || nlohmann::json::parse(a.dump()) == nlohmann::json::parse(b.dump());
  };
  std::function<void(const std::string&, const json&, const json&)> compare =
      [&](const std::string& what, const json& was, const json& now) {
        if (same(was, now)) return;
        if (was.is_object() && now.is_object()) {
          for (const auto& [key, value] : now.items())
            compare(what + "." + key, was.contains(key) ? was.at(key) : json(nullptr), value);
          for (const auto& [key, value] : was.items())
            if (!now.contains(key)) differs(what + "." + key, value, json(nullptr));
        }
        differs(what, was, now);
      };
  for (const char* key : {"program", "ablate_version", "protocol", "preset", "backend", "config"})
    compare(key, previous.value(key, json(nullptr)), current.at(key));
  // The data by content, not by where it was read from; results.json files written before the
  // corpus fingerprint was recorded are compared with their paths.
  json data_was = previous.value("data", json(nullptr)), data_now = current.at("data");
  if (data_was.is_object() && data_was.contains("corpus_fingerprint")) {
    for (json* data : {&data_was, &data_now}) {
      data->erase("text_files");
      if (data->contains("tokenizer") && data->at("tokenizer").is_object())
        for (const char* path : {"encoder_json", "vocab_bpe"}) data->at("tokenizer").erase(path);
    }
  } else {
    data_now.erase("corpus_fingerprint");
  }
  compare("data", data_was, data_now);
  const json machine = previous.value("machine", json::object());
  compare("thread count", machine.value("threads_used", json(nullptr)),
          current.at("machine").at("threads_used"));
  compare("GPU", machine.value("gpu", json(nullptr)), current.at("machine").value("gpu", json(nullptr)));
  // (files written before the choice was recorded cannot say it: not compared)
  if (machine.contains("cuda_attention"))
    compare("CUDA attention kernel choice (ABLATE_CUDA_ATTENTION)", machine.at("cuda_attention"),
            current.at("machine").value("cuda_attention", json(nullptr)));
  const json& was = previous.value("models", json::array());
  const json& now = current.at("models");
  json was_names = json::array(), now_names = json::array();
  for (const json& m : was) was_names.push_back(m.value("name", ""));
  for (const json& m : now) now_names.push_back(m.at("name"));
  compare("list of models", was_names, now_names);
  for (std::size_t i = 0; i < now.size(); ++i) {
    const std::string name = now[i].at("name").get<std::string>();
    compare(name + " architecture", was[i].value("architecture", json(nullptr)), now[i].at("architecture"));
    compare(name + " config", was[i].value("config", json(nullptr)), now[i].at("config"));
  }
}

}  // namespace examples
