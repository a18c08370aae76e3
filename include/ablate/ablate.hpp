// ablate: transformer blocks for architecture ablations, composed as types.
//
//   using Arch = ablate::Architecture<ablate::Attention<ablate::MHA>,
//                                     ablate::FFN<ablate::GatedMLP>, ablate::Norm<ablate::RMS>>;
//   ablate::Model<Arch, ablate::CPU> model(cfg, /*seed=*/42);
#pragma once

#include "ablate/version.hpp"

#include "ablate/core/config.hpp"
#include "ablate/core/error.hpp"
#include "ablate/core/loss_stats.hpp"
#include "ablate/core/parameter.hpp"
#include "ablate/core/tokens.hpp"

#include "ablate/backend/cpu/backend.hpp"

#include "ablate/blocks/gated_mlp.hpp"
#include "ablate/blocks/layer_norm.hpp"
#include "ablate/blocks/mlp.hpp"
#include "ablate/blocks/moe/moe.hpp"
#include "ablate/blocks/multi_head_attention.hpp"
#include "ablate/blocks/multi_latent_attention.hpp"
#include "ablate/blocks/rms_norm.hpp"

#include "ablate/model/architecture.hpp"
#include "ablate/model/model.hpp"
#include "ablate/model/parameter_layout.hpp"
