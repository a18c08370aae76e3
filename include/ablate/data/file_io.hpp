// Whole-file reads, with errors that name the file; atomic writes are in atomic_file.hpp.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
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

// The most read_file takes from a pipe, whose length is not known in advance.
inline constexpr std::size_t kMaxStreamBytes = std::size_t{1} << 30;

// The whole content of a file, byte for byte. Regular files and pipes only: a device such as
// /dev/zero would never end. A pipe that gives more than `max_stream_bytes` is refused. A
// regular file is read to its end, whatever size it reports (procfs and sysfs files report 0
// or 4096, and a file may change while it is read).
inline std::string read_file(const std::filesystem::path& path,
                             std::size_t max_stream_bytes = kMaxStreamBytes) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    throw io_error("cannot read " + path.string() + ": " + ec.message());
  }
  if (!fs::exists(status)) throw io_error("cannot read " + path.string() + ": no such file");
  if (fs::is_directory(status)) {
    throw io_error("cannot read " + path.string() + ": it is a directory");
  }
  const bool regular = fs::is_regular_file(status);
  if (!regular && !fs::is_fifo(status)) {
    throw io_error("cannot read " + path.string() + ": not a regular file or a pipe");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw io_error("cannot open " + path.string() + ": " + std::strerror(errno));
  std::string content;
  const std::uintmax_t size = regular ? fs::file_size(path, ec) : 0;
  if (!ec && size > 0) {  // one read for what the file says it holds
    content.resize(static_cast<std::size_t>(size));
    in.read(content.data(), static_cast<std::streamsize>(size));
    content.resize(static_cast<std::size_t>(in.gcount()));
  }
  char chunk[1 << 16];  // then whatever follows, to the end
  while (in && (in.read(chunk, sizeof chunk) || in.gcount() > 0)) {
    const auto got = static_cast<std::size_t>(in.gcount());
    if (!regular && content.size() + got > max_stream_bytes) {
      throw io_error("cannot read " + path.string() + ": it gives more than " +
                     std::to_string(max_stream_bytes) + " bytes; write it to a file first");
    }
    content.append(chunk, got);
  }
  if (in.bad()) throw io_error("cannot read " + path.string() + ": read error");
  return content;
}

}  // namespace ablate::data
