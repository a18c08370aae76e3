// The shape errors of the element-wise, column and scatter kernels, written once for both
// backends: the CPU unit tests and the CUDA tests call it with their backend, a factory of
// zero tensors and one of routing indices, and check the returned tensor, which the calls with
// the right shapes left at zero.
#pragma once

#include <doctest/doctest.h>

#include <cstdint>
#include <vector>

#include <ablate/core/error.hpp>

namespace ablate_test {

template <class B, class Zeros, class MakeIndices>
typename B::Tensor check_elementwise_shape_errors(const Zeros& zeros,
                                                  const MakeIndices& make_indices) {
  using Tensor = typename B::Tensor;
  const auto invalid = [](auto&& call, const char* text) {
    CHECK_THROWS_WITH_AS(call(), doctest::Contains(text), ablate::invalid_input);
  };
  Tensor y = zeros(4, 6), out;
  invalid([&] { B::add_inplace(y, zeros(4, 5)); },
          "add_inplace: x is [4, 5], expected [4, 6]");
  invalid([&] { B::axpy(y, 2.0, zeros(3, 6)); }, "axpy: x is [3, 6], expected [4, 6]");
  invalid([&] { B::slice_columns(out, y, 4, 3); }, "slice_columns: columns [4, 7) of 4 rows");
  invalid([&] { B::slice_columns(out, y, -1, 2); }, "columns [-1, 1)");
  invalid([&] { B::write_columns(y, 5, zeros(4, 2)); }, "write_columns: columns [5, 7)");
  invalid([&] { B::add_columns(y, 0, zeros(3, 2)); }, "add_columns: columns [0, 2) of 3 rows");
  invalid([&] { B::silu_backward(out, zeros(4, 5), y); },
          "silu_backward: dy is [4, 5], expected [4, 6]");
  invalid([&] { B::swiglu_forward(out, y, zeros(4, 5)); },
          "swiglu_forward: up is [4, 5], expected [4, 6]");
  Tensor dgate, dup;
  invalid([&] { B::swiglu_backward(dgate, dup, zeros(2, 6), y, y); },
          "swiglu_backward: dh is [2, 6], expected [4, 6]");
  const typename B::Indices rows = make_indices(std::vector<std::int32_t>{0, 1});
  invalid([&] { B::scatter_add_rows(y, zeros(2, 5), rows, 0); },
          "moe scatter_add_rows: src has 5 columns but y has 6");
  // The right shapes still work.
  B::add_inplace(y, zeros(4, 6));
  B::write_columns(y, 4, zeros(4, 2));
  B::scatter_add_rows(y, zeros(2, 6), rows, 0);
  return y;
}

}  // namespace ablate_test
