// Whole-file reads and atomic whole-file writes with errors that name the file.
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
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

namespace detail {

// The temporary of an atomic write to `target`: beside it, so the rename stays on one file
// system, named after it (cut to 96 bytes, so that a long target name stays within the file
// system's limit) with a unique suffix. Creates missing parent directories.
inline std::filesystem::path temporary_for(const std::filesystem::path& target) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path parent = target.parent_path();
  if (!parent.empty()) {
    fs::create_directories(parent, ec);
    if (ec) throw io_error("cannot create directory " + parent.string() + ": " + ec.message());
  }
  static std::atomic<std::uint64_t> counter{0};
  const auto stamp = static_cast<std::uint64_t>(
      std::chrono::steady_clock::now().time_since_epoch().count());
  return parent / (target.filename().string().substr(0, 96) + ".tmp-" + std::to_string(stamp) +
                   "-" + std::to_string(counter.fetch_add(1)));
}

// The file an atomic write to `path` replaces: `path`, or the file it links to (the link
// stays a link).  Throws io_error when that exists and is not a regular file: the rename would
// replace a directory, a device or a pipe with a file instead of writing to it.
inline std::filesystem::path replaceable_target(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path target = path;
  // Link by link, so that a link to a file not written yet leads to that file's name.
  for (int hops = 0; fs::is_symlink(fs::symlink_status(target, ec)); ++hops) {
    const fs::path next = fs::read_symlink(target, ec);
    if (ec || hops == 40)
      throw io_error("cannot write " + path.string() + ": cannot follow the link: " +
                     (ec ? ec.message() : std::string("too many levels of links")));
    target = next.is_absolute() ? next : target.parent_path() / next;
  }
  const fs::file_status status = fs::status(target, ec);
  if (!ec && fs::exists(status) && !fs::is_regular_file(status))
    throw io_error("cannot write " + path.string() + ": it is " +
                   (fs::is_directory(status) ? "a directory" : "not a regular file (a device or a pipe?)") +
                   ", which an atomic write would replace");
  return target;
}

// Gives the temporary the permissions of the file it will replace, if there is one, before
// any data goes in: a private checkpoint stays private. Best effort (a failure leaves the
// temporary as created).
inline void keep_permissions(const std::filesystem::path& target,
                             const std::filesystem::path& temp) {
  std::error_code ec;
  const auto status = std::filesystem::status(target, ec);
  if (!ec && std::filesystem::is_regular_file(status))
    std::filesystem::permissions(temp, status.permissions(), ec);
}

}  // namespace detail

// Writes `bytes` to `path` so that readers see either the old file or the complete new one:
// the data goes to a temporary file next to `path`, which is then renamed over it. Missing
// parent directories are created; a replaced file's permissions are kept. A symbolic link is
// followed (the file it names is replaced); a target that is not a regular file is refused.
inline void write_file_atomically(const std::filesystem::path& link_or_path, std::string_view bytes) {
  namespace fs = std::filesystem;
  const fs::path path = detail::replaceable_target(link_or_path);
  const fs::path temp = detail::temporary_for(path);
  std::error_code ec;
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) {
      throw io_error("cannot create " + temp.string() + ": " + std::strerror(errno));
    }
    detail::keep_permissions(path, temp);
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
