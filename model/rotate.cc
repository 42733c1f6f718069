// Rotation of the residual stream and value heads (see rotate.h for the math).
//
// Every rotated tensor is read row by row (read_source_row: f32, RoPE rows in the rotate-half
// order), transformed in double and stored as an owned f32 tensor, so the rotated model's
// logits equal the original's to float rounding (tests/rotate_test.cc: 1e-5 relative on
// tinymix-26m). It holds 4 bytes per weight of the model in memory while it lives.
//
// Measured: see the README's mixed-precision section (`--rotate`).
#include "model/rotate.h"

#include <cmath>
#include <map>
#include <memory>
#include <string>

#include "base/error.h"
#include "kernels/splitmix.h"

#define EIGEN_DONT_PARALLELIZE  // determinism: threads are ours; every TU including Eigen must agree (ODR)
#include <Eigen/Core>
#include <Eigen/QR>

namespace mxlm {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw Error(ErrorCode::kInvalidArgument, msg); }

// A fixed generator (kernels/splitmix.h), so the rotation is the same on every platform.
struct Rng {
  uint64_t s;
  uint64_t next() { return splitmix64_next(s); }
  double uniform() { return double((next() >> 11) + 1) * 0x1.0p-53; }  // (0, 1]
  double gaussian() {
    const double u = uniform(), v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
};

}  // namespace

Rotation::Rotation(int64_t n, uint64_t seed) : n_(n) {
  if (n < 1 || n > (int64_t(1) << 20)) fail("Rotation: size " + std::to_string(n) + " outside [1, 2^20]");
  p_ = 1;
  while (n % (p_ * 2) == 0) p_ *= 2;
  m_ = n / p_;
  Rng rng{seed};
  sign_.resize(size_t(n));
  for (double& s : sign_) s = (rng.next() >> 63) ? -1.0 : 1.0;
  q_.assign(size_t(m_ * m_), 0.0);
  if (m_ == 1) {
    q_[0] = 1.0;
    return;
  }
  Eigen::MatrixXd g(m_, m_);
  for (int64_t i = 0; i < m_; ++i)
    for (int64_t j = 0; j < m_; ++j) g(i, j) = rng.gaussian();
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  const Eigen::MatrixXd q = qr.householderQ();
  for (int64_t i = 0; i < m_; ++i)
    for (int64_t j = 0; j < m_; ++j) q_[size_t(i * m_ + j)] = q(i, j);
}

void Rotation::apply(double* v) const {
  for (int64_t i = 0; i < n_; ++i) v[i] *= sign_[size_t(i)];
  const double norm = 1.0 / std::sqrt(double(p_));
  for (int64_t a = 0; a < m_; ++a) {
    fwht(v + a * p_, p_);
    for (int64_t d = 0; d < p_; ++d) v[a * p_ + d] *= norm;
  }
  if (m_ == 1) return;
  std::vector<double> t(size_t(n_), 0.0);
  for (int64_t a = 0; a < m_; ++a) {
    for (int64_t c = 0; c < m_; ++c) {
      const double qac = q_[size_t(a * m_ + c)];
      for (int64_t d = 0; d < p_; ++d) t[size_t(c * p_ + d)] += qac * v[a * p_ + d];
    }
  }
  std::copy(t.begin(), t.end(), v);
}

std::vector<double> Rotation::matrix() const {
  std::vector<double> r(size_t(n_ * n_), 0.0);
  for (int64_t i = 0; i < n_; ++i) {
    double* row = r.data() + i * n_;
    row[i] = 1.0;
    apply(row);
  }
  return r;
}

ImportedModel rotate_model(const ImportedModel& m, const RotateOptions& o) {
  const ModelConfig& c = m.config;
  if (c.tied_embeddings && o.residual) {
    fail("rotate: the output head is tied to the token embedding; a rotated head needs the final norm's weights "
         "folded in, which the embedding cannot take (untie the head first)");
  }
  ImportedModel out = m;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < out.tensors.size(); ++i) index[out.tensors[i].name] = i;

  // Dense f32 copies of the tensors being changed, written back at the end.
  struct Dense {
    int64_t n = 0, k = 0;
    std::shared_ptr<std::vector<float>> w;
  };
  std::map<std::string, Dense> dense;
  auto get = [&](const std::string& name, int64_t n, int64_t k) -> Dense& {
    auto d = dense.find(name);
    if (d != dense.end()) return d->second;
    auto it = index.find(name);
    if (it == index.end()) throw Error(ErrorCode::kFormat, "rotate: model lacks tensor '" + name + "'");
    const SourceTensor& t = out.tensors[it->second];
    const int64_t tn = t.shape.size() == 2 ? t.shape[0] : 1, tk = t.shape.back();
    if (tn != n || tk != k) {
      throw Error(ErrorCode::kFormat, "rotate: tensor '" + name + "' is " + std::to_string(tn) + "×" +
                                          std::to_string(tk) + ", expected " + std::to_string(n) + "×" + std::to_string(k));
    }
    Dense& e = dense[name];
    e.n = n;
    e.k = k;
    e.w = std::make_shared<std::vector<float>>(size_t(n * k));
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < n; ++r) read_source_row(t, r, e.w->data() + r * k);
    return e;
  };

  const int64_t E = c.n_embd, hd = c.head_dim;
  // Row vectors of length R.size() inside a matrix: rows (stride 1, step k) or columns.
  auto rotate_rows = [](Dense& t, const Rotation& r, const std::vector<float>* g) {
#pragma omp parallel
    {
      std::vector<double> v(static_cast<size_t>(t.k));
#pragma omp for schedule(static)
      for (int64_t i = 0; i < t.n; ++i) {
        float* row = t.w->data() + i * t.k;
        for (int64_t j = 0; j < t.k; ++j) v[size_t(j)] = double(row[j]) * (g ? double((*g)[size_t(j)]) : 1.0);
        r.apply(v.data());
        for (int64_t j = 0; j < t.k; ++j) row[j] = float(v[size_t(j)]);
      }
    }
  };
  // Segments of r.size() elements, `count` per line, every element `stride` floats apart:
  // line i's segment s starts at line_step·i + seg_step·s.
  auto rotate_segments = [](Dense& t, const Rotation& r, int64_t lines, int64_t line_step, int64_t count,
                            int64_t seg_step, int64_t stride) {
    const int64_t len = r.size();
#pragma omp parallel
    {
      std::vector<double> v(static_cast<size_t>(len));
#pragma omp for schedule(static)
      for (int64_t i = 0; i < lines; ++i) {
        for (int64_t s = 0; s < count; ++s) {
          float* seg = t.w->data() + i * line_step + s * seg_step;
          for (int64_t j = 0; j < len; ++j) v[size_t(j)] = double(seg[j * stride]);
          r.apply(v.data());
          for (int64_t j = 0; j < len; ++j) seg[j * stride] = float(v[size_t(j)]);
        }
      }
    }
  };
  // Every column's `count` segments of r.size() rows, and every row's `count` segments of
  // r.size() columns.
  auto rotate_column_segments = [&](Dense& t, const Rotation& r, int64_t count) {
    rotate_segments(t, r, t.k, 1, count, r.size() * t.k, t.k);
  };
  auto rotate_row_segments = [&](Dense& t, const Rotation& r, int64_t count) {
    rotate_segments(t, r, t.n, t.k, count, r.size(), 1);
  };
  auto take_norm = [&](const std::string& name) {
    Dense& d = get(name, 1, E);
    std::vector<float> g(d.w->begin(), d.w->end());
    std::fill(d.w->begin(), d.w->end(), 1.0f);
    return g;
  };

  using namespace tensor_names;
  const int64_t q_rows = int64_t(c.n_heads) * hd, kv_rows = int64_t(c.n_kv_heads) * hd;
  if (o.residual) {
    const Rotation r(E, o.seed);
    rotate_rows(get(kTokEmbd, c.n_vocab, E), r, nullptr);
    for (int l = 0; l < c.n_layers; ++l) {
      const std::vector<float> ga = take_norm(layer(l, kAttnNorm));
      rotate_rows(get(layer(l, kAttnQ), q_rows, E), r, &ga);
      rotate_rows(get(layer(l, kAttnK), kv_rows, E), r, &ga);
      rotate_rows(get(layer(l, kAttnV), kv_rows, E), r, &ga);
      rotate_column_segments(get(layer(l, kAttnO), E, q_rows), r, 1);
      const std::vector<float> gf = take_norm(layer(l, kFfnNorm));
      rotate_rows(get(layer(l, kFfnGate), c.n_ff, E), r, &gf);
      rotate_rows(get(layer(l, kFfnUp), c.n_ff, E), r, &gf);
      rotate_column_segments(get(layer(l, kFfnDown), E, c.n_ff), r, 1);
    }
    const std::vector<float> go = take_norm(kOutputNorm);
    rotate_rows(get(kOutput, c.n_vocab, E), r, &go);
  }
  if (o.value_heads) {
    const Rotation r2(hd, o.seed ^ 0x5a5a5a5aULL);
    for (int l = 0; l < c.n_layers; ++l) {
      rotate_column_segments(get(layer(l, kAttnV), kv_rows, E), r2, c.n_kv_heads);
      rotate_row_segments(get(layer(l, kAttnO), E, q_rows), r2, c.n_heads);
    }
  }

  for (auto& [name, d] : dense) {
    SourceTensor& t = out.tensors[index.at(name)];
    t.src_type = QType::kF32;
    t.data = reinterpret_cast<const uint8_t*>(d.w->data());
    t.rope_unpermute_head_dim = 0;
    out.files.push_back(d.w);
  }
  out.provenance["rotation"] = {{"residual", o.residual}, {"value_heads", o.value_heads}, {"seed", o.seed}};
  return out;
}

}  // namespace mxlm
