// Expert selection for one token's row of router scores: top-k, and DeepSeek-V3 / GLM4
// group-limited top-k.  The CPU backend runs these per row on the host and the CUDA backend one
// row per thread, so both backends route every token identically from identical scores.
#pragma once

#include <cmath>
#include <cstdint>

#include "ablate/core/host_device.hpp"

namespace ablate {

// out[0..k) = positions of the k largest of v[0..n), largest first, ties by lower position
// (out is the working array: an insertion sort of at most k entries).
template <class S, class I>
ABLATE_HOST_DEVICE inline void select_top(const S* v, I n, I k, std::int32_t* out) {
  if (k <= 0) return;
  I filled = 0;
  for (I j = 0; j < n; ++j) {
    if (filled == k && !(v[j] > v[out[k - 1]])) continue;
    I p = filled < k ? filled++ : k - 1;
    while (p > 0 && v[j] > v[out[p - 1]]) {
      out[p] = out[p - 1];
      --p;
    }
    out[p] = static_cast<std::int32_t>(j);
  }
}

// A group's score: the sum of its two largest entries, or its only entry for a group of one.
template <class S, class I>
ABLATE_HOST_DEVICE inline S group_score(const S* v, I size) {
  S best = v[0], second = S(0);
  bool has_second = false;
  for (I j = 1; j < size; ++j) {
    if (v[j] > best) {
      second = best;
      best = v[j];
      has_second = true;
    } else if (!has_second || v[j] > second) {
      second = v[j];
      has_second = true;
    }
  }
  return has_second ? best + second : best;
}

// Group-limited top-k of one row `choice` [cols], split into n_group groups of consecutive
// experts: the topk_group best groups by group_score are kept (ties to the lower group), every
// entry of the others is set to -inf (as DeepSeek-V3 and transformers 5.x do: with 0, a dropped
// group's expert would beat a kept one whose choice score a negative correction bias has pushed
// below 0), and idx[0..k) is the top-k of that masked row.  `masked` [cols] receives the masked
// scores, `group_scores` [n_group] the group scores.
template <class S, class I>
ABLATE_HOST_DEVICE inline void group_limited_select(std::int32_t* idx, S* masked, S* group_scores,
                                                    const S* choice, I cols, I n_group,
                                                    I topk_group, I k) {
  const I size = cols / n_group;
  for (I g = 0; g < n_group; ++g) group_scores[g] = group_score(choice + g * size, size);
  for (I g = 0; g < n_group; ++g) {
    // Group g is kept when fewer than topk_group groups rank above it.
    I above = 0;
    for (I h = 0; h < n_group; ++h)
      above += (group_scores[h] > group_scores[g] || (group_scores[h] == group_scores[g] && h < g))
                   ? 1
                   : 0;
    const bool keep = above < topk_group;
    for (I j = g * size; j < (g + 1) * size; ++j)
      masked[j] = keep ? choice[j] : -static_cast<S>(INFINITY);
  }
  select_top(masked, cols, k, idx);
}

}  // namespace ablate
