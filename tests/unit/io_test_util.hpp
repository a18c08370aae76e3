// Helpers shared by the test_io_*.cpp files: a scratch directory, a full disk, and hand-built
// safetensors bytes.
#pragma once

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "ablate/data/file_io.hpp"

namespace io_test {

// A fresh directory under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("ablate-io-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

  // Names of the entries in the directory, sorted.
  std::string listing() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(path_))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    std::string out;
    for (const auto& n : names) out += n + "\n";
    return out;
  }

 private:
  std::filesystem::path path_;
};

// Lowers the soft limit of a resource (setrlimit) while it lives.
class ResourceLimit {
 public:
  ResourceLimit(int resource, rlim_t value) : resource_(resource) {
    if (::getrlimit(resource_, &old_) != 0) throw std::runtime_error("getrlimit failed");
    rlimit limit = old_;
    limit.rlim_cur = value;
    if (::setrlimit(resource_, &limit) != 0) throw std::runtime_error("setrlimit failed");
  }
  ~ResourceLimit() { (void)::setrlimit(resource_, &old_); }
  ResourceLimit(const ResourceLimit&) = delete;
  ResourceLimit& operator=(const ResourceLimit&) = delete;

 private:
  int resource_;
  rlimit old_{};
};

// Ignores a signal while it lives.
class SignalIgnored {
 public:
  explicit SignalIgnored(int signal) : signal_(signal) {
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    if (::sigaction(signal_, &ignore, &old_) != 0) throw std::runtime_error("sigaction failed");
  }
  ~SignalIgnored() { (void)::sigaction(signal_, &old_, nullptr); }
  SignalIgnored(const SignalIgnored&) = delete;
  SignalIgnored& operator=(const SignalIgnored&) = delete;

 private:
  int signal_;
  struct sigaction old_ {};
};

// A full disk, as the process sees it: while one lives, no file can grow past `bytes` (the
// file-size limit), and a write past it fails with EFBIG instead of raising SIGXFSZ.  It holds
// for every file the process writes, doctest's report too if it goes to a file: keep only the
// call under test in its scope, and check afterwards.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) : limit_(RLIMIT_FSIZE, bytes) {}

 private:
  SignalIgnored no_signal_{SIGXFSZ};  // first in, last out
  ResourceLimit limit_;
};

// The message of the io_error that f() throws, "(no error)", or the other exception's.
template <class F>
std::string io_error_of(F&& f) {
  try {
    f();
  } catch (const ablate::data::io_error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("(not an io_error) ") + e.what();
  }
  return "(no error)";
}

// 8-byte little-endian length (header.size() unless overridden), header, data.
inline std::string file_bytes(const std::string& header, const std::string& data = {},
                              std::uint64_t length = UINT64_MAX) {
  const std::uint64_t n = length == UINT64_MAX ? header.size() : length;
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return out + header + data;
}

}  // namespace io_test
