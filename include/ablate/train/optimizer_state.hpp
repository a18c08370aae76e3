// What every optimizer keeps: its options, one state record per parameter (what a checkpoint
// saves and restores, found by the parameter's name) and the number of steps taken.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ablate {

// State has a `param` pointer member; the optimizer fills states_ and counts steps_.
template <class State, class Options>
class OptimizerCore {
 public:
  const Options& options() const { return options_; }
  std::vector<State>& states() { return states_; }
  const std::vector<State>& states() const { return states_; }
  // The state of the parameter called `name`, or null.
  State* find(const std::string& name) {
    for (State& s : states_)
      if (s.param->name == name) return &s;
    return nullptr;
  }
  std::int64_t steps() const { return steps_; }
  void set_steps(std::int64_t steps) { steps_ = steps; }

 protected:
  explicit OptimizerCore(const Options& options) : options_(options) {}

  Options options_;
  std::vector<State> states_;
  std::int64_t steps_ = 0;
};

}  // namespace ablate
