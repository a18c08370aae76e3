// Parameters: a named tensor with its gradient, registered once by the block that owns it.
// Names follow Hugging Face (`layers.0.self_attn.o_proj.weight`) so checkpoints map onto HF
// modules, and the role tells optimizers what kind of tensor it is.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <unordered_map>
#include <vector>

#include "ablate/core/dimensions.hpp"
#include "ablate/core/error.hpp"

namespace ablate {

enum class ParamRole {
  Matrix,     // 2-D projection weight (Linear, router, expert): Muon's share
  Embedding,  // token embedding (also the tied LM head)
  Norm,       // norm scale or shift
  Bias,       // Linear bias
};

template <class Backend>
struct Parameter {
  using Tensor = typename Backend::Tensor;

  std::string name;
  std::vector<std::size_t> shape;  // PyTorch shape: [out, in] for a Linear weight, [n] for 1-D
  ParamRole role = ParamRole::Matrix;
  Tensor value;  // stored as rows x cols; a 1-D parameter is 1 x n
  Tensor grad;

  std::size_t numel() const {
    return std::accumulate(shape.begin(), shape.end(), std::size_t{1}, std::multiplies<>());
  }
  std::size_t rows() const { return shape.size() == 2 ? shape[0] : 1; }
  std::size_t cols() const { return shape.back(); }
};

// Owns every parameter of a model; addresses stay valid as parameters are added (deque), so
// blocks keep plain pointers to their own.
template <class Backend>
class ParameterStore {
 public:
  using Param = Parameter<Backend>;

  Param& add(std::string name, std::vector<std::size_t> shape, ParamRole role) {
    require(!shape.empty() && shape.size() <= 2, "parameter ", name, ": rank must be 1 or 2");
    for (std::size_t s : shape) {
      require(s > 0, "parameter ", name, ": zero-sized dimension");
      require(s <= kMaxDimension, "parameter ", name, ": dimension ", s,
              " exceeds the largest dimension ablate takes (", kMaxDimension, ")");
    }
    require(find(name) == nullptr, "parameter ", name, " registered twice");
    const std::size_t n = shape.size() == 2 ? shape[0] * shape[1] : shape[0];  // < 2^62
    require(numel_ <= std::numeric_limits<std::size_t>::max() - n, "parameter ", name,
            ": the model's parameter count would exceed 2^64");
    index_.emplace(name, params_.size());
    Param& p = params_.emplace_back();
    p.name = std::move(name);
    p.shape = std::move(shape);
    p.role = role;
    numel_ += n;
    Backend::resize(p.value, p.rows(), p.cols());
    Backend::resize(p.grad, p.rows(), p.cols());
    Backend::set_zero(p.value);
    Backend::set_zero(p.grad);
    return p;
  }

  // By name, through an index: a model of thousands of layers builds in linear time.
  Param* find(const std::string& name) {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &params_[it->second];
  }
  const Param* find(const std::string& name) const {
    const auto it = index_.find(name);
    return it == index_.end() ? nullptr : &params_[it->second];
  }
  Param& at(const std::string& name) {
    Param* p = find(name);
    require(p != nullptr, "no parameter named ", name);
    return *p;
  }

  std::size_t size() const { return params_.size(); }
  std::size_t numel() const { return numel_; }
  void zero_grad() {
    for (Param& p : params_) Backend::set_zero(p.grad);
  }

  auto begin() { return params_.begin(); }
  auto end() { return params_.end(); }
  auto begin() const { return params_.begin(); }
  auto end() const { return params_.end(); }

 private:
  std::deque<Param> params_;
  std::unordered_map<std::string, std::size_t> index_;  // name -> position in params_
  std::size_t numel_ = 0;                                // elements of all parameters
};

}  // namespace ablate
