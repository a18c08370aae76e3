// libFuzzer target for the safetensors reader: the input is a whole file.
//
// Rejecting it with ablate::invalid_input is the expected outcome for bad bytes; any other
// exception, a crash, a hang or a sanitizer report is a bug.  A file the reader accepts must
// also decode every tensor (a BOOL tensor with a byte other than 0 or 1 must refuse to), and writing it back out must give a file that reads back the same
// (names, dtypes, shapes, bytes, metadata) and re-serialises to identical bytes.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ablate/io/safetensors.hpp"

namespace {

[[noreturn]] void bug(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_safetensors: %s: %s\n", what, detail.c_str());
  std::abort();
}

std::string rewrite(const ablate::io::SafetensorsReader& r) {
  ablate::io::SafetensorsWriter w;
  for (const auto& [key, value] : r.metadata()) w.set_metadata(key, value);
  for (const ablate::io::TensorInfo& info : r.tensors())
    w.add_raw(info.name, info.dtype, info.shape, r.read_bytes(info));
  return w.serialize();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace ablate::io;
  std::optional<SafetensorsReader> reader;
  try {
    reader.emplace(SafetensorsReader::from_memory(
        std::string(reinterpret_cast<const char*>(data), size), "fuzz"));
  } catch (const ablate::invalid_input&) {
    return 0;
  }
  const SafetensorsReader& r = *reader;

  bool writable = true;
  for (const TensorInfo& info : r.tensors()) {
    // The element count is bounded by the input size (the byte counts were checked).
    if (info.numel() * dtype_size(info.dtype) != info.nbytes()) bug("byte count", info.name);
    // Every tensor decodes, except a BOOL one that holds a byte other than 0 or 1 (corrupt).
    bool corrupt_bool = false;
    if (info.dtype == Dtype::BOOL)
      for (const auto byte : r.read_bytes(info)) corrupt_bool |= static_cast<unsigned char>(byte) > 1;
    std::vector<double> values(info.numel());
    try {
      r.read(info, std::span<double>(values));
      if (corrupt_bool) bug("a BOOL byte other than 0 or 1 was read", info.name);
    } catch (const ablate::invalid_input& e) {
      if (!corrupt_bool) bug("read rejected", e.what());
    }
    if (!is_floating_point(info.dtype)) {
      std::vector<std::int64_t> ints(info.numel());
      try {
        r.read(info, std::span<std::int64_t>(ints));
      } catch (const ablate::invalid_input&) {
        if (info.dtype != Dtype::U64 && !corrupt_bool)
          bug("integer read rejected", info.name);  // only U64 can exceed int64
      }
    }
    if (r.find(info.name) != &info) bug("index", info.name);
    writable = writable && !info.name.empty();  // the writer refuses empty names
  }
  if (!writable) return 0;

  const std::string again = rewrite(r);
  std::optional<SafetensorsReader> back;
  try {
    back.emplace(SafetensorsReader::from_memory(again, "rewrite"));
  } catch (const ablate::invalid_input& e) {
    bug("the writer's output does not read back", e.what());
  }
  if (back->size() != r.size() || back->metadata() != r.metadata())
    bug("round trip", "tensor count or metadata");
  for (const TensorInfo& info : r.tensors()) {
    const TensorInfo* other = back->find(info.name);
    if (other == nullptr || other->dtype != info.dtype || other->shape != info.shape ||
        back->read_bytes(*other) != r.read_bytes(info))
      bug("round trip", info.name);
  }
  if (rewrite(*back) != again) bug("round trip", "serialisation is not stable");
  return 0;
}
