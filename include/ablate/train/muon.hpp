// Muon (Keller Jordan's reference): SGD momentum whose update is orthogonalised by
// Newton-Schulz, so every direction of a weight matrix moves by about the same amount.
// For 2-D weights only; no weight decay, as in the seed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/core/parameter.hpp"
#include "ablate/train/optimizer_state.hpp"
#include "ablate/train/newton_schulz.hpp"

namespace ablate {

struct MuonOptions {
  double momentum = 0.95;
  bool nesterov = true;
  int ns_steps = 5;
};

// Per-parameter state, public so a checkpoint can save and restore it.
template <class B>
struct MuonState {
  Parameter<B>* param;
  typename B::Tensor momentum;  // torch: momentum_buffer
};

// steps() counts the steps taken (informational: Muon's update does not depend on it).
template <class B>
class Muon : public OptimizerCore<MuonState<B>, MuonOptions> {
 public:
  using Tensor = typename B::Tensor;
  using State = MuonState<B>;

  explicit Muon(std::vector<Parameter<B>*> params, MuonOptions options = {})
      : OptimizerCore<State, MuonOptions>(options) {
    require(options.momentum >= 0.0 && options.momentum < 1.0,
            "Muon: momentum must be in [0, 1)");
    require(options.ns_steps >= 0, "Muon: ns_steps must be >= 0");
    this->states_.reserve(params.size());
    for (Parameter<B>* p : params) {
      require(p != nullptr, "Muon: null parameter");
      require(p->shape.size() == 2, "Muon: parameter ", p->name, " is not 2-D");
      State& s = this->states_.emplace_back(State{p, Tensor{}});
      B::resize(s.momentum, p->rows(), p->cols());
      B::set_zero(s.momentum);
      const std::size_t index = this->states_.size() - 1;
      const auto same_shape = [&](const ShapeGroup& g) {
        return g.rows == p->rows() && g.cols == p->cols();
      };
      if (auto g = std::find_if(groups_.begin(), groups_.end(), same_shape); g != groups_.end())
        g->members.push_back(index);
      else
        groups_.push_back(ShapeGroup{p->rows(), p->cols(), {index}});
    }
  }

  // The update's scale: sqrt(max(1, rows/cols)), so tall matrices (whose orthogonalised
  // update has smaller entries) move as much per element as wide ones.
  static double shape_scale(std::size_t rows, std::size_t cols) {
    return std::sqrt(std::max(1.0, static_cast<double>(rows) / static_cast<double>(cols)));
  }

  // One update of every parameter from its current .grad at learning rate `lr`:
  //   buf = lerp(buf, g, 1 - momentum);  u = nesterov ? lerp(g, buf, momentum) : buf;
  //   p -= lr * shape_scale * NS5(u).
  // Unlike the reference, .grad is left untouched (the Nesterov blend goes to scratch).
  // Parameters of one shape are orthogonalised together, as one stack: on the GPU each
  // Newton-Schulz product is then one batched GEMM for all of them (the CPU computes each
  // matrix as it would alone, so the update is the same either way).
  void step(double lr) {
    const MuonOptions& o = this->options_;
    ++this->steps_;
    for (const ShapeGroup& group : groups_) {
      const auto rows = static_cast<std::ptrdiff_t>(group.rows);
      B::resize(stack_, rows * static_cast<std::ptrdiff_t>(group.members.size()),
                static_cast<std::ptrdiff_t>(group.cols));
      for (std::size_t i = 0; i < group.members.size(); ++i) {
        State& s = this->states_[group.members[i]];
        Parameter<B>& p = *s.param;
        B::lerp_inplace(s.momentum, p.grad, 1.0 - o.momentum);
        const Tensor* u = &s.momentum;
        if (o.nesterov) {
          B::lerp(blend_, p.grad, s.momentum, o.momentum);
          u = &blend_;
        }
        B::write_rows(stack_, static_cast<std::ptrdiff_t>(i) * rows, *u);
      }
      newton_schulz5<B>(update_, stack_, group.rows, group.cols, o.ns_steps, work_,
                        group.members.size());
      const double scale = -lr * shape_scale(group.rows, group.cols);
      for (std::size_t i = 0; i < group.members.size(); ++i)
        B::axpy_rows(this->states_[group.members[i]].param->value, scale, update_,
                     static_cast<std::ptrdiff_t>(i) * rows);
    }
  }

 private:
  // The parameters of one shape (indices into the states, in parameter order).
  struct ShapeGroup {
    std::size_t rows = 0, cols = 0;
    std::vector<std::size_t> members;
  };
  std::vector<ShapeGroup> groups_;
  Tensor blend_, stack_, update_;  // scratch shared by all parameters
  NewtonSchulzWork<B> work_;
};

}  // namespace ablate
