// Operand checks shared by the backends' kernels: a block of the user's own, or a wrong shape
// passed between blocks, gets an invalid_input naming the kernel and both shapes instead of a
// GEMM or a row loop reading past the end of a tensor.  Templates on the tensor type (anything
// with rows() and cols()), so the CPU and CUDA backends check exactly the same things.
#pragma once

#include <cstddef>
#include <string>

#include "ablate/core/attention_shape.hpp"
#include "ablate/core/error.hpp"

namespace ablate::checks {

// t is [rows, cols].
template <class T>
void shape(const T& t, std::ptrdiff_t rows, std::ptrdiff_t cols, const char* what,
           const char* name) {
  require(t.rows() == rows && t.cols() == cols, what, ": ", name, " is [", t.rows(), ", ",
          t.cols(), "], expected [", rows, ", ", cols, "]");
}

// b has as many columns as a: rows of one added into rows of the other.
template <class T, class U>
void same_columns(const T& a, const U& b, const char* what, const char* a_name,
                  const char* b_name) {
  require(a.cols() == b.cols(), what, ": ", b_name, " has ", b.cols(), " columns but ", a_name,
          " has ", a.cols());
}

// Columns [offset, offset + count) of `whole`, for a block of `rows` rows.
template <class T>
void columns(const T& whole, std::ptrdiff_t offset, std::ptrdiff_t count, std::ptrdiff_t rows,
             const char* what) {
  require(offset >= 0 && count >= 0 && offset + count <= whole.cols() && rows == whole.rows(),
          what, ": columns [", offset, ", ", offset + count, ") of ", rows, " rows in a [",
          whole.rows(), ", ", whole.cols(), "] tensor");
}

// RoPE in place on x [N, heads * head_stride or more]: the rotary slice [offset, offset +
// rope_dim) of each head, rope_dim even; row r at position r % seq, N a multiple of seq.
template <class T>
void rope(const T& x, std::ptrdiff_t seq, std::ptrdiff_t heads, std::ptrdiff_t head_stride,
          std::ptrdiff_t offset, std::ptrdiff_t rope_dim, const char* what) {
  require(rope_dim >= 0 && rope_dim % 2 == 0, what, ": rope_dim must be even and >= 0, got ",
          rope_dim);
  require(heads >= 0 && offset >= 0 && offset + rope_dim <= head_stride, what,
          ": the rotary slice [", offset, ", ", offset + rope_dim,
          ") does not fit in a head of stride ", head_stride, " (heads ", heads, ")");
  require(heads * head_stride <= x.cols(), what, ": ", heads, " heads of stride ", head_stride,
          " need ", heads * head_stride, " columns, the tensor has ", x.cols());
  if (x.rows() == 0 || heads == 0 || rope_dim == 0) return;
  require(seq > 0 && x.rows() % seq == 0, what, ": ", x.rows(), " rows are not whole sequences of ",
          seq, " positions");
}

// y = x W^T + b: x [N, in], w [out, in], b [1, out] or null.
template <class T>
void linear_forward(const T& x, const T& w, const T* b, const char* what) {
  require(x.cols() == w.cols(), what, ": x is [", x.rows(), ", ", x.cols(), "] but the weight is [",
          w.rows(), ", ", w.cols(), "] (in_features ", w.cols(), ")");
  if (b != nullptr) shape(*b, 1, w.rows(), what, "the bias");
}

// The backward of linear_forward: dy [N, out] for the saved x [N, in]; dw like w, db like the
// bias; an accumulated dx already [N, in].
template <class T>
void linear_backward(const T* dx, const T& dw, const T* db, const T& dy, const T& x, const T& w,
                     bool accumulate_dx, const char* what) {
  linear_forward(x, w, db, what);
  shape(dy, x.rows(), w.rows(), what, "dy");
  shape(dw, w.rows(), w.cols(), what, "the weight gradient");
  if (dx != nullptr && accumulate_dx) shape(*dx, x.rows(), x.cols(), what, "the accumulated dx");
}

// x stacks `batch` matrices of equal shape along its rows (matrix g is rows [g r, (g + 1) r)).
template <class T>
void stack(const T& x, std::ptrdiff_t batch, const char* what, const char* name) {
  require(batch >= 1 && x.rows() % batch == 0, what, ": ", name, " is [", x.rows(), ", ",
          x.cols(), "], not a stack of ", batch, " matrices");
}

// part is the matrix in rows [row, row + part.rows()) of the stack `whole`.
template <class T>
void stacked_rows(const T& whole, std::ptrdiff_t row, const T& part, const char* what) {
  require(row >= 0 && row + part.rows() <= whole.rows() && part.cols() == whole.cols(), what,
          ": rows [", row, ", ", row + part.rows(), ") of a [", whole.rows(), ", ", whole.cols(),
          "] stack for a [", part.rows(), ", ", part.cols(), "] matrix");
}

// c = a b: a [m, k], b [k, n]; batched, a stacks `batch` [m, k] and b `batch` [k, n].
template <class T>
void matmul(const T& a, const T& b, const char* what, std::ptrdiff_t batch = 1) {
  stack(a, batch, what, "a");
  stack(b, batch, what, "b");
  require(a.cols() * batch == b.rows(), what, ": a is [", a.rows(), ", ", a.cols(), "] but b is [",
          b.rows(), ", ", b.cols(), "]", batch > 1 ? " (stacks of " + std::to_string(batch) + ")" : "");
}

// A norm over the features of x [N, d] with per-feature parameters [1, d].
template <class T>
void norm_parameters(const T& x, const T& w, const char* what) {
  shape(w, 1, x.cols(), what, "the weight");
}

// The backward of a norm: dy like x, the gradient like the weight, one saved statistic per row.
template <class T>
void norm_backward(const T& dy, const T& x, const T& w, const T& dw, const T& stat,
                   const char* what) {
  norm_parameters(x, w, what);
  shape(dy, x.rows(), x.cols(), what, "dy");
  shape(dw, 1, x.cols(), what, "the weight gradient");
  shape(stat, x.rows(), 1, what, "the saved statistics");
}

// LayerNorm's backward also has a bias gradient and the saved means.
template <class T>
void layernorm_backward(const T& dy, const T& x, const T& w, const T& dw, const T& db,
                        const T& mean, const T& rstd, const char* what) {
  norm_backward(dy, x, w, dw, rstd, what);
  shape(db, 1, x.cols(), what, "the bias gradient");
  shape(mean, x.rows(), 1, what, "the saved means");
}

// q, k [batch*seq, >= heads*qk_dim] and v [batch*seq, >= heads*v_dim] (a tensor may be wider
// than its heads), a non-negative shape and a dropout probability in [0, 1).
template <class T>
void attention_inputs(const T& q, const T& k, const T& v, const AttentionShape& a,
                      double dropout_p, const char* what) {
  require(a.batch >= 0 && a.seq >= 0 && a.heads >= 0, what, ": negative shape (batch ", a.batch,
          ", seq ", a.seq, ", heads ", a.heads, ")");
  require(a.qk_dim >= 1 && a.v_dim >= 1, what, ": head dims must be >= 1, got qk_dim ", a.qk_dim,
          " and v_dim ", a.v_dim);
  require(dropout_p >= 0.0 && dropout_p < 1.0, what, ": dropout_p must be in [0, 1), got ",
          dropout_p);
  const std::ptrdiff_t rows = a.batch * a.seq;
  const auto check = [&](const T& t, const char* name, std::ptrdiff_t dim) {
    require(t.rows() == rows && t.cols() >= a.heads * dim, what, ": ", name, " is [", t.rows(),
            ", ", t.cols(), "], expected [", rows, ", ", a.heads * dim, "] (batch ", a.batch,
            " x seq ", a.seq, ", heads ", a.heads, " x dim ", dim, ")");
  };
  check(q, "q", a.qk_dim);
  check(k, "k", a.qk_dim);
  check(v, "v", a.v_dim);
}

// The upstream gradient of an attention call: [batch*seq, >= heads*v_dim].
template <class T>
void attention_dout(const T& dout, const AttentionShape& a, const char* what) {
  const std::ptrdiff_t rows = a.batch * a.seq;
  require(dout.rows() == rows && dout.cols() >= a.heads * a.v_dim, what, ": dout is [",
          dout.rows(), ", ", dout.cols(), "], expected [", rows, ", ", a.heads * a.v_dim, "]");
}

}  // namespace ablate::checks
