// A progress bar on stderr: redrawn in place on a terminal, plain lines every 10% otherwise
// (logs, CI, `2> file`).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <string>

namespace examples {

// "1h02m", "3m07s", "12s".
inline std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  char buf[32];
  if (seconds < 9.95) {
    std::snprintf(buf, sizeof buf, "%.1fs", seconds);
    return buf;
  }
  const auto s = static_cast<long long>(seconds + 0.5);
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%lldh%02lldm", s / 3600, (s % 3600) / 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%lldm%02llds", s / 60, s % 60);
  else std::snprintf(buf, sizeof buf, "%llds", s);
  return buf;
}

class Progress {
 public:
  Progress() : tty_(isatty(STDERR_FILENO) == 1) {}

  // Starts a bar for `total` steps, e.g. label "[3/10] baseline seed 1", of which `done` are
  // done already (a resumed run).
  void begin(std::string label, std::size_t total, std::size_t done = 0) {
    label_ = std::move(label);
    total_ = std::max<std::size_t>(1, total);
    first_ = std::min(done, total_);
    last_decile_ = first_ * 10 / total_;
    start_ = Clock::now();
    last_draw_ = start_ - std::chrono::seconds(1);
    drawn_ = false;
  }

  // `done` steps finished; loss and tokens/s of the training so far.
  void update(std::size_t done, double loss, double tokens_per_s) {
    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double eta = done > first_ ? elapsed / static_cast<double>(done - first_) *
                                           static_cast<double>(total_ - std::min(done, total_))
                                     : NAN;
    char stats[160];
    std::snprintf(stats, sizeof stats, "%zu/%zu  loss %.3f  %.0f tok/s  ETA %s", done, total_, loss,
                  tokens_per_s, format_duration(eta).c_str());
    if (tty_) {
      if (done < total_ && now - last_draw_ < std::chrono::milliseconds(200)) return;
      last_draw_ = now;
      constexpr int width = 24;
      const int filled = static_cast<int>(width * static_cast<double>(done) / static_cast<double>(total_));
      std::string bar(static_cast<std::size_t>(filled), '#');
      bar.resize(width, '.');
      std::fprintf(stderr, "\r\033[K%s [%s] %s", label_.c_str(), bar.c_str(), stats);
      std::fflush(stderr);
      drawn_ = true;
    } else {
      const std::size_t decile = done * 10 / total_;
      if (decile > last_decile_ || done == first_ + 1) {
        last_decile_ = std::max(decile, last_decile_);
        std::fprintf(stderr, "%s: %s (%zu%%)\n", label_.c_str(), stats, done * 100 / total_);
        std::fflush(stderr);
      }
    }
  }

  // A line that must stay visible (e.g. the final result of a run).
  void message(const std::string& text) {
    if (tty_ && drawn_) std::fprintf(stderr, "\r\033[K");
    std::fprintf(stderr, "%s\n", text.c_str());
    std::fflush(stderr);
    drawn_ = false;
  }

 private:
  using Clock = std::chrono::steady_clock;
  bool tty_;
  std::string label_;
  std::size_t total_ = 1, first_ = 0, last_decile_ = 0;
  Clock::time_point start_, last_draw_;
  bool drawn_ = false;
};

}  // namespace examples
