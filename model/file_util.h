// File helpers: a read-only memory map and an atomic output file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

namespace mxlm {

// A read-only, private memory map of a whole file. Throws Error (kIo) naming the path when the
// file is missing or unreadable. Empty files map to data() == nullptr, size() == 0.
//
// from_memory() makes the same object from a copy of bytes already in memory (a 64-byte aligned
// heap buffer, like a mapping's page alignment), so that every parser that reads a MappedFile
// can also parse bytes: the fuzz targets use it, and a heap copy lets AddressSanitizer catch a
// read one byte past the end (a mapping would hide it up to the page end).
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::string& path);
  // `name` stands in for the path in error messages.
  static MappedFile from_memory(const std::string& name, const void* data, size_t size);
  // The whole file read into anonymous memory (alloc_anonymous) instead of mapped: pages the
  // kernel can back with transparent huge pages when `huge_pages` (runtime/model.cc says why).
  // The memory stays writable (mutable_data) until seal() makes it read-only.
  static MappedFile read_into_memory(const std::string& path, bool huge_pages);
  ~MappedFile();
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // The bytes of a read_into_memory() file before seal(), writable (null otherwise): the model
  // loader repacks weight rows in place there.
  uint8_t* mutable_data() { return sealed_ ? nullptr : anon_.get(); }
  void seal();
  const std::string& path() const { return path_; }

 private:
  void release();

  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  bool heap_ = false;  // data_ is a from_memory() copy (operator delete), else a mapping (munmap)
  std::shared_ptr<uint8_t> anon_;  // read_into_memory(): owns data_
  bool sealed_ = true;             // read_into_memory(): false until seal()
};

// `bytes` of zeroed, read-write anonymous memory (at least page-aligned). huge_pages: 2 MiB-
// aligned and marked MADV_HUGEPAGE, so that transparent huge pages back it where the system
// allows them (with THP set to "madvise", the common default, nothing else gets them). Throws
// Error kIo naming `what` and the size when the system refuses the memory.
std::shared_ptr<uint8_t> alloc_anonymous(size_t bytes, bool huge_pages, const std::string& what);

// Writes a file atomically: data goes to a temporary file beside the target, which replaces the
// target only in commit() (after fsync). Destroying an uncommitted AtomicFile removes the
// temporary, so an interrupted or failed write never touches an existing file.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t n);
  void write_zeros(size_t n);
  // Overwrites n bytes at an offset already written (e.g. a header placeholder).
  void write_at(uint64_t offset, const void* data, size_t n);
  uint64_t tell() const { return pos_; }
  void commit();

 private:
  std::string path_, tmp_path_;
  std::FILE* f_ = nullptr;
  uint64_t pos_ = 0;
  int slot_ = -1;  // in the signal handler's list of temporaries
};

// Installs SIGINT/SIGTERM/SIGHUP handlers that remove the temporaries of the AtomicFiles being
// written, then let the signal end the process as before: an interrupted tool leaves neither a
// partial output nor a stray temporary (the CLI calls this at start).
void remove_temporaries_on_signal();

// Reads a whole (small) file into a string. Throws Error (kIo) naming the path.
std::string read_file(const std::string& path);
// Writes a whole file atomically (an AtomicFile written and committed).
void write_file(const std::string& path, std::string_view data);
bool file_exists(const std::string& path);

}  // namespace mxlm
