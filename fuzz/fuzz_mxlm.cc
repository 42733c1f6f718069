// Fuzz target: the .mxlm container (preamble, JSON header, tensor directory, segments, row maps,
// outliers, tokenizer blob), opened from bytes and verified.
//
// The header checksum and the file size in the preamble would reject nearly every mutation
// before the directory is read, so the harness repairs both (when the header range fits the
// input) and the fuzzer explores the validation of the directory itself.
#include <cstring>

#include "fuzz/fuzz_util.h"
#include "model/checksum.h"
#include "model/file_util.h"
#include "model/mxlm_file.h"

using namespace mxlm;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  if (size >= 64) {
    uint64_t hoff, hlen, file_bytes = size;
    std::memcpy(&hoff, bytes.data() + 16, 8);
    std::memcpy(&hlen, bytes.data() + 24, 8);
    std::memcpy(bytes.data() + 40, &file_bytes, 8);
    if (hoff <= size && hlen <= size - hoff) {
      const uint32_t crc = crc32c(bytes.data() + hoff, hlen);
      std::memcpy(bytes.data() + 48, &crc, 4);
    }
  }
  fuzz::expect_parse_or_error([&] {
    MxlmFile f(MappedFile::from_memory("fuzz.mxlm", bytes.data(), bytes.size()));
    unsigned acc = 0;
    for (const TensorEntry& t : f.tensors()) {
      acc += fuzz::touch(t.data, t.bytes);
      for (const TensorSegment& s : t.segments) {
        MXLM_FUZZ_CHECK(s.data >= t.data && s.data + s.bytes <= t.data + t.bytes);
        MXLM_FUZZ_CHECK(reinterpret_cast<uintptr_t>(s.data) % (s.qtype == QType::kF32 ? 4 : 2) == 0);
      }
      if (t.row_map) acc += fuzz::touch(t.row_map, 4 * static_cast<size_t>(t.rows()));
      if (t.outliers.nnz) acc += fuzz::touch(t.outliers.values, 2 * t.outliers.nnz);
    }
    acc += fuzz::touch(reinterpret_cast<const uint8_t*>(f.tokenizer_blob().data()), f.tokenizer_blob().size());
    (void)acc;
    f.verify();
  });
  return 0;
}
