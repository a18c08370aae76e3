// The parameters a Model<Arch, B> has at a config (names, shapes, roles) without allocating
// them: the model is built over a backend whose tensors hold only their sizes.  Counting
// parameters, or checking a file's tensors against a config before a real model is built,
// then costs nothing at any size.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ablate/core/config.hpp"
#include "ablate/core/parameter.hpp"
#include "ablate/model/model.hpp"

namespace ablate {

struct ParameterInfo {
  std::string name;
  std::vector<std::size_t> shape;
  ParamRole role = ParamRole::Matrix;

  std::size_t numel() const {
    std::size_t n = 1;
    for (std::size_t s : shape) n *= s;
    return n;
  }
};

// Sizes, no elements.
struct ShapeOnlyTensor {
  std::ptrdiff_t rows_ = 0, cols_ = 0;
  std::ptrdiff_t rows() const { return rows_; }
  std::ptrdiff_t cols() const { return cols_; }
  std::ptrdiff_t size() const { return rows_ * cols_; }
};

// What a model's constructor asks of a backend, and nothing more: a Model<Arch,
// ShapeOnlyBackend> has every parameter's name, shape and role and holds no element; its
// forward and backward cannot be instantiated.
struct ShapeOnlyBackend {
  using Scalar = float;
  using Tensor = ShapeOnlyTensor;
  struct Indices {};  // MoE routing, never filled
  static constexpr const char* name = "shapes";
  static constexpr bool host_memory = false;
  static void resize(Tensor& t, std::ptrdiff_t rows, std::ptrdiff_t cols) {
    t.rows_ = rows;
    t.cols_ = cols;
  }
  static void set_zero(Tensor&) {}
  static void fill(Tensor&, double) {}
  static void fill_normal(Tensor&, std::uint64_t, double) {}
  static void fill_uniform(Tensor&, std::uint64_t, double) {}
  static void check_attention_heads(std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t, const char*) {}
};

// Every parameter of Model<Arch, B> at `cfg`, in registration order; throws invalid_input for
// a config the model refuses, as its constructor would.
template <class Arch>
std::vector<ParameterInfo> parameter_layout(const ModelConfig& cfg) {
  const Model<Arch, ShapeOnlyBackend> model(cfg, 0);
  std::vector<ParameterInfo> layout;
  layout.reserve(model.parameters().size());
  for (const auto& p : model.parameters()) layout.push_back({p.name, p.shape, p.role});
  return layout;
}

}  // namespace ablate
