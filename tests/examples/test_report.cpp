// What the example programs report for runs that diverged beside runs that did not: the
// ranking, the table's cells and alignment, results.json's statistics and the plots.  Made-up
// results, so that every mixture occurs (a run of the programs diverges all or nothing).
#define DOCTEST_CONFIG_IMPLEMENT
#include "../doctest_runner.hpp"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/report.hpp"

int main(int argc, char** argv) { return ablate_test::run_tests(argc, argv); }

namespace {

using namespace examples;

RunResult run(std::uint64_t seed, double loss, const char* diverged = "") {
  RunResult r;
  r.seed = seed;
  EvalPoint p;
  p.batch = 8;
  p.val_loss = loss;
  p.val_accuracy = std::isfinite(loss) ? 0.25 : NAN;
  p.train_time_s = 1.5;
  r.curve = {p};
  r.final = p;
  r.train_time_s = 1.5;
  r.diverged = diverged;
  return r;
}

struct Fixture {
  std::vector<ModelSpec> specs;
  std::vector<ModelResults> results;
  Fixture() {
    for (const char* name : {"steady", "half_diverged", "all_diverged", "nan_loss"}) {
      ModelSpec s;
      s.name = name;
      specs.push_back(s);
    }
    results.resize(specs.size());
    for (std::size_t i = 0; i < specs.size(); ++i) {
      results[i].spec = &specs[i];
      results[i].params = {1000, 500};
    }
    results[0].runs = {run(0, 5.0), run(1, 5.2)};
    results[1].runs = {run(0, 4.9), run(1, NAN, "Trainer::step: the gradient norm is inf")};
    results[2].runs = {run(0, NAN, "a non-finite loss"), run(1, NAN, "a non-finite loss")};
    results[3].runs = {run(0, NAN)};  // finished, but its evaluation overflowed
  }
};

}  // namespace

TEST_CASE("report: runs that diverged are counted apart, and their models ranked after") {
  const Fixture f;
  std::vector<std::string> order;
  for (const ModelResults* m : ranking(f.results)) order.push_back(m->spec->name);
  CHECK(order == std::vector<std::string>{"half_diverged", "steady", "nan_loss", "all_diverged"});

  const json models = models_json(f.results);
  CHECK(models[0]["diverged_runs"] == 0);
  CHECK(models[0]["val_loss"]["n"] == 2);
  CHECK(models[0]["val_loss"]["mean"].get<double>() == doctest::Approx(5.1));
  CHECK(models[1]["diverged_runs"] == 1);
  CHECK(models[1]["val_loss"]["n"] == 1);  // over the run that did not diverge
  CHECK(models[1]["val_loss"]["mean"].get<double>() == 4.9);
  CHECK(models[2]["diverged_runs"] == 2);
  CHECK(models[2]["val_loss"]["mean"].is_null());
  CHECK(models[3]["diverged_runs"] == 0);
  CHECK(models[3]["val_loss"]["mean"].is_null());
  CHECK(ranking_json(f.results) == json{"half_diverged", "steady", "nan_loss", "all_diverged"});
}

TEST_CASE("report: the table says which runs diverged and keeps its columns aligned") {
  const Fixture f;
  const std::string table = ranking_table(f.results);
  std::vector<std::string> lines;
  std::istringstream in(table);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(lines.size() == 5);
  CHECK(lines[1].find("half_diverged") != std::string::npos);
  CHECK(lines[1].find("4.9000") != std::string::npos);
  CHECK(lines[1].ends_with("  2 (1 diverged)"));
  CHECK(lines[2].find("5.1000 ± 0.1414") != std::string::npos);
  CHECK(lines[3].find("nan") != std::string::npos);
  CHECK(lines[3].find("-nan") == std::string::npos);
  CHECK(lines[4].find("diverged") != std::string::npos);
  CHECK(lines[4].ends_with("  2 (2 diverged)"));
  // Every row's last column (seeds) starts where the header's does.
  const std::size_t seeds_at = display_width(lines[0]) - display_width("seeds");
  const std::vector<std::string> seeds{"2 (1 diverged)", "2", "1", "2 (2 diverged)"};
  for (std::size_t i = 1; i < lines.size(); ++i)
    CHECK(display_width(lines[i]) - display_width(seeds[i - 1]) == seeds_at);

  // Figures of a run gone astray (a loss of 1e20, a perplexity of inf) keep the table aligned.
  Fixture wild;
  wild.results[0].runs = {run(0, 1.0e20), run(1, 3.0e20)};
  const std::string wild_table = ranking_table(wild.results);
  CHECK(wild_table.find("2.000e+20 ± 1.414e+20") != std::string::npos);
  std::istringstream wild_in(wild_table);
  std::vector<std::size_t> before_params;
  for (std::string line; std::getline(wild_in, line);) {
    const std::size_t at = line.find(line.starts_with("rank") ? "params" : "1000");
    REQUIRE(at != std::string::npos);
    before_params.push_back(display_width(line.substr(0, at + (line.starts_with("rank") ? 6 : 4))));
  }
  for (const std::size_t end : before_params) CHECK(end == before_params.front());
}

TEST_CASE("report: the plots leave out models whose every run diverged") {
  const Fixture f;
  const auto dir = std::filesystem::temp_directory_path() / "ablate_test_report_plots";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "val_loss_vs_step.png") << "a plot of an earlier experiment";
  const PlotFiles plots = write_plots(dir, f.results, "title", false);
  CHECK(plots.note.find("every run diverged: all_diverged") != std::string::npos);
  std::ifstream dat(dir / "curves.dat");
  const std::string curves((std::istreambuf_iterator<char>(dat)), std::istreambuf_iterator<char>());
  CHECK(curves.find("# steady\n") != std::string::npos);
  CHECK(curves.find("# half_diverged\n8 1.500 4.900000 0.000000\n") != std::string::npos);
  CHECK(curves.find("# all_diverged") == std::string::npos);
  if (!plots.rendered) CHECK_FALSE(std::filesystem::exists(dir / "val_loss_vs_step.png"));

  // Nothing to plot at all.
  Fixture none;
  none.results = {none.results[2]};
  CHECK(write_plots(dir, none.results, "title", false).note ==
        "no plots: every run diverged (all_diverged)");
  CHECK_FALSE(std::filesystem::exists(dir / "val_loss_vs_step.png"));
  std::filesystem::remove_all(dir);
}
