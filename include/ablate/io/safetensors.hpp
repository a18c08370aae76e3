// Safetensors files, as Hugging Face's `safetensors` package reads and writes them:
//
//   8 bytes   N, the header length, unsigned little-endian
//   N bytes   JSON object {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]},
//             ..., "__metadata__": {"<key>": "<string>", ...}}, padded with spaces to a
//             multiple of 8
//   the rest  the data buffer: each tensor's elements, C order, little-endian, at [b, e)
//
// The reader checks everything the Python package checks and more, before it allocates
// anything that the file size does not bound: the header length against the file size and
// the 100 MB limit, the JSON (strictly: one object, no duplicate keys, no unknown fields),
// every dtype and shape, the byte count of every tensor, and that the offsets tile the data
// buffer exactly (sorted by offset, from 0, no gaps, no overlaps, no trailing bytes).  Content
// errors throw ablate::invalid_input naming the source and the problem; I/O errors throw
// data::io_error.
//
// The writer lays tensors out as the Python package does (by dtype size, largest first, then
// by name, so every tensor is aligned), writes compact JSON with the fields in the package's
// order, and streams to a temporary file that is renamed over the target only when complete.
//
// Conversions: float and double values can be stored as F64, F32, F16 or BF16 (rounded to
// nearest, ties to even) and read back from any floating-point or integer dtype; integer values
// are stored as and read from the integer dtypes (and BOOL) with range checks.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <ostream>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/data/atomic_file.hpp"
#include "ablate/data/file_io.hpp"

namespace ablate::io {

// ---------------------------------------------------------------------------------------------
// Dtypes, in the order the Python package ranks them (it sorts by this rank, descending).

enum class Dtype : std::uint8_t {
  BOOL,
  U8,
  I8,
  F8_E5M2,
  F8_E4M3,
  I16,
  U16,
  F16,
  BF16,
  I32,
  U32,
  F32,
  F64,
  I64,
  U64,
};

namespace detail {

using ablate::detail::concat;

struct DtypeRow {
  Dtype dtype;
  std::string_view name;
  std::size_t size;
  bool floating;
};

inline constexpr std::array<DtypeRow, 15> kDtypeTable{{
    {Dtype::BOOL, "BOOL", 1, false},
    {Dtype::U8, "U8", 1, false},
    {Dtype::I8, "I8", 1, false},
    {Dtype::F8_E5M2, "F8_E5M2", 1, true},
    {Dtype::F8_E4M3, "F8_E4M3", 1, true},
    {Dtype::I16, "I16", 2, false},
    {Dtype::U16, "U16", 2, false},
    {Dtype::F16, "F16", 2, true},
    {Dtype::BF16, "BF16", 2, true},
    {Dtype::I32, "I32", 4, false},
    {Dtype::U32, "U32", 4, false},
    {Dtype::F32, "F32", 4, true},
    {Dtype::F64, "F64", 8, true},
    {Dtype::I64, "I64", 8, false},
    {Dtype::U64, "U64", 8, false},
}};

constexpr const DtypeRow& dtype_row(Dtype d) { return kDtypeTable[static_cast<std::size_t>(d)]; }

}  // namespace detail

// Bytes per element.
constexpr std::size_t dtype_size(Dtype d) { return detail::dtype_row(d).size; }
// The name used in headers: "F32", "BF16", ...
constexpr std::string_view dtype_name(Dtype d) { return detail::dtype_row(d).name; }
constexpr bool is_floating_point(Dtype d) { return detail::dtype_row(d).floating; }
// Integer dtypes other than BOOL.
constexpr bool is_integer(Dtype d) { return !is_floating_point(d) && d != Dtype::BOOL; }

inline std::optional<Dtype> dtype_from_name(std::string_view name) {
  for (const detail::DtypeRow& row : detail::kDtypeTable)
    if (row.name == name) return row.dtype;
  return std::nullopt;
}

inline std::ostream& operator<<(std::ostream& out, Dtype d) { return out << dtype_name(d); }

// ---------------------------------------------------------------------------------------------
// Small floating-point formats.

namespace detail {

// The bit pattern of the IEEE-style binary format with `exp_bits` exponent and `man_bits`
// mantissa bits (inf and NaN at the top exponent) nearest to x, ties to even.  Rounds once,
// straight from double, so float -> BF16 through here never double-rounds.
inline std::uint32_t round_to_binary(double x, int exp_bits, int man_bits) {
  const auto bits = std::bit_cast<std::uint64_t>(x);
  const std::uint32_t sign = static_cast<std::uint32_t>(bits >> 63) << (exp_bits + man_bits);
  const int exp_field = static_cast<int>((bits >> 52) & 0x7FF);
  const std::uint64_t frac = bits & ((std::uint64_t{1} << 52) - 1);
  const int exp_max = (1 << exp_bits) - 1;
  const std::uint32_t inf = sign | (static_cast<std::uint32_t>(exp_max) << man_bits);
  if (exp_field == 0x7FF) return frac == 0 ? inf : inf | (std::uint32_t{1} << (man_bits - 1));
  // Zero, or a double subnormal: far below half the smallest subnormal of the target.
  if (exp_field == 0) return sign;

  const int bias = (1 << (exp_bits - 1)) - 1;
  int target_exp = exp_field - 1023 + bias;  // biased exponent, if the result is normal
  if (target_exp >= exp_max) return inf;
  const std::uint64_t sig = (std::uint64_t{1} << 52) | frac;  // x = sig * 2^(exp - 1023 - 52)
  const int shift = 52 - man_bits + (target_exp >= 1 ? 0 : 1 - target_exp);  // bits dropped
  if (shift >= 64) return sign;
  std::uint64_t mant = sig >> shift;
  const std::uint64_t rest = sig & ((std::uint64_t{1} << shift) - 1);
  const std::uint64_t half = std::uint64_t{1} << (shift - 1);
  if (rest > half || (rest == half && (mant & 1) != 0)) ++mant;
  if (target_exp < 1) {
    // A subnormal count of the smallest step; a carry into bit man_bits is the smallest
    // normal number, which the same bit pattern encodes.
    return sign | static_cast<std::uint32_t>(mant);
  }
  if ((mant >> (man_bits + 1)) != 0) {  // rounding carried out of the mantissa
    mant >>= 1;
    ++target_exp;
    if (target_exp >= exp_max) return inf;
  }
  return sign | (static_cast<std::uint32_t>(target_exp) << man_bits) |
         static_cast<std::uint32_t>(mant & ((std::uint64_t{1} << man_bits) - 1));
}

// The value of an IEEE-style binary bit pattern (exact in double for every format here).
// finite_only: the top exponent holds numbers, with NaN only at all-ones (float8_e4m3fn).
inline double binary_value(std::uint32_t bits, int exp_bits, int man_bits,
                           bool finite_only = false) {
  const bool negative = ((bits >> (exp_bits + man_bits)) & 1) != 0;
  const std::uint32_t exp_max = (std::uint32_t{1} << exp_bits) - 1;
  const std::uint32_t exp_field = (bits >> man_bits) & exp_max;
  const std::uint32_t mant = bits & ((std::uint32_t{1} << man_bits) - 1);
  const int bias = (1 << (exp_bits - 1)) - 1;
  double v;
  if (!finite_only && exp_field == exp_max) {
    v = mant != 0 ? std::numeric_limits<double>::quiet_NaN()
                  : std::numeric_limits<double>::infinity();
  } else if (finite_only && exp_field == exp_max && mant == (std::uint32_t{1} << man_bits) - 1) {
    v = std::numeric_limits<double>::quiet_NaN();
  } else if (exp_field == 0) {
    v = std::ldexp(static_cast<double>(mant), 1 - bias - man_bits);
  } else {
    v = std::ldexp(static_cast<double>(mant | (std::uint32_t{1} << man_bits)),
                   static_cast<int>(exp_field) - bias - man_bits);
  }
  return std::copysign(v, negative ? -1.0 : 1.0);
}

}  // namespace detail

// bfloat16 and IEEE half: round to nearest even from double, exact back to double.
inline std::uint16_t to_bf16_bits(double x) {
  return static_cast<std::uint16_t>(detail::round_to_binary(x, 8, 7));
}
inline std::uint16_t to_f16_bits(double x) {
  return static_cast<std::uint16_t>(detail::round_to_binary(x, 5, 10));
}
inline double from_bf16_bits(std::uint16_t bits) { return detail::binary_value(bits, 8, 7); }
inline double from_f16_bits(std::uint16_t bits) { return detail::binary_value(bits, 5, 10); }

// ---------------------------------------------------------------------------------------------
// Element encoding and decoding.

namespace detail {

inline std::uint64_t load_le(const unsigned char* p, std::size_t n) {
  std::uint64_t v = 0;
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(&v, p, n);
  } else {
    for (std::size_t i = 0; i < n; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  }
  return v;
}

inline void store_le(unsigned char* p, std::uint64_t v, std::size_t n) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(p, &v, n);
  } else {
    for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
  }
}

// The value of one element as a double (integers above 2^53 round).
inline double element_as_double(Dtype d, const unsigned char* p) {
  switch (d) {
    case Dtype::BOOL:
      return static_cast<double>(p[0]);  // 0 or 1: decode() refuses other bytes
    case Dtype::U8:
      return static_cast<double>(p[0]);
    case Dtype::I8:
      return static_cast<double>(static_cast<std::int8_t>(p[0]));
    case Dtype::F8_E5M2:
      return binary_value(p[0], 5, 2);
    case Dtype::F8_E4M3:
      return binary_value(p[0], 4, 3, /*finite_only=*/true);
    case Dtype::I16:
      return static_cast<double>(static_cast<std::int16_t>(load_le(p, 2)));
    case Dtype::U16:
      return static_cast<double>(load_le(p, 2));
    case Dtype::F16:
      return binary_value(static_cast<std::uint32_t>(load_le(p, 2)), 5, 10);
    case Dtype::BF16:
      return binary_value(static_cast<std::uint32_t>(load_le(p, 2)), 8, 7);
    case Dtype::I32:
      return static_cast<double>(static_cast<std::int32_t>(load_le(p, 4)));
    case Dtype::U32:
      return static_cast<double>(load_le(p, 4));
    case Dtype::F32:
      return static_cast<double>(std::bit_cast<float>(static_cast<std::uint32_t>(load_le(p, 4))));
    case Dtype::F64:
      return std::bit_cast<double>(load_le(p, 8));
    case Dtype::I64:
      return static_cast<double>(static_cast<std::int64_t>(load_le(p, 8)));
    case Dtype::U64:
      return static_cast<double>(load_le(p, 8));
  }
  return 0.0;
}

// An integer element: signed dtypes give a signed value, the others an unsigned one.
struct IntegerElement {
  bool is_signed;
  std::int64_t s;
  std::uint64_t u;
};

inline IntegerElement element_as_integer(Dtype d, const unsigned char* p) {
  switch (d) {
    case Dtype::I8:
      return {true, static_cast<std::int8_t>(p[0]), 0};
    case Dtype::I16:
      return {true, static_cast<std::int16_t>(load_le(p, 2)), 0};
    case Dtype::I32:
      return {true, static_cast<std::int32_t>(load_le(p, 4)), 0};
    case Dtype::I64:
      return {true, static_cast<std::int64_t>(load_le(p, 8)), 0};
    case Dtype::BOOL:
      return {false, 0, p[0]};  // 0 or 1: decode() refuses other bytes
    default:
      return {false, 0, load_le(p, dtype_size(d))};
  }
}

template <class T>
constexpr bool is_readable_scalar =
    std::is_arithmetic_v<T> && !std::is_const_v<T> && !std::is_same_v<T, char> &&
    !std::is_same_v<T, wchar_t> && !std::is_same_v<T, char8_t> && !std::is_same_v<T, char16_t> &&
    !std::is_same_v<T, char32_t>;

// Whether values of type T may be stored as dtype d.
template <class T>
bool writable_as(Dtype d) {
  if constexpr (std::is_floating_point_v<T>) {
    return d == Dtype::F64 || d == Dtype::F32 || d == Dtype::F16 || d == Dtype::BF16;
  } else {
    return !is_floating_point(d);
  }
}

// Encodes values[0, count) as dtype d into out (count * dtype_size(d) bytes).
template <class T>
void encode(Dtype d, const T* values, std::size_t count, unsigned char* out,
            std::string_view name) {
  const std::size_t size = dtype_size(d);
  if constexpr (std::is_floating_point_v<T>) {
    if ((d == Dtype::F32 && std::is_same_v<T, float>) ||
        (d == Dtype::F64 && std::is_same_v<T, double>)) {
      if constexpr (std::endian::native == std::endian::little) {
        if (count > 0)
          std::memcpy(out, values, count * sizeof(T));  // values may be null when empty
        return;
      }
    }
    // A finite value beyond the dtype's range would be stored as an infinity: refused.
    auto overflow = [&](std::size_t i, double x) {
      throw invalid_input(detail::concat("tensor '", name, "': element ", i, " = ", x,
                                         " is finite but overflows ", d, " (it would be stored as inf)"));
    };
    for (std::size_t i = 0; i < count; ++i, out += size) {
      const double x = static_cast<double>(values[i]);
      switch (d) {
        case Dtype::F64:
          store_le(out, std::bit_cast<std::uint64_t>(x), 8);
          break;
        case Dtype::F32: {
          const float f = static_cast<float>(x);
          if (std::isinf(f) && std::isfinite(x)) overflow(i, x);
          store_le(out, std::bit_cast<std::uint32_t>(f), 4);
          break;
        }
        case Dtype::F16: {
          const std::uint64_t bits = round_to_binary(x, 5, 10);
          if ((bits & 0x7fff) == 0x7c00 && std::isfinite(x)) overflow(i, x);
          store_le(out, bits, 2);
          break;
        }
        case Dtype::BF16: {
          const std::uint64_t bits = round_to_binary(x, 8, 7);
          if ((bits & 0x7fff) == 0x7f80 && std::isfinite(x)) overflow(i, x);
          store_le(out, bits, 2);
          break;
        }
        default:
          throw invalid_input(
              detail::concat("tensor '", name, "': cannot store floating-point values as ", d));
      }
    }
  } else {
    // bool is no "standard integer type" for std::in_range; widen it.
    using Wide = std::conditional_t<std::is_same_v<T, bool>, int, T>;
    for (std::size_t i = 0; i < count; ++i, out += size) {
      const Wide v = static_cast<Wide>(values[i]);
      bool fits = false;
      switch (d) {
        case Dtype::BOOL:
          fits = v == Wide(0) || v == Wide(1);
          break;
        case Dtype::U8:
          fits = std::in_range<std::uint8_t>(v);
          break;
        case Dtype::I8:
          fits = std::in_range<std::int8_t>(v);
          break;
        case Dtype::I16:
          fits = std::in_range<std::int16_t>(v);
          break;
        case Dtype::U16:
          fits = std::in_range<std::uint16_t>(v);
          break;
        case Dtype::I32:
          fits = std::in_range<std::int32_t>(v);
          break;
        case Dtype::U32:
          fits = std::in_range<std::uint32_t>(v);
          break;
        case Dtype::I64:
          fits = std::in_range<std::int64_t>(v);
          break;
        case Dtype::U64:
          fits = std::in_range<std::uint64_t>(v);
          break;
        default:
          throw invalid_input(
              detail::concat("tensor '", name, "': cannot store integer values as ", d));
      }
      if (!fits)
        throw invalid_input(
            detail::concat("tensor '", name, "': element ", i, " = ", +v, " does not fit in ", d));
      // Two's complement: the low bytes of the 64-bit pattern are the narrow encoding.
      const std::uint64_t raw = std::is_signed_v<Wide>
                                    ? static_cast<std::uint64_t>(static_cast<std::int64_t>(v))
                                    : static_cast<std::uint64_t>(v);
      store_le(out, raw, size);
    }
  }
}

// Decodes count elements of dtype d from `in` into out.
template <class T>
void decode(Dtype d, const unsigned char* in, std::size_t count, T* out, std::string_view source,
            std::string_view name, std::size_t first_index) {
  const std::size_t size = dtype_size(d);
  // A BOOL byte other than 0 or 1 is corruption, not a "true" to guess at.
  if (d == Dtype::BOOL) {
    for (std::size_t i = 0; i < count; ++i)
      if (in[i] > 1)
        throw invalid_input(detail::concat(source, ": tensor '", name, "': element ",
                                           first_index + i, " is byte ", +in[i],
                                           ", not a BOOL (0 or 1)"));
  }
  if constexpr (std::is_floating_point_v<T>) {
    if constexpr (std::endian::native == std::endian::little) {
      if ((d == Dtype::F32 && std::is_same_v<T, float>) ||
          (d == Dtype::F64 && std::is_same_v<T, double>)) {
        if (count > 0) std::memcpy(out, in, count * sizeof(T));
        return;
      }
    }
    for (std::size_t i = 0; i < count; ++i, in += size)
      out[i] = static_cast<T>(element_as_double(d, in));
  } else {
    if (is_floating_point(d))
      throw invalid_input(detail::concat(source, ": tensor '", name, "' has dtype ", d,
                                         ", which cannot be read as integers"));
    for (std::size_t i = 0; i < count; ++i, in += size) {
      const IntegerElement e = element_as_integer(d, in);
      bool fits;
      if constexpr (std::is_same_v<T, bool>) {
        fits = e.is_signed ? (e.s == 0 || e.s == 1) : e.u <= 1;
      } else {
        fits = e.is_signed ? std::in_range<T>(e.s) : std::in_range<T>(e.u);
      }
      if (!fits) {
        throw invalid_input(detail::concat(source, ": tensor '", name, "': element ",
                                           first_index + i, " = ",
                                           e.is_signed ? std::to_string(e.s) : std::to_string(e.u),
                                           " does not fit in the requested integer type"));
      }
      out[i] = e.is_signed ? static_cast<T>(e.s) : static_cast<T>(e.u);
    }
  }
}

inline std::string shape_string(std::span<const std::size_t> shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// numel and byte count of a shape, or nullopt on overflow.
inline std::optional<std::pair<std::size_t, std::size_t>> checked_extent(
    std::span<const std::size_t> shape, Dtype d) {
  std::size_t numel = 1;
  for (std::size_t dim : shape) {
    if (dim != 0 && numel > std::numeric_limits<std::size_t>::max() / dim) return std::nullopt;
    numel *= dim;
  }
  if (numel > std::numeric_limits<std::size_t>::max() / dtype_size(d)) return std::nullopt;
  return std::pair{numel, numel * dtype_size(d)};
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// The header.

// One tensor of a file: where its bytes are in the data buffer.
struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::size_t> shape;  // PyTorch shape; [] is a scalar
  std::size_t begin = 0;           // data_offsets, relative to the data buffer
  std::size_t end = 0;

  std::size_t numel() const {
    std::size_t n = 1;
    for (std::size_t d : shape) n *= d;  // validated against overflow when parsed
    return n;
  }
  std::size_t nbytes() const { return end - begin; }
};

// Files may hold at most this much header, as in the Python package.
inline constexpr std::size_t kMaxHeaderBytes = 100'000'000;

namespace detail {

struct ParsedHeader {
  std::vector<TensorInfo> tensors;  // sorted by offset
  std::map<std::string, std::size_t, std::less<>> index;
  std::map<std::string, std::string> metadata;
};

// nlohmann SAX handler for the header: validates the structure as it streams past, so no
// JSON tree is ever built and nesting cannot grow beyond what the format allows.
class HeaderHandler {
 public:
  using json = nlohmann::json;

  explicit HeaderHandler(std::string_view source) : source_(source) {}

  bool null() {
    if (state_ == State::TopValue && key_ == "__metadata__") {  // the package reads null as none
      state_ = State::TopKey;
      return true;
    }
    return unexpected("null");
  }
  bool boolean(bool) { return unexpected("a boolean"); }
  bool number_integer(json::number_integer_t v) {
    if (state_ == State::Shape || state_ == State::Offsets)
      fail(concat(where(), " must hold non-negative integers, got ", v));
    return unexpected("a number");
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (state_ != State::Shape && state_ != State::Offsets) return unexpected("a number");
    if constexpr (sizeof(std::size_t) < sizeof(v)) {
      if (v > std::numeric_limits<std::size_t>::max())
        fail(concat(where(), ": ", v, " is too large"));
    }
    if (state_ == State::Shape) {
      current_.shape.push_back(static_cast<std::size_t>(v));
    } else {
      if (offsets_.size() == 2) fail(concat(where(), " must hold exactly 2 integers [begin, end]"));
      offsets_.push_back(static_cast<std::size_t>(v));
    }
    return true;
  }
  bool number_float(json::number_float_t, const json::string_t& text) {
    if (state_ == State::Shape || state_ == State::Offsets)
      fail(concat(where(), " must hold non-negative integers, got ", text));
    return unexpected("a number");
  }
  bool string(json::string_t& s) {
    if (state_ == State::MetaValue) {
      out_.metadata.emplace(meta_key_, std::move(s));
      state_ = State::MetaKey;
      return true;
    }
    if (state_ == State::FieldValue && field_ == Field::Dtype) {
      const std::optional<Dtype> d = dtype_from_name(s);
      if (!d) fail(concat("tensor '", key_, "': unknown dtype '", s, "'"));
      current_.dtype = *d;
      state_ = State::FieldKey;
      return true;
    }
    return unexpected("a string");
  }
  bool binary(json::binary_t&) { return unexpected("binary data"); }

  bool start_object(std::size_t) {
    switch (state_) {
      case State::Start:
        state_ = State::TopKey;
        return true;
      case State::TopValue:
        if (key_ == "__metadata__") {
          state_ = State::MetaKey;
        } else {
          current_ = TensorInfo{};
          current_.name = key_;
          seen_fields_ = 0;
          state_ = State::FieldKey;
        }
        return true;
      default:
        return unexpected("an object");
    }
  }
  bool key(json::string_t& k) {
    switch (state_) {
      case State::TopKey:
        if (k == "__metadata__" ? seen_metadata_ : out_.index.count(k) != 0)
          fail(concat("duplicate key '", k, "'"));
        if (k == "__metadata__") {
          seen_metadata_ = true;
        } else {
          out_.index.emplace(k, 0);  // the index is filled in once the tensors are sorted
        }
        key_ = std::move(k);
        state_ = State::TopValue;
        return true;
      case State::MetaKey:
        if (out_.metadata.count(k) != 0) fail(concat("duplicate __metadata__ key '", k, "'"));
        meta_key_ = std::move(k);
        state_ = State::MetaValue;
        return true;
      case State::FieldKey: {
        unsigned bit = 0;
        if (k == "dtype") {
          field_ = Field::Dtype;
          bit = 1;
        } else if (k == "shape") {
          field_ = Field::Shape;
          bit = 2;
        } else if (k == "data_offsets") {
          field_ = Field::Offsets;
          bit = 4;
        } else {
          fail(concat("tensor '", key_, "': unknown field '", k,
                      "' (expected dtype, shape and data_offsets)"));
        }
        if ((seen_fields_ & bit) != 0)
          fail(concat("tensor '", key_, "': duplicate field '", k, "'"));
        seen_fields_ |= bit;
        state_ = State::FieldValue;
        return true;
      }
      default:
        return unexpected("a key");
    }
  }
  bool end_object() {
    switch (state_) {
      case State::TopKey:
        state_ = State::Done;
        return true;
      case State::MetaKey:
        state_ = State::TopKey;
        return true;
      case State::FieldKey:
        finish_tensor();
        state_ = State::TopKey;
        return true;
      default:
        return unexpected("the end of an object");
    }
  }
  bool start_array(std::size_t) {
    if (state_ == State::FieldValue && field_ == Field::Shape) {
      state_ = State::Shape;
      return true;
    }
    if (state_ == State::FieldValue && field_ == Field::Offsets) {
      offsets_.clear();
      state_ = State::Offsets;
      return true;
    }
    return unexpected("an array");
  }
  bool end_array() {
    if (state_ == State::Shape) {
      state_ = State::FieldKey;
      return true;
    }
    if (state_ == State::Offsets) {
      if (offsets_.size() != 2) fail(concat(where(), " must hold exactly 2 integers [begin, end]"));
      current_.begin = offsets_[0];
      current_.end = offsets_[1];
      state_ = State::FieldKey;
      return true;
    }
    return unexpected("the end of an array");
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    fail(concat("not valid JSON: ", e.what()));
  }

  // Checks the layout once the whole object has been read; data_size is the byte count after
  // the header.
  ParsedHeader finish(std::size_t data_size) {
    if (state_ != State::Done) fail("incomplete JSON object");
    std::vector<TensorInfo>& t = out_.tensors;
    for (const TensorInfo& info : t) {
      if (info.end > data_size)
        fail(concat("tensor '", info.name, "': data_offsets [", info.begin, ", ", info.end,
                    "] run past the end of the data buffer (", data_size,
                    " bytes; file truncated?)"));
    }
    std::sort(t.begin(), t.end(), [](const TensorInfo& a, const TensorInfo& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    std::size_t expected = 0;
    for (std::size_t i = 0; i < t.size(); ++i) {
      if (t[i].begin < expected)
        fail(concat("tensor '", t[i].name, "': data_offsets [", t[i].begin, ", ", t[i].end,
                    "] overlap tensor '", t[i - 1].name, "' [", t[i - 1].begin, ", ", t[i - 1].end,
                    "]"));
      if (t[i].begin > expected)
        fail(concat("tensor '", t[i].name, "': data_offsets begin at ", t[i].begin,
                    ", leaving a gap after byte ", expected,
                    " (offsets must be contiguous from 0)"));
      expected = t[i].end;
      out_.index[t[i].name] = i;
    }
    if (expected != data_size)
      fail(concat("the tensors cover ", expected, " bytes but the data buffer holds ", data_size,
                  " (trailing bytes)"));
    return std::move(out_);
  }

  template <class... Parts>
  [[noreturn]] void fail(Parts&&... parts) const {
    throw invalid_input(
        concat(source_, ": invalid safetensors header: ", std::forward<Parts>(parts)...));
  }

 private:
  enum class State {
    Start,
    TopKey,
    TopValue,
    MetaKey,
    MetaValue,
    FieldKey,
    FieldValue,
    Shape,
    Offsets,
    Done
  };
  enum class Field { Dtype, Shape, Offsets };

  std::string where() const {
    return concat("tensor '", key_, "': ", field_ == Field::Shape ? "shape" : "data_offsets");
  }

  [[noreturn]] bool unexpected(std::string_view what) const {
    switch (state_) {
      case State::Start:
        fail("the header must be a JSON object, got ", what);
      case State::TopValue:
        if (key_ == "__metadata__") fail("__metadata__ must be an object of strings, got ", what);
        fail("tensor '", key_, "' must be an object, got ", what);
      case State::MetaValue:
        fail("__metadata__ value of '", meta_key_, "' must be a string, got ", what);
      case State::FieldValue:
        fail("tensor '", key_, "': field '",
             field_ == Field::Dtype   ? "dtype"
             : field_ == Field::Shape ? "shape"
                                      : "data_offsets",
             "' has the wrong type (", what, ")");
      case State::Shape:
      case State::Offsets:
        fail(where(), " must hold non-negative integers, got ", what);
      default:
        fail("unexpected ", what);
    }
  }

  void finish_tensor() {
    if (seen_fields_ != 7)
      fail("tensor '", key_, "' lacks ",
           (seen_fields_ & 1) == 0   ? "dtype"
           : (seen_fields_ & 2) == 0 ? "shape"
                                     : "data_offsets");
    const auto extent = checked_extent(current_.shape, current_.dtype);
    if (!extent)
      fail("tensor '", key_, "': shape ", shape_string(current_.shape), " of ", current_.dtype,
           " overflows (integer overflow in the element or byte count)");
    if (current_.end < current_.begin)
      fail("tensor '", key_, "': data_offsets [", current_.begin, ", ", current_.end,
           "] end before they begin");
    if (current_.end - current_.begin != extent->second)
      fail("tensor '", key_, "': data_offsets [", current_.begin, ", ", current_.end, "] hold ",
           current_.end - current_.begin, " bytes but ", current_.dtype, " shape ",
           shape_string(current_.shape), " needs ", extent->second);
    out_.tensors.push_back(std::move(current_));
  }

  std::string source_;
  State state_ = State::Start;
  Field field_ = Field::Dtype;
  std::string key_, meta_key_;
  bool seen_metadata_ = false;
  unsigned seen_fields_ = 0;
  TensorInfo current_;
  std::vector<std::size_t> offsets_;
  ParsedHeader out_;
};

// Parses and validates a header (the N bytes after the length) for a data buffer of
// data_size bytes.
inline ParsedHeader parse_header(std::string_view header, std::size_t data_size,
                                 std::string_view source) {
  HeaderHandler handler(source);
  // The JSON parser would stop at a NUL byte and skip a byte-order mark; the format's
  // reference reader refuses both, and so does this one.
  if (header.find('\0') != std::string_view::npos) handler.fail("the header holds a NUL byte");
  if (header.starts_with("\xEF\xBB\xBF")) handler.fail("the header starts with a byte-order mark");
  const bool ok = nlohmann::json::sax_parse(header.begin(), header.end(), &handler,
                                            nlohmann::json::input_format_t::json, /*strict=*/true);
  if (!ok) handler.fail("not valid JSON");
  return handler.finish(data_size);
}

// Checks the 8-byte length prefix of a file (or buffer) of file_size bytes; returns N.
inline std::size_t checked_header_length(const unsigned char* prefix, std::uint64_t file_size,
                                         std::string_view source) {
  const std::uint64_t n = load_le(prefix, 8);
  if (n > kMaxHeaderBytes)
    throw invalid_input(concat(source, ": safetensors header length ", n, " exceeds the limit of ",
                               kMaxHeaderBytes, " bytes (corrupt file?)"));
  if (n > file_size - 8)
    throw invalid_input(concat(source, ": safetensors header length ", n, " exceeds the ",
                               file_size - 8, " bytes after the length prefix (truncated file?)"));
  if (n < 2)
    throw invalid_input(concat(source, ": safetensors header length ", n, " is too small"));
  return static_cast<std::size_t>(n);
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Reading.

// A validated file: its tensor index and metadata up front, tensor data on request (from the
// file, or from the bytes given to from_memory).  Reads share one file stream, so one reader
// must not be used from several threads at once.
class SafetensorsReader {
 public:
  // Reads and validates the header of a file; tensor data is read on demand.
  static SafetensorsReader open(const std::filesystem::path& path) {
    namespace fs = std::filesystem;
    const std::string source = path.string();
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    if (!fs::exists(status)) throw data::io_error("cannot read " + source + ": no such file");
    if (!fs::is_regular_file(status))
      throw data::io_error("cannot read " + source + ": not a regular file");
    const std::uintmax_t size = fs::file_size(path, ec);
    if (ec) throw data::io_error("cannot read " + source + ": " + ec.message());

    SafetensorsReader r;
    r.source_ = source;
    r.file_ = std::make_unique<std::ifstream>(path, std::ios::binary);
    if (!*r.file_) throw data::io_error("cannot open " + source + ": " + std::strerror(errno));
    if (size < 8)
      throw invalid_input(detail::concat(source, ": file is ", size,
                                         " bytes, too short for a safetensors file (the length "
                                         "prefix alone is 8)"));
    unsigned char prefix[8];
    r.file_->read(reinterpret_cast<char*>(prefix), 8);
    if (r.file_->gcount() != 8) throw data::io_error("cannot read " + source + ": short read");
    const std::size_t n = detail::checked_header_length(prefix, size, source);
    std::string header(n, '\0');
    r.file_->read(header.data(), static_cast<std::streamsize>(n));
    if (static_cast<std::size_t>(r.file_->gcount()) != n)
      throw data::io_error("cannot read " + source + ": short read");
    r.data_start_ = 8 + n;
    r.header_ = detail::parse_header(header, static_cast<std::size_t>(size - 8 - n), source);
    return r;
  }

  // Parses a whole file held in memory (the fuzzer's entry point); keeps its own copy.
  static SafetensorsReader from_memory(std::string bytes, std::string source = "<memory>") {
    if (bytes.size() < 8)
      throw invalid_input(detail::concat(source, ": ", bytes.size(),
                                         " bytes are too short for a safetensors file (the length "
                                         "prefix alone is 8)"));
    const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
    const std::size_t n = detail::checked_header_length(p, bytes.size(), source);
    SafetensorsReader r;
    r.header_ =
        detail::parse_header(std::string_view(bytes).substr(8, n), bytes.size() - 8 - n, source);
    r.source_ = std::move(source);
    r.data_start_ = 8 + n;
    r.memory_ = std::move(bytes);
    return r;
  }

  const std::string& source() const { return source_; }
  // Every tensor, in the order of their data.
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  std::size_t size() const { return header_.tensors.size(); }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  // The value of a __metadata__ key, or null.
  const std::string* metadata_value(std::string_view key) const {
    const auto it = header_.metadata.find(std::string(key));
    return it == header_.metadata.end() ? nullptr : &it->second;
  }

  const TensorInfo* find(std::string_view name) const {
    const auto it = header_.index.find(name);
    return it == header_.index.end() ? nullptr : &header_.tensors[it->second];
  }
  const TensorInfo& at(std::string_view name) const {
    const TensorInfo* info = find(name);
    if (info == nullptr)
      throw invalid_input(detail::concat(source_, ": no tensor named '", name, "'"));
    return *info;
  }

  // The raw little-endian bytes of a tensor.
  std::string read_bytes(const TensorInfo& info) const {
    std::string out(info.nbytes(), '\0');
    read_raw(info.begin, info.nbytes(), reinterpret_cast<unsigned char*>(out.data()));
    return out;
  }

  // Reads a tensor into out (out.size() must be its element count), converting from the
  // stored dtype: floating-point T accepts every dtype, integer T the integer dtypes and BOOL
  // with range checks.
  template <class T>
  void read(const TensorInfo& info, std::span<T> out) const {
    static_assert(detail::is_readable_scalar<T>, "read: T must be a non-const arithmetic type");
    if (out.size() != info.numel())
      throw invalid_input(detail::concat(source_, ": tensor '", info.name, "' has ", info.numel(),
                                         " elements, the destination ", out.size()));
    if constexpr (std::is_integral_v<T>) {
      if (is_floating_point(info.dtype))
        throw invalid_input(detail::concat(source_, ": tensor '", info.name, "' has dtype ",
                                           info.dtype, ", which cannot be read as integers"));
    }
    decode_chunks(info, out.data(), [](std::size_t, std::span<const T>) { return true; });
  }

  // The index of the first element of a floating-point tensor that is NaN or infinite once
  // read as T (a finite F64 value past float's range included); none for integer dtypes.
  // Reads the tensor without keeping it, so a loader can refuse it before changing anything.
  template <class T>
  std::optional<std::size_t> first_non_finite(const TensorInfo& info) const {
    static_assert(std::is_floating_point_v<T>, "first_non_finite: T must be floating point");
    if (!is_floating_point(info.dtype)) return std::nullopt;
    std::optional<std::size_t> found;
    decode_chunks(info, static_cast<T*>(nullptr), [&](std::size_t first, std::span<const T> values) {
      for (std::size_t i = 0; i < values.size(); ++i)
        if (!std::isfinite(values[i])) {
          found = first + i;
          return false;
        }
      return true;
    });
    return found;
  }
  template <class T>
  std::vector<T> read(std::string_view name) const {
    const TensorInfo& info = at(name);
    if constexpr (std::is_same_v<T, bool>) {
      // std::vector<bool> packs its bits, so there is no span over it: decode into bools first.
      const auto flags = std::make_unique<bool[]>(info.numel());
      read(info, std::span<bool>(flags.get(), info.numel()));
      return std::vector<bool>(flags.get(), flags.get() + info.numel());
    } else {
      std::vector<T> out(info.numel());
      read(info, std::span<T>(out));
      return out;
    }
  }

 private:
  static constexpr std::size_t kChunkBytes = std::size_t{1} << 20;

  SafetensorsReader() = default;

  // Decodes tensor `info` as T, a chunk at a time, into `out` (the whole tensor) or, when
  // `out` is null, into a scratch chunk; visit(first index, values) after each chunk returns
  // false to stop.
  template <class T, class Visit>
  void decode_chunks(const TensorInfo& info, T* out, Visit&& visit) const {
    const std::size_t n = info.numel(), size = dtype_size(info.dtype);
    const std::size_t chunk = std::max<std::size_t>(1, kChunkBytes / size);
    std::vector<unsigned char> raw(file_ != nullptr ? std::min(n, chunk) * size : 0);
    // (not a std::vector, whose bool form has no data())
    const std::unique_ptr<T[]> scratch(out == nullptr ? new T[std::min(n, chunk)] : nullptr);
    for (std::size_t first = 0; first < n; first += chunk) {
      const std::size_t count = std::min(chunk, n - first);
      const unsigned char* in = nullptr;
      if (file_ == nullptr) {
        in = reinterpret_cast<const unsigned char*>(memory_.data()) + data_start_ + info.begin +
             first * size;
      } else {
        read_raw(info.begin + first * size, count * size, raw.data());
        in = raw.data();
      }
      T* values = out != nullptr ? out + first : scratch.get();
      detail::decode(info.dtype, in, count, values, source_, info.name, first);
      if (!visit(first, std::span<const T>(values, count))) return;
    }
  }

  void read_raw(std::size_t offset, std::size_t count, unsigned char* out) const {
    if (count == 0) return;
    if (file_ == nullptr) {
      std::memcpy(out, memory_.data() + data_start_ + offset, count);
      return;
    }
    file_->clear();
    file_->seekg(static_cast<std::streamoff>(data_start_ + offset));
    file_->read(reinterpret_cast<char*>(out), static_cast<std::streamsize>(count));
    if (!*file_ || static_cast<std::size_t>(file_->gcount()) != count)
      throw data::io_error("cannot read " + source_ +
                           ": short read (file changed since it was opened?)");
  }

  std::string source_;
  detail::ParsedHeader header_;
  std::size_t data_start_ = 0;  // byte offset of the data buffer
  std::string memory_;          // the whole file, for from_memory
  std::unique_ptr<std::ifstream> file_;
};

// ---------------------------------------------------------------------------------------------
// Writing.

// Collects tensors and metadata, then writes them out in one go.
class SafetensorsWriter {
 public:
  // A __metadata__ entry (string to string, as the format requires).
  void set_metadata(std::string key, std::string value) {
    check_utf8(key, "metadata key");
    check_utf8(value, "metadata value");
    metadata_[std::move(key)] = std::move(value);
  }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Adds a tensor, encoding `values` (C order, one per element of `shape`) as `dtype` now.
  template <class T>
  void add(std::string name, Dtype dtype, std::vector<std::size_t> shape,
           std::span<const T> values) {
    check_writable<T>(dtype, name);
    Entry e = make_entry(std::move(name), dtype, std::move(shape));
    check_count(e, values.size());
    auto bytes = std::make_shared<std::string>(e.nbytes, '\0');
    detail::encode(dtype, values.data(), values.size(),
                   reinterpret_cast<unsigned char*>(bytes->data()), e.name);
    e.encode = raw_encoder(std::move(bytes), dtype_size(dtype));
    insert(std::move(e));
  }
  template <class T>
  void add(std::string name, Dtype dtype, std::vector<std::size_t> shape,
           const std::vector<T>& values) {
    if constexpr (std::is_same_v<T, bool>) {
      // std::vector<bool> packs its bits, so there is no span over it: unpack into bools first.
      const auto flags = std::make_unique<bool[]>(values.size());
      std::copy(values.begin(), values.end(), flags.get());
      add(std::move(name), dtype, std::move(shape), std::span<const bool>(flags.get(), values.size()));
    } else {
      add(std::move(name), dtype, std::move(shape), std::span<const T>(values));
    }
  }

  // Adds a tensor whose numel(shape) values are read from `values` when the file is written:
  // they must stay valid and unchanged until then.  Saves a copy of large tensors.
  template <class T>
  void add_view(std::string name, Dtype dtype, std::vector<std::size_t> shape, const T* values) {
    check_writable<T>(dtype, name);
    Entry e = make_entry(std::move(name), dtype, std::move(shape));
    if (e.numel > 0 && values == nullptr)
      throw invalid_input(detail::concat("tensor '", e.name, "': null data"));
    e.encode = [values, dtype, name = e.name](std::size_t first, std::size_t count,
                                              unsigned char* out) {
      detail::encode(dtype, values + first, count, out, name);
    };
    insert(std::move(e));
  }

  // Adds a tensor from its already encoded little-endian bytes.
  void add_raw(std::string name, Dtype dtype, std::vector<std::size_t> shape, std::string bytes) {
    Entry e = make_entry(std::move(name), dtype, std::move(shape));
    if (bytes.size() != e.nbytes)
      throw invalid_input(detail::concat("tensor '", e.name, "': ", bytes.size(), " bytes given, ",
                                         e.nbytes, " needed for ", dtype, " shape ",
                                         detail::shape_string(e.shape)));
    e.encode = raw_encoder(std::make_shared<std::string>(std::move(bytes)), dtype_size(dtype));
    insert(std::move(e));
  }

  std::size_t size() const { return entries_.size(); }
  bool contains(const std::string& name) const { return names_.count(name) != 0; }

  // The header bytes after the length prefix: compact JSON padded with spaces to a multiple of
  // 8, written by hand (a JSON object type would look keys up linearly per tensor).
  std::string header() const {
    std::string text = "{";
    auto quoted = [](const std::string& s) { return nlohmann::json(s).dump(); };
    if (!metadata_.empty()) {
      text += "\"__metadata__\":{";
      bool first = true;
      for (const auto& [k, v] : metadata_) {
        text += (first ? "" : ",") + quoted(k) + ":" + quoted(v);
        first = false;
      }
      text += "}";
    }
    std::size_t offset = 0;
    for (const Entry* e : ordered()) {
      if (text.size() > 1) text += ",";
      text +=
          quoted(e->name) + ":{\"dtype\":\"" + std::string(dtype_name(e->dtype)) + "\",\"shape\":[";
      for (std::size_t i = 0; i < e->shape.size(); ++i) {
        if (i > 0) text += ',';
        text += std::to_string(e->shape[i]);
      }
      text += "],\"data_offsets\":[" + std::to_string(offset) + "," +
              std::to_string(offset + e->nbytes) + "]}";
      offset += e->nbytes;
    }
    text += "}";
    text.append((8 - text.size() % 8) % 8, ' ');
    // Readers (this one and the Python package) refuse longer headers: never write one.
    require(text.size() <= kMaxHeaderBytes, "SafetensorsWriter: the header would be ",
            text.size(), " bytes, over the format's limit of ", kMaxHeaderBytes,
            " (too much metadata or too many tensors)");
    return text;
  }

  // The whole file in memory.
  std::string serialize() const {
    std::string out;
    emit([&](const void* p, std::size_t n) { out.append(static_cast<const char*>(p), n); });
    return out;
  }

  // Writes the file atomically: the target is replaced only once the complete file is on disk.
  void write(const std::filesystem::path& path) const {
    data::AtomicFileWriter out(path);
    emit([&](const void* p, std::size_t n) { out.write(p, n); });
    out.commit();
  }

 private:
  using Encoder = std::function<void(std::size_t first, std::size_t count, unsigned char* out)>;

  struct Entry {
    std::string name;
    Dtype dtype = Dtype::F32;
    std::vector<std::size_t> shape;
    std::size_t numel = 0;
    std::size_t nbytes = 0;
    Encoder encode;
  };

  static constexpr std::size_t kChunkBytes = std::size_t{1} << 20;

  template <class T>
  static void check_writable(Dtype dtype, const std::string& name) {
    using U = std::remove_const_t<T>;
    static_assert(detail::is_readable_scalar<U>, "T must be an arithmetic type");
    if (dtype == Dtype::F8_E5M2 || dtype == Dtype::F8_E4M3)
      throw invalid_input(
          detail::concat("tensor '", name, "': writing ", dtype, " is not supported"));
    if (!detail::writable_as<U>(dtype))
      throw invalid_input(detail::concat(
          "tensor '", name, "': ", std::is_floating_point_v<U> ? "floating-point" : "integer",
          " values cannot be stored as ", dtype));
  }

  static void check_utf8(const std::string& s, std::string_view what) {
    try {
      (void)nlohmann::json(s).dump();
    } catch (const nlohmann::json::exception&) {
      throw invalid_input(detail::concat("safetensors ", what, " is not valid UTF-8"));
    }
  }

  static Encoder raw_encoder(std::shared_ptr<std::string> bytes, std::size_t size) {
    return
        [bytes = std::move(bytes), size](std::size_t first, std::size_t count, unsigned char* out) {
          if (count > 0) std::memcpy(out, bytes->data() + first * size, count * size);
        };
  }

  static void check_count(const Entry& e, std::size_t count) {
    if (count != e.numel)
      throw invalid_input(detail::concat("tensor '", e.name, "': ", count,
                                         " values given for shape ", detail::shape_string(e.shape),
                                         " (", e.numel, " elements)"));
  }

  // A validated entry, not yet added.
  Entry make_entry(std::string name, Dtype dtype, std::vector<std::size_t> shape) const {
    if (name.empty()) throw invalid_input("safetensors tensor names must not be empty");
    if (name == "__metadata__")
      throw invalid_input("'__metadata__' is reserved and cannot name a tensor");
    check_utf8(name, "tensor name");
    if (names_.count(name) != 0)
      throw invalid_input(detail::concat("tensor '", name, "' added twice"));
    const auto extent = detail::checked_extent(shape, dtype);
    if (!extent || extent->second > std::numeric_limits<std::size_t>::max() - total_bytes_)
      throw invalid_input(detail::concat("tensor '", name, "': shape ", detail::shape_string(shape),
                                         " is too large"));
    Entry e;
    e.name = std::move(name);
    e.dtype = dtype;
    e.shape = std::move(shape);
    e.numel = extent->first;
    e.nbytes = extent->second;
    return e;
  }

  void insert(Entry e) {
    names_.insert(e.name);
    total_bytes_ += e.nbytes;
    entries_.push_back(std::move(e));
  }

  // The Python package's layout: larger dtypes first (by its dtype rank), then by name.
  std::vector<const Entry*> ordered() const {
    std::vector<const Entry*> out;
    out.reserve(entries_.size());
    for (const Entry& e : entries_) out.push_back(&e);
    std::sort(out.begin(), out.end(), [](const Entry* a, const Entry* b) {
      return a->dtype != b->dtype ? a->dtype > b->dtype : a->name < b->name;
    });
    return out;
  }

  template <class Sink>
  void emit(Sink&& sink) const {
    const std::string text = header();
    unsigned char prefix[8];
    detail::store_le(prefix, text.size(), 8);
    sink(prefix, 8);
    sink(text.data(), text.size());
    std::vector<unsigned char> buffer;
    for (const Entry* e : ordered()) {
      const std::size_t size = dtype_size(e->dtype);
      const std::size_t chunk = std::max<std::size_t>(1, kChunkBytes / size);
      buffer.resize(std::min(e->numel, chunk) * size);
      for (std::size_t first = 0; first < e->numel; first += chunk) {
        const std::size_t count = std::min(chunk, e->numel - first);
        e->encode(first, count, buffer.data());
        sink(buffer.data(), count * size);
      }
    }
  }

  std::vector<Entry> entries_;
  std::set<std::string> names_;
  std::map<std::string, std::string> metadata_;
  std::size_t total_bytes_ = 0;
};

}  // namespace ablate::io
