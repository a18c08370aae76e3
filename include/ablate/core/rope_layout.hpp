// Rotary position embedding layouts.
//
// Pair i of a head (elements 2i and 2i+1) rotates by position * theta^(-2i / rope_dim).
// Interleaved: the rotated pair is written back to 2i, 2i+1.
// DeepSeek:    DeepSeek de-interleaves before its rotate-half rotation, so the pair lands at
//              i and i + rope_dim/2.  Query and key get the same permutation, so attention
//              scores are identical; the layout matters for outputs compared element-wise.
#pragma once

namespace ablate {

enum class RopeLayout { Interleaved, DeepSeek };

}  // namespace ablate
