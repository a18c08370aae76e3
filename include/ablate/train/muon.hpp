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
  // Largest stack orthogonalised at once, in elements (a matrix larger than this is a stack of
  // its own). Same-shape parameters beyond it form further stacks; the update is the same, but
  // the four stack-sized scratch buffers stay bounded (64 MB each in float at the default)
  // however many experts share a shape. Not part of a checkpoint's config: it changes no result.
  std::size_t max_stack_elements = std::size_t{1} << 24;
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
    require(options.max_stack_elements >= 1, "Muon: max_stack_elements must be >= 1");
    this->states_.reserve(params.size());
    for (Parameter<B>* p : params) {
      require(p != nullptr, "Muon: null parameter");
      require(p->shape.size() == 2, "Muon: parameter ", p->name, " is not 2-D");
      State& s = this->states_.emplace_back(State{p, Tensor{}});
      B::resize(s.momentum, p->rows(), p->cols());
      B::set_zero(s.momentum);
      const std::size_t index = this->states_.size() - 1;
      const std::size_t size = p->rows() * p->cols();
      const auto has_room = [&](const ShapeGroup& g) {
        return g.rows == p->rows() && g.cols == p->cols() &&
               (g.members.size() + 1) * size <= options.max_stack_elements;
      };
      if (auto g = std::find_if(groups_.begin(), groups_.end(), has_room); g != groups_.end())
        g->members.push_back(index);
      else
        groups_.push_back(ShapeGroup{p->rows(), p->cols(), {index}});
    }
  }

  // How many stacks one step orthogonalises (one per shape, more where a shape's parameters
  // exceed max_stack_elements together).
  std::size_t stack_count() const { return groups_.size(); }

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
  // Parameters of one shape orthogonalised as one stack (indices into the states, in order).
  struct ShapeGroup {
    std::size_t rows = 0, cols = 0;
    std::vector<std::size_t> members;
  };
  std::vector<ShapeGroup> groups_;
  Tensor blend_, stack_, update_;  // scratch shared by all parameters
  NewtonSchulzWork<B> work_;
};

}  // namespace ablate
