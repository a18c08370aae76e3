// Atomic file writes: readers of the target see either the old file or the complete new one.
// Bytes go to a temporary file next to the target; commit() flushes it to disk and renames it
// over the target.  Until commit() returns, the target is untouched: an exception, a full disk
// or a crash leaves the previous file (or no file) in place.  The temporary of a write that
// failed or was abandoned is removed; one left by a crash stays, under a name that says what
// it is (<target name>.tmp-<clock>-<process>-<count>).
#pragma once

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "ablate/data/file_io.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#define ABLATE_IO_POSIX 1
#else
#define ABLATE_IO_POSIX 0
#endif

namespace ablate::data {

namespace detail {

// The temporary of an atomic write to `target`: beside it, so the rename stays on one file
// system, named after it (cut to 96 bytes, so that a long target name stays within the file
// system's limit) with a suffix unique to the process and the call. Creates missing parent
// directories.
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
#if ABLATE_IO_POSIX
  const std::string process = std::to_string(::getpid());
#else
  const std::string process = "0";
#endif
  return parent / (target.filename().string().substr(0, 96) + ".tmp-" + std::to_string(stamp) +
                   "-" + process + "-" + std::to_string(counter.fetch_add(1)));
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

// Streams a file of any size to its target; write() buffers, commit() makes it durable and
// visible. Errors name the file and the system's reason (a full disk: "No space left on device").
class AtomicFileWriter {
 public:
  // Creates the temporary file (and missing parent directories of `target`), with the
  // permissions of the file it will replace, if any.
  // A symbolic link is followed (the file it names is replaced, the link stays a link); a
  // target that is not a regular file is refused.
  explicit AtomicFileWriter(const std::filesystem::path& target)
      : target_(detail::replaceable_target(target)) {
    temp_ = detail::temporary_for(target_);
    buffer_.reserve(kBufferBytes);  // before the file exists: nothing to clean up if it throws
    auto cannot_create = [&](const std::string& reason) {
      return io_error("cannot write " + target_.string() +
                      ": cannot create a temporary file beside it (" + temp_.filename().string() +
                      ")" + reason + kUnchanged);
    };
#if ABLATE_IO_POSIX
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0) {
      const int err = errno;
      throw cannot_create(std::string(": ") + std::strerror(err));
    }
#else
    out_.open(temp_, std::ios::binary | std::ios::trunc);
    if (!out_) throw cannot_create("");
#endif
    detail::keep_permissions(target_, temp_);
  }

  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  ~AtomicFileWriter() {
    if (committed_ || failed_) return;
    close_quietly();
    std::error_code ignored;
    std::filesystem::remove(temp_, ignored);
  }

  void write(const void* data, std::size_t size) {
    require_open();
    const auto* bytes = static_cast<const char*>(data);
    if (buffer_.size() + size > kBufferBytes) flush_buffer();
    if (size >= kBufferBytes) {
      write_through(bytes, size);
    } else {
      buffer_.insert(buffer_.end(), bytes, bytes + size);
    }
  }

  // Makes the new content durable and visible under the target name.
  void commit() {
    require_open();
    flush_buffer();
#if ABLATE_IO_POSIX
    if (::fsync(fd_) != 0) {
      const int err = errno;
      fail("cannot write " + target_.string() + ": sync failed", err);
    }
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
      const int err = errno;
      fail("cannot write " + target_.string() + ": close failed", err);
    }
#else
    out_.close();
    if (!out_) fail("cannot write " + target_.string() + " (disk full?)");
#endif
    std::error_code ec;
    std::filesystem::rename(temp_, target_, ec);
    if (ec)
      fail("cannot rename " + temp_.string() + " to " + target_.string() + ": " + ec.message());
    committed_ = true;
#if ABLATE_IO_POSIX
    // Persist the rename itself; not every file system can sync a directory, so failures here
    // are ignored (the data is already safe in the renamed file).
    const std::filesystem::path parent =
        target_.parent_path().empty() ? std::filesystem::path(".") : target_.parent_path();
    const int dir = ::open(parent.c_str(), O_RDONLY | O_CLOEXEC);
    if (dir >= 0) {
      (void)::fsync(dir);
      (void)::close(dir);
    }
#endif
  }

  const std::filesystem::path& target() const { return target_; }
  const std::filesystem::path& temp_path() const { return temp_; }

 private:
  static constexpr std::size_t kBufferBytes = std::size_t{1} << 20;
  static constexpr const char* kUnchanged = " (the previous file, if any, is unchanged)";

  void require_open() const {
    if (failed_)
      throw io_error("AtomicFileWriter: " + target_.string() + ": an earlier write failed");
    if (committed_)
      throw io_error("AtomicFileWriter: " + target_.string() + " already committed");
  }

  // Removes the temporary and throws; `err` is the errno of the failed call, 0 for none.
  [[noreturn]] void fail(const std::string& what, int err = 0) {
    const std::string reason = err != 0 ? std::string(": ") + std::strerror(err) : std::string();
    close_quietly();
    std::error_code ignored;
    std::filesystem::remove(temp_, ignored);
    failed_ = true;  // nothing left for the destructor to clean up
    throw io_error(what + reason + kUnchanged);
  }

  void flush_buffer() {
    if (buffer_.empty()) return;
    write_through(buffer_.data(), buffer_.size());
    buffer_.clear();
  }

  void write_through(const char* bytes, std::size_t size) {
#if ABLATE_IO_POSIX
    while (size > 0) {
      const ::ssize_t n = ::write(fd_, bytes, size);
      if (n < 0) {
        const int err = errno;
        if (err == EINTR) continue;
        fail("cannot write " + target_.string(), err);
      }
      if (n == 0) fail("cannot write " + target_.string() + " (no progress; disk full?)");
      bytes += n;
      size -= static_cast<std::size_t>(n);
    }
#else
    out_.write(bytes, static_cast<std::streamsize>(size));
    if (!out_) fail("cannot write " + target_.string() + " (disk full?)");
#endif
  }

  void close_quietly() {
#if ABLATE_IO_POSIX
    if (fd_ >= 0) {
      (void)::close(fd_);
      fd_ = -1;
    }
#else
    if (out_.is_open()) out_.close();
#endif
  }

  std::filesystem::path target_, temp_;
#if ABLATE_IO_POSIX
  int fd_ = -1;
#else
  std::ofstream out_;
#endif
  std::vector<char> buffer_;
  bool committed_ = false, failed_ = false;
};

// Writes `bytes` to `path` with an AtomicFileWriter. Missing parent directories are created; a
// replaced file's permissions are kept; a symbolic link is followed; a target that is not a
// regular file is refused.
inline void write_file_atomically(const std::filesystem::path& link_or_path, std::string_view bytes) {
  AtomicFileWriter out(link_or_path);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

}  // namespace ablate::data
