// Architecture<...>: a model written as a type.  Each slot is a policy wrapper; slots may come
// in any order and any may be left out to take its default:
//   Attention<MHA>, FFN<GatedMLP>, Norm<RMS>, Placement<PreNorm>, FinalNorm<same as Norm>.
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "ablate/blocks/gated_mlp.hpp"
#include "ablate/blocks/multi_head_attention.hpp"
#include "ablate/blocks/rms_norm.hpp"

namespace ablate {

// Where the norms sit in a block.
struct PreNorm {   // x = x + drop(f(norm(x)))
  static constexpr const char* name = "prenorm";
};
struct PostNorm {  // x = norm(x + drop(f(x)))
  static constexpr const char* name = "postnorm";
};

template <class Policy>
struct Attention {
  using policy = Policy;
};
template <class Policy>
struct FFN {
  using policy = Policy;
};
template <class Policy>
struct Norm {
  using policy = Policy;
};
template <class Policy>
struct FinalNorm {
  using policy = Policy;
};
template <class Policy>
struct Placement {
  using policy = Policy;
};

namespace detail {

template <template <class> class Slot, class T>
struct is_slot : std::false_type {};
template <template <class> class Slot, class P>
struct is_slot<Slot, Slot<P>> : std::true_type {};

// The policy of the first Slot<...> among Parts, or Default.
template <template <class> class Slot, class Default, class... Parts>
struct find_slot {
  using type = Default;
};
template <template <class> class Slot, class Default, class First, class... Rest>
struct find_slot<Slot, Default, First, Rest...> {
  using type = std::conditional_t<is_slot<Slot, First>::value, typename First::policy,
                                  typename find_slot<Slot, Default, Rest...>::type>;
};

template <template <class> class Slot, class... Parts>
constexpr int slot_count = (0 + ... + int(is_slot<Slot, Parts>::value));

}  // namespace detail

template <class... Parts>
struct Architecture {
  static_assert(detail::slot_count<Attention, Parts...> <= 1, "Architecture: two Attention<> slots");
  static_assert(detail::slot_count<FFN, Parts...> <= 1, "Architecture: two FFN<> slots");
  static_assert(detail::slot_count<Norm, Parts...> <= 1, "Architecture: two Norm<> slots");
  static_assert(detail::slot_count<FinalNorm, Parts...> <= 1, "Architecture: two FinalNorm<> slots");
  static_assert(detail::slot_count<Placement, Parts...> <= 1, "Architecture: two Placement<> slots");
  static_assert(((detail::slot_count<Attention, Parts> + detail::slot_count<FFN, Parts> +
                  detail::slot_count<Norm, Parts> + detail::slot_count<FinalNorm, Parts> +
                  detail::slot_count<Placement, Parts> == 1) && ...),
                "Architecture: every part must be Attention<>, FFN<>, Norm<>, FinalNorm<> or Placement<>");

  using attention = typename detail::find_slot<Attention, MHA, Parts...>::type;
  using ffn = typename detail::find_slot<FFN, GatedMLP, Parts...>::type;
  using norm = typename detail::find_slot<Norm, RMS, Parts...>::type;
  using final_norm = typename detail::find_slot<FinalNorm, norm, Parts...>::type;
  using placement = typename detail::find_slot<Placement, PreNorm, Parts...>::type;

  // The ModelConfig fields besides the tensor shapes that change what the model computes
  // (heads, eps, rope_theta, router settings): what a weights file's config must agree on.
  static std::vector<std::string_view> config_fields() {
    std::vector<std::string_view> fields;
    for (auto part : {policy_config_fields<attention>(), policy_config_fields<ffn>(),
                      policy_config_fields<norm>(), policy_config_fields<final_norm>()})
      for (std::string_view f : part)
        if (std::find(fields.begin(), fields.end(), f) == fields.end()) fields.push_back(f);
    return fields;
  }

  static std::string name() {
    return std::string(attention::name) + "+" + ffn::name + "+" + norm::name + "+" +
           placement::name;
  }
};

}  // namespace ablate
