#pragma once

#define ABLATE_VERSION_MAJOR 0
#define ABLATE_VERSION_MINOR 1
#define ABLATE_VERSION_PATCH 0

namespace ablate {
inline constexpr const char* version = "0.1.0";
}
