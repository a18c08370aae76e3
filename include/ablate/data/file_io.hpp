// Whole-file reads and atomic whole-file writes with errors that name the file.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>

#include "ablate/core/error.hpp"

namespace ablate::data {

// A file could not be opened, read, written or renamed.
class io_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The whole content of a file, byte for byte.
inline std::string read_file(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    throw io_error("cannot read " + path.string() + ": no such file");
  }
  if (std::filesystem::is_directory(path, ec)) {
    throw io_error("cannot read " + path.string() + ": it is a directory");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error("cannot open " + path.string() + ": " + std::strerror(errno));
  std::string content;
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size > 0) {
    content.resize(static_cast<std::size_t>(size));
    in.seekg(0, std::ios::beg);
    in.read(content.data(), size);
    if (in.gcount() != size) throw io_error("cannot read " + path.string() + ": short read");
  } else {
    // Not seekable or empty: read sequentially.
    in.clear();
    in.seekg(0, std::ios::beg);
    content.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (in.bad()) throw io_error("cannot read " + path.string() + ": read error");
  return content;
}

// Writes `bytes` to `path` so that readers see either the old file or the complete new one:
// the data goes to a temporary file next to `path`, which is then renamed over it. Missing
// parent directories are created.
inline void write_file_atomically(const std::filesystem::path& path, std::string_view bytes) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path parent = path.parent_path();
  if (!parent.empty()) {
    fs::create_directories(parent, ec);
    if (ec) throw io_error("cannot create directory " + parent.string() + ": " + ec.message());
  }
  static std::atomic<std::uint64_t> counter{0};
  const auto stamp = static_cast<std::uint64_t>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  fs::path temp = path;
  temp += ".tmp-" + std::to_string(stamp) + "-" + std::to_string(counter.fetch_add(1));
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) {
      throw io_error("cannot create " + temp.string() + ": " + std::strerror(errno));
    }
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) {
      fs::remove(temp, ec);
      throw io_error("cannot write " + temp.string() + " (disk full?)");
    }
  }
  fs::rename(temp, path, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    throw io_error("cannot rename " + temp.string() + " to " + path.string() + ": " + ec.message());
  }
}

}  // namespace ablate::data
