// AtomicFileWriter: a streaming version of data::write_file_atomically.  Bytes go to a
// temporary file next to the target; commit() flushes it to disk and renames it over the
// target.  Until commit() returns, the target is untouched: an exception, a crash or a full
// disk leaves the previous file (or no file) in place, and the destructor removes the
// temporary of a write that was never committed.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
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

namespace ablate::io {

class AtomicFileWriter {
 public:
  // Creates the temporary file (and missing parent directories of `target`), with the
  // permissions of the file it will replace, if any.
  // Like data::write_file_atomically, follows a symbolic link and refuses a target that is not
  // a regular file.
  explicit AtomicFileWriter(const std::filesystem::path& target)
      : target_(data::detail::replaceable_target(target)) {
    temp_ = data::detail::temporary_for(target_);
#if ABLATE_IO_POSIX
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0)
      throw data::io_error("cannot create " + temp_.string() + ": " + std::strerror(errno));
#else
    out_.open(temp_, std::ios::binary | std::ios::trunc);
    if (!out_) throw data::io_error("cannot create " + temp_.string());
#endif
    data::detail::keep_permissions(target_, temp_);
    buffer_.reserve(kBufferBytes);
  }

  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;

  ~AtomicFileWriter() {
    if (committed_) return;
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
      fail("cannot sync " + temp_.string(), err);
    }
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
      const int err = errno;
      fail("cannot close " + temp_.string(), err);
    }
#else
    out_.close();
    if (!out_) fail("cannot write " + temp_.string() + " (disk full?)");
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

  void require_open() const {
    if (committed_)
      throw data::io_error("AtomicFileWriter: " + target_.string() + " already committed");
  }

  // Removes the temporary and throws; `err` is the errno of the failed call, 0 for none.
  [[noreturn]] void fail(const std::string& what, int err = 0) {
    const std::string reason = err != 0 ? std::string(": ") + std::strerror(err) : std::string();
    close_quietly();
    std::error_code ignored;
    std::filesystem::remove(temp_, ignored);
    committed_ = true;  // nothing left for the destructor to clean up
    throw data::io_error(what + reason);
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
        fail("cannot write " + temp_.string(), err);
      }
      if (n == 0) fail("cannot write " + temp_.string() + " (no progress; disk full?)");
      bytes += n;
      size -= static_cast<std::size_t>(n);
    }
#else
    out_.write(bytes, static_cast<std::streamsize>(size));
    if (!out_) fail("cannot write " + temp_.string() + " (disk full?)");
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
  bool committed_ = false;
};

}  // namespace ablate::io
