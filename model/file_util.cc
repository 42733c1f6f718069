#include "model/file_util.h"


#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <new>
#include <sstream>
#include <utility>
#include <vector>

#include "base/error.h"

namespace mxlm {

namespace {

// Opens `path` read-only and returns its descriptor and size; throws Error (kIo) naming the
// path when it is missing, unreadable or a directory.
int open_for_reading(const std::string& path, size_t* size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorCode::kIo, "cannot open '" + path + "': " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw Error(ErrorCode::kIo, "cannot stat '" + path + "': " + std::strerror(e));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorCode::kIo, "'" + path + "' is a directory, not a file");
  }
  *size = static_cast<size_t>(st.st_size);
  return fd;
}

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int fd = open_for_reading(path, &size_);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      throw Error(ErrorCode::kIo, "cannot mmap '" + path + "': " + std::strerror(e));
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
}

MappedFile MappedFile::from_memory(const std::string& name, const void* data, size_t size) {
  MappedFile m;
  m.path_ = name;
  if (size > 0) {
    auto* buf = static_cast<uint8_t*>(::operator new(size, std::align_val_t{64}));
    std::memcpy(buf, data, size);
    m.data_ = buf;
    m.size_ = size;
    m.heap_ = true;
  }
  return m;
}

std::shared_ptr<uint8_t> alloc_anonymous(size_t bytes, bool huge_pages, const std::string& what) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t len = huge_pages ? (bytes + kHuge - 1) / kHuge * kHuge + kHuge : (bytes == 0 ? 1 : bytes);
  void* raw = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    throw Error(ErrorCode::kIo, "cannot allocate " + std::to_string(bytes) + " bytes of memory for " + what + ": " +
                                    std::strerror(errno));
  }
  uint8_t* p = static_cast<uint8_t*>(raw);
  if (huge_pages) {
    // A 2 MiB-aligned start: otherwise the first and last partial 2 MiB ranges (and, for a
    // misaligned mapping, every range) stay in 4 KiB pages.
    p = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw) + kHuge - 1) / kHuge * kHuge);
    ::madvise(p, len - size_t(p - static_cast<uint8_t*>(raw)), MADV_HUGEPAGE);  // advice: may be refused
  }
  return std::shared_ptr<uint8_t>(p, [raw, len](uint8_t*) { ::munmap(raw, len); });
}

MappedFile MappedFile::read_into_memory(const std::string& path, bool huge_pages) {
  MappedFile m;
  m.path_ = path;
  const int fd = open_for_reading(path, &m.size_);
  if (m.size_ > 0) {
    try {
      m.anon_ = alloc_anonymous(m.size_, huge_pages, "'" + path + "'");
    } catch (...) {
      ::close(fd);
      throw;
    }
    // Chunks of 64 MiB on all threads: a single reader copies from the page cache at ~3-5 GB/s.
    constexpr size_t kChunk = size_t{64} << 20;
    const int64_t n_chunks = static_cast<int64_t>((m.size_ + kChunk - 1) / kChunk);
    std::atomic<int> err{0};
    std::atomic<size_t> short_at{SIZE_MAX};
    uint8_t* dst = m.anon_.get();
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t c = 0; c < n_chunks; ++c) {
      size_t off = size_t(c) * kChunk;
      const size_t end = std::min(m.size_, off + kChunk);
      while (off < end) {
        const ssize_t r = ::pread(fd, dst + off, end - off, static_cast<off_t>(off));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
          if (r < 0) err.store(errno);
          else short_at.store(off);
          break;
        }
        off += size_t(r);
      }
    }
    ::close(fd);
    if (err.load() != 0) throw Error(ErrorCode::kIo, "cannot read '" + path + "': " + std::strerror(err.load()));
    if (short_at.load() != SIZE_MAX) {
      throw Error(ErrorCode::kIo, "'" + path + "' ended at byte " + std::to_string(short_at.load()) + " while being read (" +
                                      std::to_string(m.size_) + " bytes when opened)");
    }
    m.data_ = m.anon_.get();
    m.sealed_ = false;
  } else {
    ::close(fd);
  }
  return m;
}

void MappedFile::release() {
  if (anon_) {
    anon_.reset();
    data_ = nullptr;
    size_ = 0;
    return;
  }
  if (!data_) return;
  if (heap_) {
    ::operator delete(const_cast<uint8_t*>(data_), std::align_val_t{64});
  } else {
    ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  data_ = nullptr;
  size_ = 0;
}

MappedFile::~MappedFile() { release(); }

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      heap_(std::exchange(other.heap_, false)),
      anon_(std::move(other.anon_)),
      sealed_(std::exchange(other.sealed_, true)) {}

// Read-only from here on: a stray write faults as it would on the file mapping.
void MappedFile::seal() {
  if (sealed_) return;
  if (anon_ && size_ > 0) ::mprotect(anon_.get(), size_, PROT_READ);
  sealed_ = true;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    heap_ = std::exchange(other.heap_, false);
    anon_ = std::move(other.anon_);
    sealed_ = std::exchange(other.sealed_, true);
  }
  return *this;
}

// Temporaries of live AtomicFiles, for the signal handler: fixed slots of plain char arrays,
// because a handler may only call async-signal-safe functions (unlink, signal, raise).
namespace {
constexpr int kTmpSlots = 16;
char g_tmp_paths[kTmpSlots][4096];
std::atomic<bool> g_tmp_used[kTmpSlots];

int register_tmp(const std::string& p) {
  if (p.size() >= sizeof(g_tmp_paths[0])) return -1;
  for (int i = 0; i < kTmpSlots; ++i) {
    bool expected = false;
    if (g_tmp_used[i].compare_exchange_strong(expected, true)) {
      std::memcpy(g_tmp_paths[i], p.c_str(), p.size() + 1);
      return i;
    }
  }
  return -1;
}
void unregister_tmp(int slot) {
  if (slot >= 0) g_tmp_used[slot].store(false);
}
extern "C" void remove_tmps_and_reraise(int sig) {
  for (int i = 0; i < kTmpSlots; ++i) {
    if (g_tmp_used[i].load()) ::unlink(g_tmp_paths[i]);
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}
}  // namespace

void remove_temporaries_on_signal() {
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) std::signal(sig, remove_tmps_and_reraise);
}

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  std::vector<char> tmpl(path.begin(), path.end());
  const std::string suffix = ".tmp.XXXXXX";
  tmpl.insert(tmpl.end(), suffix.begin(), suffix.end());
  tmpl.push_back('\0');
  int fd = ::mkstemp(tmpl.data());
  if (fd < 0) throw Error(ErrorCode::kIo, "cannot create a temporary file beside '" + path + "': " + std::strerror(errno));
  tmp_path_ = tmpl.data();
  slot_ = register_tmp(tmp_path_);
  ::fchmod(fd, 0644);
  f_ = ::fdopen(fd, "wb");
  if (!f_) {
    ::close(fd);
    ::unlink(tmp_path_.c_str());
    unregister_tmp(slot_);
    throw Error(ErrorCode::kIo, "cannot open '" + tmp_path_ + "'");
  }
}

AtomicFile::~AtomicFile() {
  if (f_) {
    std::fclose(f_);
    ::unlink(tmp_path_.c_str());
  }
  unregister_tmp(slot_);
}

void AtomicFile::write(const void* data, size_t n) {
  if (n == 0) return;
  if (std::fwrite(data, 1, n, f_) != n)
    throw Error(ErrorCode::kIo, "write to '" + tmp_path_ + "' failed: " + std::strerror(errno));
  pos_ += n;
}

void AtomicFile::write_zeros(size_t n) {
  static const char zeros[4096] = {};
  while (n > 0) {
    size_t k = n < sizeof(zeros) ? n : sizeof(zeros);
    write(zeros, k);
    n -= k;
  }
}

void AtomicFile::write_at(uint64_t offset, const void* data, size_t n) {
  if (offset + n > pos_) throw Error(ErrorCode::kInternal, "AtomicFile::write_at past the end of '" + tmp_path_ + "'");
  if (std::fflush(f_) != 0 || ::pwrite(::fileno(f_), data, n, static_cast<off_t>(offset)) != static_cast<ssize_t>(n))
    throw Error(ErrorCode::kIo, "write to '" + tmp_path_ + "' failed: " + std::strerror(errno));
}

void AtomicFile::commit() {
  if (std::fflush(f_) != 0 || ::fsync(::fileno(f_)) != 0)
    throw Error(ErrorCode::kIo, "flushing '" + tmp_path_ + "' failed: " + std::strerror(errno));
  std::fclose(f_);
  f_ = nullptr;
  const int rc = ::rename(tmp_path_.c_str(), path_.c_str());
  unregister_tmp(slot_);
  slot_ = -1;
  if (rc != 0) {
    int e = errno;
    ::unlink(tmp_path_.c_str());
    throw Error(ErrorCode::kIo, "cannot rename '" + tmp_path_ + "' to '" + path_ + "': " + std::strerror(e));
  }
}

void write_file(const std::string& path, std::string_view data) {
  AtomicFile f(path);
  f.write(data.data(), data.size());
  f.commit();
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kIo, "cannot open '" + path + "': " + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw Error(ErrorCode::kIo, "cannot read '" + path + "'");
  return ss.str();
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace mxlm
