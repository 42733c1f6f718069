// The float-weight GEMM entry of kernels/simd/f32_kernels.cc and neon_kernels.cc: picks the
// tile shape of gemm_blocked by M and the row length, then dispatches on the weight format. Not
// a standalone header: each file includes it inside its ISA namespace after defining
// kElemBytes, gemm_blocked, kMr/kNr (tiles for M > 1), kGemvNr (rows per tile for long rows at
// M = 1) and kGemvShortRowBytes (rows up to this size go one at a time: one sequential stream).
//
// No include guard, on purpose.

template <QType T>
void gemm_t(int M, int n0, int n1, int K, const float* x, size_t ldx, const uint8_t* w, size_t w_row_bytes, float* y,
            size_t ldy) {
  if (M <= 0 || n1 <= n0) return;
  if (M == 1) {
    // KV cache rows (64-256 elements, contiguous per head): four at a time share the query's
    // loads and one reduction.
    if constexpr (is_kv_quant(T)) {
      gemm_blocked<T, 1, 4>(M, n0, n1, K, x, ldx, w, w_row_bytes, y, ldy);
    } else if (static_cast<size_t>(K) * kElemBytes<T> <= kGemvShortRowBytes) {
      gemm_blocked<T, 1, 1>(M, n0, n1, K, x, ldx, w, w_row_bytes, y, ldy);
    } else {
      gemm_blocked<T, 1, kGemvNr>(M, n0, n1, K, x, ldx, w, w_row_bytes, y, ldy);
    }
  } else {
    gemm_blocked<T, kMr, kNr>(M, n0, n1, K, x, ldx, w, w_row_bytes, y, ldy);
  }
}

void gemm(int M, int n0, int n1, int K, const float* x, size_t ldx, const void* w, size_t w_row_bytes, QType wtype,
          float* y, size_t ldy) {
  const uint8_t* wb = static_cast<const uint8_t*>(w);
  switch (wtype) {
    case QType::kF32:
      return gemm_t<QType::kF32>(M, n0, n1, K, x, ldx, wb, w_row_bytes, y, ldy);
    case QType::kF16:
      return gemm_t<QType::kF16>(M, n0, n1, K, x, ldx, wb, w_row_bytes, y, ldy);
    case QType::kBF16:
      return gemm_t<QType::kBF16>(M, n0, n1, K, x, ldx, wb, w_row_bytes, y, ldy);
    // The KV cache formats (attention's q·Kᵀ over quantized keys), dequantized in registers.
    case QType::kQ8G32:
      return gemm_t<QType::kQ8G32>(M, n0, n1, K, x, ldx, wb, w_row_bytes, y, ldy);
    case QType::kQ8G64:
      return gemm_t<QType::kQ8G64>(M, n0, n1, K, x, ldx, wb, w_row_bytes, y, ldy);
    case QType::kQ8G128:
      return gemm_t<QType::kQ8G128>(M, n0, n1, K, x, ldx, wb, w_row_bytes, y, ldy);
    case QType::kQ4AG32:
      return gemm_t<QType::kQ4AG32>(M, n0, n1, K, x, ldx, wb, w_row_bytes, y, ldy);
    case QType::kQ2AG32:
      return gemm_t<QType::kQ2AG32>(M, n0, n1, K, x, ldx, wb, w_row_bytes, y, ldy);
    default:
      break;
  }
  __builtin_trap();  // not a float format: a caller bug
}
