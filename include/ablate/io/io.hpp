// Safetensors files, model weights and training checkpoints (needs nlohmann/json).
#pragma once

#include "ablate/io/checkpoint.hpp"
#include "ablate/io/config_json.hpp"
#include "ablate/io/safetensors.hpp"
#include "ablate/io/weights.hpp"
