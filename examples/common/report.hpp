// What a finished (or partly finished) experiment reports: the ranking table for people,
// results.json for programs, and validation-loss plots made with gnuplot.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <ablate/data/atomic_file.hpp>

#include "models.hpp"
#include "progress.hpp"
#include "run_record.hpp"

namespace examples {

struct ModelResults {
  const ModelSpec* spec = nullptr;
  ParamCounts params;
  std::vector<RunResult> runs;

  bool has_run(std::uint64_t seed) const {
    return std::any_of(runs.begin(), runs.end(), [&](const RunResult& r) { return r.seed == seed; });
  }
};

struct Stat {
  double mean = NAN, std = 0;
  std::size_t n = 0;
};

inline Stat stat_of(const std::vector<double>& xs) {
  Stat s;
  s.n = xs.size();
  if (xs.empty()) return s;
  double sum = 0;
  for (const double x : xs) sum += x;
  s.mean = sum / static_cast<double>(xs.size());
  if (xs.size() > 1) {
    double ss = 0;
    for (const double x : xs) ss += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(ss / static_cast<double>(xs.size() - 1));  // sample standard deviation
  }
  return s;
}

// A run diverged (RunResult::diverged) has no final figures: the statistics of a model are
// over its other runs, and the table and results.json say how many diverged.
inline bool converged(const RunResult& r) { return r.diverged.empty(); }
inline std::size_t diverged_runs(const ModelResults& m) {
  return static_cast<std::size_t>(std::count_if(m.runs.begin(), m.runs.end(),
                                                [](const RunResult& r) { return !converged(r); }));
}

template <class F>
Stat stat_over_runs(const ModelResults& m, F field) {
  std::vector<double> xs;
  for (const RunResult& r : m.runs)
    if (converged(r)) xs.push_back(field(r));
  return stat_of(xs);
}

inline double run_loss(const RunResult& r) { return r.final.val_loss; }
inline double run_accuracy(const RunResult& r) { return r.final.val_accuracy; }
inline double run_perplexity(const RunResult& r) { return std::exp(r.final.val_loss); }
inline double run_time(const RunResult& r) { return r.train_time_s; }

inline json stat_json(const Stat& s) {
  return json{{"mean", std::isfinite(s.mean) ? json(s.mean) : json(nullptr)},
              {"std", s.std},
              {"n", s.n}};
}

// "1.23M", "456.8K", "999".
inline std::string short_count(std::size_t n) {
  char buf[32];
  if (n >= 1000000) std::snprintf(buf, sizeof buf, "%.2fM", static_cast<double>(n) / 1e6);
  else if (n >= 10000) std::snprintf(buf, sizeof buf, "%.1fK", static_cast<double>(n) / 1e3);
  else std::snprintf(buf, sizeof buf, "%zu", n);
  return buf;
}

// Models that finished at least one run, best mean validation loss first; then those whose
// mean is not a number (an evaluation that overflowed), then those whose every run diverged.
inline std::vector<const ModelResults*> ranking(const std::vector<ModelResults>& results) {
  std::vector<const ModelResults*> ranked;
  for (const auto& m : results)
    if (!m.runs.empty()) ranked.push_back(&m);
  auto key = [](const ModelResults* m) {
    const double loss = stat_over_runs(*m, run_loss).mean;
    const int group = diverged_runs(*m) == m->runs.size() ? 2 : std::isfinite(loss) ? 0 : 1;
    return std::pair(group, group == 0 ? loss : 0.0);
  };
  std::stable_sort(ranked.begin(), ranked.end(),
                   [&](const ModelResults* a, const ModelResults* b) { return key(a) < key(b); });
  return ranked;
}

// Columns on screen of UTF-8 text (the ± sign is two bytes).
inline std::size_t display_width(const std::string& text) {
  std::size_t columns = 0;
  for (const char c : text) columns += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return columns;
}

// The seed's ranking table; with several seeds each figure is mean +- sample std.
inline std::string ranking_table(const std::vector<ModelResults>& results) {
  const auto ranked = ranking(results);
  bool spread = false;
  for (const auto* m : ranked) spread = spread || m->runs.size() > 1;
  // Figures of a run gone astray (a loss of 1e20, a perplexity of inf) stay short: past 1e6
  // in exponent form, a spread that is not a number left out, NaN as "nan".
  auto figure = [](double x, const char* f) {
    if (std::isnan(x)) return std::string("nan");
    char text[64];
    std::snprintf(text, sizeof text, std::isfinite(x) && std::fabs(x) >= 1e6 ? "%.3e" : f, x);
    return std::string(text);
  };
  auto fmt = [&](const Stat& s, const char* f, double scale) {
    const std::string mean = figure(s.mean * scale, f);
    if (!spread || !std::isfinite(s.mean) || !std::isfinite(s.std)) return mean;
    return mean + " ± " + figure(s.std * scale, f);
  };
  auto fmt_time = [&](const Stat& s) {
    std::string t = format_duration(s.mean);
    if (spread) t += " ± " + format_duration(s.std);
    return t;
  };
  using Row = std::array<std::string, 9>;
  std::vector<Row> rows{{"rank", "model", "val loss", "accuracy", "perplexity", "train time",
                         "params", "active", "seeds"}};
  std::size_t rank = 0;
  for (const auto* m : ranked) {
    const std::size_t diverged = diverged_runs(*m);
    const bool none = diverged == m->runs.size();
    rows.push_back({std::to_string(++rank), m->spec->name,
                    none ? "diverged" : fmt(stat_over_runs(*m, run_loss), "%.4f", 1),
                    none ? "-" : fmt(stat_over_runs(*m, run_accuracy), "%.2f", 100) + "%",
                    none ? "-" : fmt(stat_over_runs(*m, run_perplexity), "%.2f", 1),
                    none ? "-" : fmt_time(stat_over_runs(*m, run_time)),
                    short_count(m->params.total), short_count(m->params.active),
                    std::to_string(m->runs.size()) +
                        (diverged > 0 ? " (" + std::to_string(diverged) + " diverged)" : "")});
  }
  // Each column as wide as its widest cell, at least as wide as a usual table's.
  const int w = spread ? 17 : 10;
  std::array<std::size_t, 9> width{4, 5, std::size_t(w), std::size_t(w + 1), std::size_t(w + 2),
                                   std::size_t(spread ? 15 : 8), 9, 9, 0};
  for (const Row& row : rows)
    for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], display_width(row[c]));
  constexpr std::array<bool, 9> right{true, false, false, false, false, false, true, true, false};
  std::ostringstream out;
  for (const Row& row : rows) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      const std::string pad(width[c] - display_width(row[c]), ' ');
      if (c > 0) line += "  ";
      line += right[c] ? pad + row[c] : row[c] + (c + 1 < row.size() ? pad : "");
    }
    out << line << "\n";
  }
  return out.str();
}

inline json model_config_json(const ablate::ModelConfig& c) {
  return json{{"vocab_size", c.vocab_size},
              {"hidden_size", c.hidden_size},
              {"num_attention_heads", c.num_attention_heads},
              {"num_hidden_layers", c.num_hidden_layers},
              {"intermediate_size", c.intermediate_size},
              {"max_position_embeddings", c.max_position_embeddings},
              {"hidden_dropout", c.hidden_dropout},
              {"attention_dropout", c.attention_dropout},
              {"attention_bias", c.attention_bias},
              {"q_lora_rank", c.q_lora_rank},
              {"kv_lora_rank", c.kv_lora_rank},
              {"qk_rope_head_dim", c.qk_rope_head_dim},
              {"qk_nope_head_dim", c.qk_nope_head_dim},
              {"v_head_dim", c.v_head_dim},
              {"moe_intermediate_size", c.moe_intermediate_size},
              {"n_shared_experts", c.n_shared_experts},
              {"n_group", c.n_group},
              {"topk_group", c.topk_group},
              {"norm_topk_prob", c.norm_topk_prob},
              {"routed_scaling_factor", c.routed_scaling_factor},
              {"router_aux_loss_coef", c.router_aux_loss_coef},
              {"router_noise_std", c.router_noise_std}};
}

inline json models_json(const std::vector<ModelResults>& results) {
  json models = json::array();
  for (const ModelResults& m : results) {
    json runs = json::array();
    for (const RunResult& r : m.runs) runs.push_back(run_json(r));
    models.push_back(json{{"name", m.spec->name},
                          {"summary", m.spec->summary},
                          {"architecture", m.spec->architecture},
                          {"params_total", m.params.total},
                          {"params_active", m.params.active},
                          {"config", model_config_json(m.spec->config)},
                          {"val_loss", stat_json(stat_over_runs(m, run_loss))},
                          {"val_accuracy", stat_json(stat_over_runs(m, run_accuracy))},
                          {"val_perplexity", stat_json(stat_over_runs(m, run_perplexity))},
                          {"train_time_s", stat_json(stat_over_runs(m, run_time))},
                          {"diverged_runs", diverged_runs(m)},
                          {"runs", runs}});
  }
  return models;
}

inline json ranking_json(const std::vector<ModelResults>& results) {
  json r = json::array();
  for (const auto* m : ranking(results)) r.push_back(m->spec->name);
  return r;
}

// --- plots ------------------------------------------------------------------------------

struct PlotFiles {
  bool rendered = false;
  std::string note;  // what happened, for people
};

inline std::string shell_single_quote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// curves.dat (one block per model: batch, mean training time, mean and std of the validation
// loss over seeds), plot.gp, and with gnuplot on PATH val_loss_vs_step.png and
// val_loss_vs_time.png, all in `dir`.
inline PlotFiles write_plots(const std::filesystem::path& dir, const std::vector<ModelResults>& results,
                             const std::string& title, bool log_y) {
  std::ostringstream dat;
  dat << "# validation loss per model: batch  train_time_s(mean)  val_loss(mean)  val_loss(std)\n";
  std::vector<std::string> names, left_out;
  for (const ModelResults& m : results) {
    std::vector<const RunResult*> runs;  // the runs that did not diverge
    for (const RunResult& r : m.runs)
      if (converged(r)) runs.push_back(&r);
    if (runs.empty()) {
      if (!m.runs.empty()) left_out.push_back(m.spec->name);
      continue;
    }
    names.push_back(m.spec->name);
    dat << "# " << m.spec->name << "\n";
    std::size_t points = runs.front()->curve.size();
    for (const RunResult* r : runs) points = std::min(points, r->curve.size());
    for (std::size_t i = 0; i < points; ++i) {
      std::vector<double> loss, time;
      for (const RunResult* r : runs) {
        loss.push_back(r->curve[i].val_loss);
        time.push_back(r->curve[i].train_time_s);
      }
      const Stat l = stat_of(loss), t = stat_of(time);
      char line[160];
      std::snprintf(line, sizeof line, "%zu %.3f %.6f %.6f\n", runs.front()->curve[i].batch, t.mean,
                    l.mean, l.std);
      dat << line;
    }
    dat << "\n\n";
  }
  std::ostringstream gp;
  gp << "# gnuplot script written by the ablate examples; run `gnuplot plot.gp` in this folder.\n"
     << "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
     << "  set terminal pngcairo size 1000,640 enhanced font ',11'\n"
     << "} else {\n"
     << "  set terminal png size 1000,640\n"
     << "}\n"
     << "set grid\nset key top right\n"
     << "set ylabel 'validation loss (mean token cross-entropy)'\n";
  if (log_y) gp << "set logscale y\n";
  std::string escaped_title;
  for (const char c : title) escaped_title += c == '\'' ? std::string("''") : std::string(1, c);
  auto plot = [&](const char* output, const char* xlabel, const char* x) {
    gp << "set output '" << output << "'\n"
       << "set title '" << escaped_title << "' noenhanced\n"
       << "set xlabel '" << xlabel << "'\n"
       << "plot ";
    for (std::size_t i = 0; i < names.size(); ++i) {
      gp << (i ? ", \\\n     " : "") << "'curves.dat' index " << i << " using " << x
         << ":3:4 with yerrorlines lw 2 title '" << names[i] << "' noenhanced";
    }
    gp << "\n";
  };
  plot("val_loss_vs_step.png", "training batch", "1");
  plot("val_loss_vs_time.png", "training time (s)", "2");

  ablate::data::write_file_atomically(dir / "curves.dat", dat.str());
  ablate::data::write_file_atomically(dir / "plot.gp", gp.str());

  // Plots left by an earlier experiment in this folder must not pass for this one's.
  std::error_code ignored;  // a plot that cannot be removed is left; gnuplot replaces it below
  std::filesystem::remove(dir / "val_loss_vs_step.png", ignored);
  std::filesystem::remove(dir / "val_loss_vs_time.png", ignored);
  PlotFiles files;
  std::string diverged_note;  // the models left out of the plots
  for (const std::string& name : left_out) diverged_note += (diverged_note.empty() ? "" : ", ") + name;
  if (names.empty()) {
    files.note = left_out.empty() ? "no finished runs to plot"
                                  : "no plots: every run diverged (" + diverged_note + ")";
    return files;
  }
  if (!left_out.empty()) diverged_note = " (not plotted, every run diverged: " + diverged_note + ")";
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    files.note = "gnuplot is not installed, so no PNG plots were made (install it with `apt-get "
                 "install gnuplot-nox`, then run `gnuplot plot.gp` in " + dir.string() + ")" +
                 diverged_note;
    return files;
  }
  const std::string cmd = "cd " + shell_single_quote(dir.string()) + " && gnuplot plot.gp >gnuplot.log 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    files.note = "gnuplot failed (see " + (dir / "gnuplot.log").string() +
                 "); curves.dat and plot.gp are there" + diverged_note;
    return files;
  }
  std::filesystem::remove(dir / "gnuplot.log");
  files.rendered = true;
  files.note = "plots: " + (dir / "val_loss_vs_step.png").string() + ", " +
               (dir / "val_loss_vs_time.png").string() + diverged_note;
  return files;
}

}  // namespace examples
