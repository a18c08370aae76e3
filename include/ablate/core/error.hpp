// Error reporting: every check on user input throws, never asserts, so bad input gives a
// message instead of a crash in release builds.
#pragma once

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace ablate {

// Thrown for any configuration, shape or input value the library cannot accept.
class invalid_input : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

namespace detail {

// A NaN prints as "nan" whatever its sign bit (the C library writes "-nan" for some).
template <class Part>
void put(std::ostream& out, Part&& part) {
  if constexpr (std::is_floating_point_v<std::remove_cvref_t<Part>>) {
    if (std::isnan(part)) {
      out << "nan";
      return;
    }
  }
  out << std::forward<Part>(part);
}

template <class... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream out;
  (put(out, std::forward<Parts>(parts)), ...);
  return out.str();
}

}  // namespace detail

// require(cond, "what", value, "more") throws invalid_input with the pieces joined.
template <class... Parts>
inline void require(bool condition, Parts&&... message) {
  if (!condition) throw invalid_input(detail::concat(std::forward<Parts>(message)...));
}

// Real-valued settings: require_finite_non_negative(x, "AdamW: eps") throws invalid_input
// "AdamW: eps must be a finite number >= 0, got nan" unless x is finite and >= 0;
// require_finite_positive likewise for > 0.  NaN and infinities never pass.
template <class... What>
inline void require_finite_non_negative(double value, What&&... what) {
  require(std::isfinite(value) && value >= 0.0, std::forward<What>(what)...,
          " must be a finite number >= 0, got ", value);
}
template <class... What>
inline void require_finite_positive(double value, What&&... what) {
  require(std::isfinite(value) && value > 0.0, std::forward<What>(what)...,
          " must be a finite number > 0, got ", value);
}

}  // namespace ablate
