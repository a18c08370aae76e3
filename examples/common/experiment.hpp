// The shared main() of the experiment programs: flags -> data -> every model on every seed ->
// ranking table, results.json, plots and (--save-models) the trained models; or, with
// --evaluate FILE, the evaluation of one saved model.  A program only describes its models.
// --backend picks the backend the models train and evaluate on (common/backend.hpp).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <exception>
#include <filesystem>
#include <iostream>
#include <new>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <ablate/backend/cpu/memory.hpp>
#include <ablate/data/atomic_file.hpp>
#include <ablate/version.hpp>

#include "backend.hpp"
#include "corpus.hpp"
#include "models.hpp"
#include "progress.hpp"
#include "report.hpp"
#include "resume.hpp"
#include "saved_models.hpp"
#include "settings.hpp"

namespace examples {

inline constexpr std::size_t kGpt2Vocab = 50257;

// The skeleton every model of a program starts from.
inline ablate::ModelConfig base_config(const Preset& p, std::size_t vocab) {
  ablate::ModelConfig c;
  c.vocab_size = vocab;
  c.hidden_size = p.hidden;
  c.num_attention_heads = p.heads;
  c.num_hidden_layers = p.layers;
  c.max_position_embeddings = p.seq;
  c.hidden_dropout = 0.1;
  c.attention_dropout = 0.1;
  return c;
}

// The models of the protocol, narrowed to --models (in the order given there).
inline std::vector<ModelSpec> select_models(const ExperimentDef& def, const Settings& s,
                                            const ablate::ModelConfig& base) {
  std::vector<ModelSpec> all = def.models(s.protocol, base);
  if (s.models.empty()) return all;
  std::vector<ModelSpec> chosen;
  for (const std::string& name : s.models) {
    auto it = std::find_if(all.begin(), all.end(), [&](const ModelSpec& m) { return m.name == name; });
    if (it == all.end()) {
      std::string valid;
      for (const auto& m : all) valid += (valid.empty() ? "" : ", ") + m.name;
      std::string hint;
      for (const Protocol other : {Protocol::fixed, Protocol::seed}) {
        if (other == s.protocol) continue;
        for (const auto& m : def.models(other, base))
          if (m.name == name) hint = " (\"" + name + "\" exists under --protocol " + to_string(other) + ")";
      }
      throw usage_error("unknown model \"" + name + "\" for --protocol " + to_string(s.protocol) +
                        "; valid names: " + valid + hint);
    }
    if (std::find_if(chosen.begin(), chosen.end(), [&](const ModelSpec& m) { return m.name == name; }) ==
        chosen.end())
      chosen.push_back(*it);
  }
  return chosen;
}

// Applies --threads; returns the number of threads the kernels will use.
inline std::size_t set_threads(std::size_t threads) {
#if defined(_OPENMP)
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
  return static_cast<std::size_t>(omp_get_max_threads());
#else
  (void)threads;
  return 1;
#endif
}

// "cpu backend" or "cuda backend (NVIDIA H100 80GB HBM3)", for the summary lines.
inline std::string backend_text(Backend b, const std::optional<std::string>& gpu) {
  std::string text = std::string(to_string(b)) + " backend";
  if (gpu) text.append(" (").append(*gpu).append(")");
  return text;
}

inline std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// --evaluate FILE --models NAME: checks that the file holds a model of NAME's architecture,
// prepares the data of the command line, and runs the last evaluation of a training run on the
// saved model (the whole validation set under the fixed protocol, the seed's 3 batches under
// the seed protocol).  With the data flags of the training run the figures are the run's.
inline int evaluate_saved_model(const ExperimentDef& def, const Settings& s) {
  const Preset& p = s.preset;
  const ModelSpec spec = select_models(def, s, base_config(p, kGpt2Vocab)).front();
  const std::filesystem::path& file = *s.evaluate_file;
  SavedModelInfo info;
  try {
    info = inspect_saved_model(file);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("cannot evaluate a saved model: ") + e.what());
  }
  if (info.architecture != spec.architecture)
    throw std::runtime_error(file.string() + " holds a model of architecture '" + info.architecture +
                             "'" + info.origin() + ", not the architecture of --models " + spec.name +
                             " under --protocol " + to_string(s.protocol) + " ('" + spec.architecture +
                             "')");
  spec.check_saved(ablate::io::SafetensorsReader::open(file), info.config);

  const std::string on = backend_text(s.backend, check_backend(s.backend));
  const std::size_t threads = set_threads(s.threads);
  PreparedData data = prepare_data(s);
  std::string trained_with;
  if (!info.meta(saved::command_line).empty())
    trained_with = std::string("; it was trained with: ") + info.meta(saved::command_line);
  if (info.config.vocab_size != data.vocab_size)
    throw std::runtime_error(file.string() + ": the model has a vocabulary of " +
                             std::to_string(info.config.vocab_size) +
                             " ids but the data of this command line has " +
                             std::to_string(data.vocab_size) +
                             "; evaluate it with the data flags of its training run" + trained_with);
  // Files saved before the fingerprint was recorded have none; their ids are checked by count.
  const std::string vocabulary = info.meta(saved::vocabulary);
  if (!vocabulary.empty() && vocabulary != data.vocabulary)
    throw std::runtime_error(file.string() + ": the model's token ids stand for other tokens than "
                             "the ids of this command line's data (vocabulary fingerprint " +
                             vocabulary + ", here " + data.vocabulary +
                             "): the compact vocabulary depends on --protocol, --split-seed, "
                             "--text and --compact-vocab, and the ids on --encoder and --vocab; "
                             "evaluate it with the data flags of its training run" + trained_with);
  if (p.seq > info.config.max_position_embeddings)
    throw std::runtime_error(file.string() + ": the validation windows hold " +
                             std::to_string(p.seq) + " tokens, the model takes at most " +
                             std::to_string(info.config.max_position_embeddings) + " (--seq)" +
                             trained_with);

  std::printf("%s: evaluating %s\nmodel: %s, %s params (%s)%s\n%s protocol, %s, %zu thread(s)\n"
              "data: %s\n",
              def.program.c_str(), file.string().c_str(), spec.name.c_str(),
              short_count(spec.count(info.config).total).c_str(), info.architecture.c_str(),
              info.origin().c_str(), to_string(s.protocol), on.c_str(), threads,
              data.summary.c_str());
  std::fflush(stdout);

  RunPlan plan;
  plan.backend = s.backend;
  plan.splits = &data.splits;
  plan.batch = p.batch;
  plan.eval_final = data.eval_final;
  const EvalPoint point = spec.evaluate(file, info.config, plan);
  std::printf("val loss %.6f, accuracy %.4f%%, perplexity %.2f (%zu validation tokens, %s)\n",
              point.val_loss, 100 * point.val_accuracy, std::exp(point.val_loss), point.val_tokens,
              point.all_validation ? "the whole validation set"
                                   : "the validation batches of the last evaluation");
  const auto loss = info.number(saved::val_loss), accuracy = info.number(saved::val_accuracy);
  if (loss && accuracy)
    std::printf("when saved: val loss %.6f, accuracy %.4f%% (%s validation tokens)\n", *loss,
                100 * *accuracy, info.meta(saved::val_tokens).c_str());
  return 0;
}

inline int run_experiment(const ExperimentDef& def, int argc, char** argv) {
  ablate::cpu::retain_freed_memory();
  CommandLine cli(def);
  try {
    cli.app().parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = cli.app().exit(e);
    return rc == 0 ? 0 : 2;
  }
  const std::string prog = def.program;
  try {
    const Settings s = cli.resolve(argc, argv);
    const Preset& p = s.preset;

    if (s.params_only) {
      const std::size_t vocab =
          s.params_vocab ? *s.params_vocab : (p.compact_vocab > 0 ? p.compact_vocab : kGpt2Vocab);
      for (const ModelSpec& m : select_models(def, s, base_config(p, vocab)))
        std::printf("%s %zu\n", m.name.c_str(), m.count(m.config).total);
      return 0;
    }
    if (s.evaluate_file) return evaluate_saved_model(def, s);
    // Model names and the schedule are checked before any data is read.
    (void)select_models(def, s, base_config(p, kGpt2Vocab));
    ablate::TrainConfig train;
    train.total_batches = s.steps;
    train.warmup_divisor = def.warmup_divisor;
    if (s.muon_lr) train.optimizer.muon_lr = *s.muon_lr;
    if (s.adamw_lr) train.optimizer.adamw_lr = *s.adamw_lr;
    if (s.steps < train.grad_accumulation)  // what validate() checks, in terms of the flags
      throw usage_error("--steps " + std::to_string(s.steps) + " is fewer than one optimizer step (" +
                        std::to_string(train.grad_accumulation) + " batches of gradient accumulation)");
    train.validate();

    const std::optional<std::string> gpu = check_backend(s.backend);
    const std::size_t threads = set_threads(s.threads);
    PreparedData data = prepare_data(s);
    const std::vector<ModelSpec> models = select_models(def, s, base_config(p, data.vocab_size));

    std::vector<ModelResults> results(models.size());
    for (std::size_t i = 0; i < models.size(); ++i) {
      results[i].spec = &models[i];
      results[i].params = models[i].count(models[i].config);  // also checks the config
    }

    std::printf("%s\n%s protocol, %s preset: d %zu, %zu heads, %zu layer(s), seq %zu, batch %zu, "
                "%zu batches (grad accumulation %zu), %zu seed(s), %s, %zu thread(s)\n",
                def.title.c_str(), to_string(s.protocol), p.name.c_str(), p.hidden, p.heads, p.layers,
                p.seq, p.batch, s.steps, train.grad_accumulation, s.seeds.size(),
                backend_text(s.backend, gpu).c_str(), threads);
    std::printf("data: %s\n", data.summary.c_str());
    std::printf("init: %s\n", s.init == ablate::InitScheme::Normal
                                  ? "every Linear normal(0, 0.02)"
                                  : "as the seed: DeepSeek attention and MLPs with PyTorch's "
                                    "default, the rest normal(0, 0.02)");
    std::printf("learning rates: Muon %g, AdamW %g%s\n", train.optimizer.muon_lr,
                train.optimizer.adamw_lr, s.muon_lr || s.adamw_lr ? "" : " (the seed's)");
    // Made now, so that a folder that cannot be made fails before any training.
    auto make_folder = [](const std::filesystem::path& dir, const char* what) {
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);
      if (ec || !std::filesystem::is_directory(dir))
        throw std::runtime_error(std::string("cannot create the ") + what + " folder " +
                                 dir.string() + ": " + (ec ? ec.message() : "not a directory"));
    };

    json doc;
    doc["program"] = prog;
    doc["title"] = def.title;
    doc["ablate_version"] = ablate::version;
    doc["command_line"] = s.command_line;
    doc["started_at"] = utc_now();
    doc["complete"] = false;
    doc["protocol"] = to_string(s.protocol);
    doc["preset"] = p.name;
    doc["backend"] = to_string(s.backend);
    doc["machine"] = {{"hardware_threads", std::thread::hardware_concurrency()},
                      {"threads_used", threads}};
    if (gpu) doc["machine"]["gpu"] = *gpu;
    if (const auto kernels = attention_kernels(s.backend)) doc["machine"]["cuda_attention"] = *kernels;
    doc["config"] = {
        {"hidden_size", p.hidden},
        {"num_attention_heads", p.heads},
        {"num_hidden_layers", p.layers},
        {"seq", p.seq},
        {"batch", p.batch},
        {"batches", s.steps},
        {"eval_every", p.eval_every},
        {"seeds", s.seeds},
        {"init", to_string(s.init)},
        {"train",
         {{"grad_accumulation", train.grad_accumulation},
          {"optimizer_steps", s.steps / train.grad_accumulation},
          {"grad_clip", train.grad_clip},
          {"schedule", "linear warmup, then cosine to min_lr_ratio; laid out over the batches, "
                       "stepped once per optimizer step (the seed's LambdaLR)"},
          {"schedule_total", train.schedule_total()},
          {"warmup_divisor", train.warmup_divisor},
          {"warmup_optimizer_steps", train.schedule_total() / train.warmup_divisor},
          {"min_lr_ratio", train.min_lr_ratio},
          {"muon_lr", train.optimizer.muon_lr},
          {"adamw_lr", train.optimizer.adamw_lr},
          {"adamw_weight_decay", train.optimizer.adamw.weight_decay},
          {"dropout", 0.1}}}};
    doc["data"] = data.info;
    doc["models"] = models_json(results);

    namespace fs = std::filesystem;
    const fs::path results_file = s.out_dir / "results.json";
    const fs::path checkpoint_file = s.out_dir / kCheckpointFile;
    // --resume takes the finished runs of OUT's results.json; a fresh run refuses to overwrite
    // an unfinished experiment that has something to lose.
    std::optional<json> previous = read_results(results_file, s.resume);
    if (previous && previous->at("complete").get<bool>()) {
      if (s.resume)
        throw std::runtime_error("--resume: " + results_file.string() +
                                 " is a finished experiment; there is nothing to resume");
      previous.reset();
    }
    std::optional<CheckpointRun> in_progress;
    if (previous && fs::exists(checkpoint_file)) in_progress = checkpoint_run(checkpoint_file);
    if (s.resume) {
      if (!previous)
        throw std::runtime_error("--resume: nothing to resume in " + s.out_dir.string() +
                                 " (it has no results.json)");
      try {
        check_resumable(*previous, doc, results_file);
      } catch (const json::exception& e) {  // a value of another type than this program writes
        throw std::runtime_error("cannot resume from " + results_file.string() +
                                 ": not the results.json of this program (" + e.what() + ")");
      }
      try {
        for (std::size_t i = 0; i < results.size(); ++i) {
          const json& runs = previous->at("models").at(i).at("runs");
          if (!runs.is_array()) throw std::runtime_error("the runs of " + models[i].name + " are not a list");
          for (const json& run : runs) results[i].runs.push_back(run_of(run));
        }
      } catch (const std::exception& e) {
        throw std::runtime_error("cannot resume from " + results_file.string() +
                                 ": a finished run does not read back: " + e.what());
      }
      // A finished run stands in for the run of its seed: one per seed of --seeds, or a
      // hand-edited file would skip a run or count one twice.
      for (const ModelResults& m : results)
        for (auto run = m.runs.begin(); run != m.runs.end(); ++run) {
          const std::uint64_t seed = run->seed;
          const bool listed = std::find(s.seeds.begin(), s.seeds.end(), seed) != s.seeds.end();
          const bool twice = std::any_of(m.runs.begin(), run, [&](const RunResult& o) { return o.seed == seed; });
          if (!listed || twice)
            throw std::runtime_error("cannot resume from " + results_file.string() + ": " +
                                     m.spec->name + " has a finished run of seed " +
                                     std::to_string(seed) +
                                     (listed ? " twice" : ", which --seeds does not list") +
                                     " (was the file edited?)");
        }
      // The checkpoint is that of the first unfinished run: any other would be trained over
      // from scratch, and the checkpoint deleted, without a word.
      if (in_progress) {
        std::optional<std::pair<std::string, std::uint64_t>> next;
        for (const std::uint64_t seed : s.seeds)
          for (const ModelResults& m : results)
            if (!next && !m.has_run(seed)) next.emplace(m.spec->name, seed);
        if (!next || next->first != in_progress->model || next->second != in_progress->seed)
          throw std::runtime_error(
              "cannot resume from " + checkpoint_file.string() + ": it holds " + in_progress->model +
              " seed " + std::to_string(in_progress->seed) + ", but the run to continue is " +
              (next ? next->first + " seed " + std::to_string(next->second) : std::string("none")) +
              " (was a file edited or replaced?)");
      }
      doc["started_at"] = previous->value("started_at", json(nullptr));
      doc["command_line"] = previous->value("command_line", s.command_line);
      doc["resumed"] = previous->value("resumed", json::array());
      doc["resumed"].push_back({{"at", utc_now()}, {"command_line", s.command_line}});
    } else if (previous && (finished_runs(*previous) > 0 || in_progress)) {
      throw std::runtime_error(
          s.out_dir.string() + " holds an unfinished experiment (" +
          std::to_string(finished_runs(*previous)) + " finished run(s)" +
          (in_progress ? ", " + in_progress->model + " seed " + std::to_string(in_progress->seed) +
                             " stopped after batch " + std::to_string(in_progress->batch)
                       : std::string()) +
          "): add --resume to continue it, or remove the folder or choose another --out to start over");
    }

    if (s.save_dir) {
      make_folder(*s.save_dir, "--save-models");
      std::printf("trained models go to %s\n", s.save_dir->string().c_str());
    }
    make_folder(s.out_dir, "--out");
    for (const auto& m : results)
      std::printf("  %-26s %9s params (%s active)  %s\n", m.spec->name.c_str(),
                  short_count(m.params.total).c_str(), short_count(m.params.active).c_str(),
                  m.spec->summary.c_str());
    std::fflush(stdout);

    auto save = [&](bool complete) {
      doc["complete"] = complete;
      doc["models"] = models_json(results);
      doc["ranking"] = ranking_json(results);
      if (complete) doc["finished_at"] = utc_now();
      // Paths and text are the user's: bytes that are not UTF-8 are replaced, not fatal.
      ablate::data::write_file_atomically(
          results_file, doc.dump(2, ' ', false, json::error_handler_t::replace) + "\n");
    };

    RunPlan plan;
    plan.backend = s.backend;
    plan.splits = &data.splits;
    plan.batch = p.batch;
    plan.steps = s.steps;
    plan.eval_every = p.eval_every;
    plan.train = train;
    plan.init = s.init;
    plan.eval_during = data.eval_during;
    plan.eval_final = data.eval_final;
    if (s.save_dir) {
      plan.save_dir = *s.save_dir;
      plan.save_metadata = {{saved::program, prog},
                            {saved::protocol, to_string(s.protocol)},
                            {saved::preset, p.name},
                            {saved::command_line, doc["command_line"].get<std::string>()},
                            {saved::vocabulary, data.vocabulary}};
    }
    // Signals stop the runs only: after them, Ctrl-C ends the program as usual.
    std::optional<StopControl> stopper;
    StopControl& stop = stopper.emplace(s.stop_after);
    plan.checkpoint = checkpoint_file;
    plan.stop = &stop;
    plan.checkpoint_interval_s = 60 * s.checkpoint_minutes;

    Progress progress;
    const std::size_t total_runs = s.seeds.size() * models.size();
    std::size_t run_index = 0;
    save(false);
    try {
      for (const std::uint64_t seed : s.seeds) {
        for (ModelResults& m : results) {
          // Appended piece by piece: GCC 12 warns (-Wrestrict) about "literal" + std::string&&.
          plan.label.assign(1, '[');
          plan.label.append(std::to_string(++run_index)).append("/").append(std::to_string(total_runs));
          plan.label.append("] ").append(m.spec->name).append(" seed ").append(std::to_string(seed));
          if (m.has_run(seed)) continue;  // finished before --resume
          if (stop.requested())
            throw run_stopped("stopped before " + plan.label + " (" + stop.reason() + ")", stop.exit_code());
          plan.model = m.spec->name;
          plan.resume = in_progress && in_progress->model == plan.model && in_progress->seed == seed;
          if (plan.resume)
            progress.message(plan.label + ": resumed after batch " + std::to_string(in_progress->batch));
          if (s.save_dir) plan.save_metadata[saved::model] = m.spec->name;
          RunResult r = m.spec->train(m.spec->config, plan, seed, progress);
          char line[256];
          std::snprintf(line, sizeof line,
                        "%s: val loss %.4f, accuracy %.2f%%, perplexity %.2f; "
                        "%s training (%.0f tok/s), %s eval",
                        plan.label.c_str(), r.final.val_loss, 100 * r.final.val_accuracy,
                        std::exp(r.final.val_loss), format_duration(r.train_time_s).c_str(),
                        r.tokens_per_s, format_duration(r.eval_time_s).c_str());
          if (!r.diverged.empty())
            std::snprintf(line, sizeof line, "%s: diverged at batch %zu of %zu (recorded without figures)",
                          plan.label.c_str(), r.final.batch, plan.steps);
          progress.message(!r.diverged.empty()    ? std::string(line) + ": " + r.diverged
                           : r.model_file.empty() ? std::string(line)
                                                  : std::string(line) + "; saved to " + r.model_file);
          m.runs.push_back(std::move(r));
          save(false);
          fs::remove(checkpoint_file);  // the run is in results.json now
          in_progress.reset();
        }
      }
    } catch (const run_stopped& e) {
      save(false);
      progress.message(std::string(e.what()) + "; the finished runs are in " + results_file.string() +
                       (fs::exists(checkpoint_file) ? ", the run in progress in " + checkpoint_file.string()
                                                    : std::string()) +
                       "; the same command line with --resume continues");
      return e.exit_code();
    }
    stopper.reset();
    save(true);

    std::string spread;
    if (s.seeds.size() > 1) spread = ", mean ± std over " + std::to_string(s.seeds.size()) + " seeds";
    std::printf("\n%s — ranked by validation loss (%s protocol, %s preset%s)\n", def.title.c_str(),
                to_string(s.protocol), p.name.c_str(), spread.c_str());
    std::printf("%s", ranking_table(results).c_str());
    if (s.protocol == Protocol::seed)
      std::printf("seed protocol: stride-1 windows split at random (validation overlaps training), "
                  "3 validation batches, and attention without a causal mask where the seed had it\n");
    const PlotFiles plots = write_plots(s.out_dir, results, def.title + " (" + to_string(s.protocol) +
                                                                " protocol, " + p.name + " preset)",
                                        s.protocol == Protocol::seed);
    std::printf("\nresults: %s\n%s\n", results_file.string().c_str(), plots.note.c_str());
    return 0;
  } catch (const usage_error& e) {
    std::fprintf(stderr, "%s: error: %s\nRun with --help for more information.\n", prog.c_str(), e.what());
    return 2;
  } catch (const no_device_error& e) {
    std::fprintf(stderr, "%s: error: %s\n", prog.c_str(), e.what());
    return kNoDeviceExitCode;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr,
                 "%s: error: out of memory: the models or the data of this command line do not "
                 "fit in this machine's memory (smaller --hidden, --layers, --batch or --seq "
                 "would)\n",
                 prog.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", prog.c_str(), e.what());
    return 1;
  }
}

}  // namespace examples
