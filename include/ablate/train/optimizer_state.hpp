// Lookup shared by the optimizers: per-parameter state records keyed by the parameter's name
// (what a checkpoint saves and restores).
#pragma once

#include <string>
#include <vector>

namespace ablate {

// The record whose parameter is called `name`, or null.  State has a `param` pointer member.
template <class State>
State* find_state(std::vector<State>& states, const std::string& name) {
  for (State& s : states)
    if (s.param->name == name) return &s;
  return nullptr;
}

}  // namespace ablate
