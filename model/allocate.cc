// The multiple-choice knapsack of allocate.h and the size parser.
//
// Headroom. With m_i = item i's smallest size and e_ij = b_ij - m_i its extra bytes, a mix fits
// iff Σ e_i,c(i) <= H = budget - Σ m_i. Dominated choices are dropped first (sorted by bytes, a
// choice survives only with strictly less loss than every smaller one), so they can never be
// picked and every loop below shrinks.
//
// 1. Lagrangian walk (the incumbent). For λ >= 0 the relaxation picks argmin_j l_ij + λ·e_ij
//    per item, a vertex of the item's lower convex hull. Lowering λ from ∞ adds hull segments in
//    order of loss saved per byte, so walking all items' segments in that order while they fit
//    visits every feasible Lagrangian mix; the last one is the best, and the rate λ* of the step
//    that did not fit is where the relaxation crosses the budget. Local search (2.) improves it.
//
// 2. Local search: the best single upgrade that fits, or upgrade paid for by one downgrade,
//    repeated until nothing saves loss. It spends what the walk or the DP's buckets left unused.
//
// 3. DP over the headroom, row i = items 0..i, one state per bucket of u bytes:
//      state (loss, exact extra bytes x); a transition adds choice j: (loss + l_ij, x + e_ij)
//    kept when x + e_ij <= H, and in bucket floor((x + e_ij) / u) only the least loss survives
//    (ties: fewer bytes). States carry exact bytes, so every mix fits and no rounding is lost
//    per item; bucket merging is the only approximation, and at u = 1 it merges only equal byte
//    counts: exact. Floating-point addition is monotone (a <= b implies a + x <= b + x after
//    rounding), so the DP finds the least left-to-right sum, as a brute force summing in order.
//    Pruning: a state is dropped when its loss plus a lower bound on items i+1.. exceeds the
//    incumbent's loss: max(Σ_k min_j l_kj, Σ_k min_j (l_kj + λ*·e_kj) - λ*·(H - x)), the first
//    ignoring the budget, the second the Lagrangian dual at λ* (valid for any λ >= 0, since
//    λ*·(Σ e - (H - x)) <= 0 for every completion that fits). Both are exact bounds, so pruning
//    never loses a mix better than the incumbent; the states are kept sparse (a list per row plus
//    a parent/choice history) because few survive.
//    u = 1 while H < 2^18, else the smallest u with <= 2^18 buckets; if the history would pass
//    8 Mi states (40 MB: losses too flat to prune) the pass restarts with u·4. Worst case
//    measured: loss = -bytes (every bound tight, nothing pruned), 300 × 15: 0.8 s.
//
// The lower-loss of (1.+2.) and (3.+2.) is returned, so the answer is never worse than any
// Lagrangian-feasible mix.
//
// Measured (2 shared cores, -O3; realistic instances of allocate_test: 60-300 tensors × 15
// formats, H at 2-60 % of the range):
//   - the first version, a dense DP with bytes rounded UP to u = H/(200·n) and a greedy fill,
//     ended up to 0.27 % above the best mix found with 10^6 exact-byte buckets (150 tensors,
//     H at 30 %), since rounding wastes up to n·u bytes and the optimizer favours choices whose
//     size rounds well. Exact-byte buckets at 2^18 are within 2e-5 of 10^6 buckets.
//   - pruning keeps 0.2-10 % of the buckets: 0.01-0.2 s per instance (without pruning, over
//     all buckets: ~1 s at n = 300 with only 60 000 of them).
//   - without the local search: up to 4e-5 more loss and 2-10x the time (a weaker incumbent
//     prunes less).
#include "model/allocate.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <sstream>

#include "base/error.h"

namespace mxlm {
namespace {

struct Cand {
  uint64_t bytes;  // absolute size
  double loss;
  int orig;        // index into the item's choices
};

uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

// Loss of a mix, summed in item order (the order the DP and a brute force sum in).
double mix_loss(const std::vector<std::vector<Cand>>& c, const std::vector<int>& pick) {
  double s = 0;
  for (size_t i = 0; i < c.size(); ++i) s += c[i][pick[i]].loss;
  return s;
}

uint64_t mix_bytes(const std::vector<std::vector<Cand>>& c, const std::vector<int>& pick) {
  uint64_t s = 0;
  for (size_t i = 0; i < c.size(); ++i) s += c[i][pick[i]].bytes;
  return s;
}

// Local search after the walk and after the DP: spends the bytes they left unused. A move upgrades one
// item to a larger choice, optionally paying for it by downgrading another; each round applies
// the move that saves the most loss, until none saves anything. Upgrades are sorted by extra
// bytes with running best and second best gain (of different items), so a round costs
// O(N log N) for N = Σ choices instead of O(N²). Every move lowers the loss, but a move's saving
// is a difference of doubles: the result is kept only when the mix's summed loss really fell.
void exchange_refine(const std::vector<std::vector<Cand>>& c, std::vector<int>& pick, uint64_t budget) {
  struct Up {
    uint64_t extra;
    double gain;
    uint32_t item, to;
  };
  const std::vector<int> start = pick;
  std::vector<Up> ups;
  std::vector<int32_t> best1, best2;  // per prefix of ups: the best gain, and the best of another item
  size_t total = 0;
  for (const auto& ci : c) total += ci.size();
  for (size_t round = 0; round < 4 * total; ++round) {
    const uint64_t slack = budget - mix_bytes(c, pick);
    ups.clear();
    for (size_t i = 0; i < c.size(); ++i)
      for (size_t k = pick[i] + 1; k < c[i].size(); ++k)
        ups.push_back({c[i][k].bytes - c[i][pick[i]].bytes, c[i][pick[i]].loss - c[i][k].loss, uint32_t(i), uint32_t(k)});
    if (ups.empty()) break;
    std::sort(ups.begin(), ups.end(), [](const Up& a, const Up& b) { return a.extra < b.extra; });
    best1.assign(ups.size(), -1);
    best2.assign(ups.size(), -1);
    for (size_t t = 0; t < ups.size(); ++t) {
      int32_t b1 = t ? best1[t - 1] : -1, b2 = t ? best2[t - 1] : -1;
      const int32_t u = static_cast<int32_t>(t);
      if (b1 < 0 || ups[u].gain > ups[b1].gain) {
        if (b1 >= 0 && ups[b1].item != ups[u].item) b2 = b1;
        b1 = u;
      } else if (ups[u].item != ups[b1].item && (b2 < 0 || ups[u].gain > ups[b2].gain)) {
        b2 = u;
      }
      best1[t] = b1, best2[t] = b2;
    }
    // The best upgrade of an item other than `skip` within `avail` bytes (-1: none).
    auto best_up = [&](uint64_t avail, uint32_t skip) -> int32_t {
      const auto it = std::upper_bound(ups.begin(), ups.end(), avail, [](uint64_t v, const Up& u) { return v < u.extra; });
      if (it == ups.begin()) return -1;
      const size_t t = static_cast<size_t>(it - ups.begin()) - 1;
      return best1[t] >= 0 && ups[best1[t]].item != skip ? best1[t] : best2[t];
    };
    double best_net = 0;
    int32_t move_up = best_up(slack, UINT32_MAX);
    size_t move_down_item = SIZE_MAX;
    int move_down_to = -1;
    if (move_up >= 0) best_net = ups[move_up].gain;
    if (best_net <= 0) move_up = -1;
    for (size_t a = 0; a < c.size(); ++a) {
      const Cand& cur = c[a][pick[a]];
      for (int k = 0; k < pick[a]; ++k) {
        const int32_t u = best_up(slack + (cur.bytes - c[a][k].bytes), uint32_t(a));
        if (u < 0) continue;
        const double net = ups[u].gain - (c[a][k].loss - cur.loss);
        if (net > best_net) best_net = net, move_up = u, move_down_item = a, move_down_to = k;
      }
    }
    if (move_up < 0) break;
    pick[ups[move_up].item] = static_cast<int>(ups[move_up].to);
    if (move_down_to >= 0) pick[move_down_item] = move_down_to;
  }
  if (!(mix_loss(c, pick) < mix_loss(c, start))) pick = start;
}

// The best feasible mix along the Lagrangian path (see the file comment).
// `lambda` receives the rate of the first step that did not fit (0 when all fit): the multiplier
// at which the relaxation's mix crosses the budget, and so a near-best one for lower bounds.
std::vector<int> lagrangian_walk(const std::vector<std::vector<Cand>>& c, uint64_t budget, double& lambda) {
  struct Seg {
    double rate;  // loss saved per extra byte
    size_t item;
    int to;       // choice index after the step
  };
  std::vector<Seg> segs;
  for (size_t i = 0; i < c.size(); ++i) {
    // Lower convex hull of (bytes, loss); the points are already sorted by bytes with strictly
    // decreasing loss. Keeps points whose rate of loss saved per byte strictly decreases.
    std::vector<int> hull;
    for (int k = 0; k < static_cast<int>(c[i].size()); ++k) {
      while (hull.size() >= 2) {
        const Cand& a = c[i][hull[hull.size() - 2]];
        const Cand& b = c[i][hull.back()];
        const Cand& p = c[i][k];
        const double r_ab = (a.loss - b.loss) / double(b.bytes - a.bytes);
        const double r_bp = (b.loss - p.loss) / double(p.bytes - b.bytes);
        if (r_bp >= r_ab) hull.pop_back();  // b lies on or above the chord a-p
        else break;
      }
      hull.push_back(k);
    }
    for (size_t h = 1; h < hull.size(); ++h) {
      const Cand& a = c[i][hull[h - 1]];
      const Cand& b = c[i][hull[h]];
      segs.push_back({(a.loss - b.loss) / double(b.bytes - a.bytes), i, hull[h]});
    }
  }
  // Within an item rates strictly decrease, so a stable sort keeps each item's steps in order.
  std::stable_sort(segs.begin(), segs.end(), [](const Seg& x, const Seg& y) { return x.rate > y.rate; });
  std::vector<int> pick(c.size(), 0);
  uint64_t used = mix_bytes(c, pick);
  lambda = 0;
  for (const Seg& s : segs) {
    const uint64_t add = c[s.item][s.to].bytes - c[s.item][pick[s.item]].bytes;
    if (add > budget - used) {  // the next Lagrangian mix no longer fits
      lambda = s.rate;
      break;
    }
    used += add;
    pick[s.item] = s.to;
  }
  return pick;
}

// Lower bounds on the loss of items i..n-1, as suffix sums over items (see the file comment).
struct RestBounds {
  std::vector<double> free;    // Σ min_j l_kj: the budget ignored
  std::vector<double> priced;  // Σ min_j (l_kj + λ·e_kj): less λ times the bytes still free
};

// The bucketed DP with pruning (see the file comment) at one bucket width. Returns false when
// the states outgrow kMaxStates (the caller retries with wider buckets). On success `pick` holds
// the best mix found, or is empty when every state was pruned (nothing beats the incumbent).
bool dp_pass(const std::vector<std::vector<Cand>>& c, const std::vector<std::vector<uint64_t>>& e, uint64_t headroom,
             uint64_t unit, const RestBounds& rest, double lambda, double cutoff, std::vector<int>& pick) {
  constexpr size_t kMaxStates = size_t(1) << 23;  // 8 Mi states: 40 MB of history
  const size_t n = c.size();
  const size_t cells = static_cast<size_t>(headroom / unit) + 1;
  std::vector<uint32_t> parent = {0};  // the history of every state ever kept: its predecessor
  std::vector<uint8_t> choice = {0};   // and the choice that led to it; state 0 is "no items"
  struct State {
    double loss;
    uint64_t bytes;  // exact extra bytes
    uint32_t id;     // index into the history
  };
  std::vector<State> prev = {{0.0, 0, 0}}, cur;
  std::vector<int32_t> slot(cells, -1);  // bucket -> index into cur, for this row
  for (size_t i = 0; i < n; ++i) {
    cur.clear();
    std::vector<uint32_t> from;  // cur[s] came from prev[from[s]] via choice[id]
    const double r0 = rest.free[i + 1], rl = rest.priced[i + 1];
    for (size_t p = 0; p < prev.size(); ++p) {
      const State& st = prev[p];
      for (size_t k = 0; k < c[i].size(); ++k) {
        const uint64_t nb = st.bytes + e[i][k];
        if (nb > headroom) break;  // larger k: even more bytes
        const double nl = st.loss + c[i][k].loss;
        if (nl + std::max(r0, rl - lambda * double(headroom - nb)) > cutoff) continue;
        const size_t t = static_cast<size_t>(nb / unit);
        if (slot[t] < 0) {
          slot[t] = static_cast<int32_t>(cur.size());
          cur.push_back({nl, nb, static_cast<uint32_t>(k)});  // id: the choice, until committed
          from.push_back(static_cast<uint32_t>(p));
        } else {
          State& o = cur[slot[t]];
          if (nl < o.loss || (nl == o.loss && nb < o.bytes)) {
            o = {nl, nb, static_cast<uint32_t>(k)};
            from[slot[t]] = static_cast<uint32_t>(p);
          }
        }
      }
    }
    // Give up early when this row's size, repeated for the rows left, would pass twice the
    // limit: rows rarely shrink much, and a doomed pass would cost as much as the next one.
    if (parent.size() + cur.size() > kMaxStates ||
        double(parent.size()) + double(cur.size()) * double(n - i) > 2.0 * double(kMaxStates))
      return false;
    for (size_t s = 0; s < cur.size(); ++s) {
      slot[cur[s].bytes / unit] = -1;
      choice.push_back(static_cast<uint8_t>(cur[s].id));
      parent.push_back(prev[from[s]].id);
      cur[s].id = static_cast<uint32_t>(parent.size() - 1);
    }
    std::swap(prev, cur);
  }
  pick.clear();
  if (prev.empty()) return true;
  const State* best = &prev[0];
  for (const State& st : prev)
    if (st.loss < best->loss || (st.loss == best->loss && st.bytes < best->bytes)) best = &st;
  pick.resize(n);
  uint32_t id = best->id;
  for (size_t i = n; i-- > 0;) {
    pick[i] = choice[id];
    id = parent[id];
  }
  return true;
}

// The DP over the headroom (see the file comment): the finest buckets whose states fit in
// memory. Empty when nothing beats `incumbent`.
std::vector<int> dp_mix(const std::vector<std::vector<Cand>>& c, uint64_t headroom, double incumbent, double lambda) {
  const size_t n = c.size();
  std::vector<std::vector<uint64_t>> e(n);  // extra bytes over the item's smallest choice
  for (size_t i = 0; i < n; ++i)
    for (const Cand& k : c[i]) e[i].push_back(k.bytes - c[i][0].bytes);
  RestBounds rest{std::vector<double>(n + 1, 0.0), std::vector<double>(n + 1, 0.0)};
  for (size_t i = n; i-- > 0;) {
    double m0 = INFINITY, ml = INFINITY;
    for (size_t k = 0; k < c[i].size(); ++k) {
      m0 = std::min(m0, c[i][k].loss);
      ml = std::min(ml, c[i][k].loss + lambda * double(e[i][k]));
    }
    rest.free[i] = rest.free[i + 1] + m0;
    rest.priced[i] = rest.priced[i + 1] + ml;
  }
  // The bounds sum doubles in another order than the mixes: a margin far above their rounding
  // error (n·2^-53 of the summed magnitudes) keeps rounding from pruning a mix that ties.
  double scale = 0;
  for (const auto& ci : c) {
    double m = 0;
    for (const Cand& k : ci) m = std::max(m, std::abs(k.loss));
    scale += m;
  }
  const double cutoff = incumbent + 1e-9 * scale + 1e-300;
  constexpr uint64_t kMaxCells = uint64_t(1) << 18;
  uint64_t unit = headroom < kMaxCells ? 1 : (headroom + kMaxCells - 1) / kMaxCells;
  std::vector<int> pick;
  while (!dp_pass(c, e, headroom, unit, rest, lambda, cutoff, pick)) unit *= 4;
  return pick;
}

}  // namespace

Allocation allocate(const std::vector<AllocItem>& items, uint64_t budget) {
  const size_t n = items.size();
  std::vector<std::vector<Cand>> c(n);
  uint64_t sum_min = 0, sum_max = 0;
  for (size_t i = 0; i < n; ++i) {
    const AllocItem& it = items[i];
    if (it.choices.empty())
      throw Error(ErrorCode::kInvalidArgument, "allocate: item " + std::to_string(i) + " ('" + it.name + "') has no choices");
    uint64_t lo = UINT64_MAX, hi = 0;
    std::vector<Cand> all;
    for (size_t j = 0; j < it.choices.size(); ++j) {
      const AllocChoice& ch = it.choices[j];
      if (!std::isfinite(ch.loss)) {
        std::ostringstream m;
        m << "allocate: item '" << it.name << "' choice " << j << " has loss " << ch.loss << "; losses must be finite";
        throw Error(ErrorCode::kInvalidArgument, m.str());
      }
      lo = std::min(lo, ch.bytes);
      hi = std::max(hi, ch.bytes);
      all.push_back({ch.bytes, ch.loss, static_cast<int>(j)});
    }
    sum_min = sat_add(sum_min, lo);
    sum_max = sat_add(sum_max, hi);
    // Drop dominated choices: by bytes (then loss, then index), keep strictly decreasing loss.
    std::sort(all.begin(), all.end(), [](const Cand& a, const Cand& b) {
      if (a.bytes != b.bytes) return a.bytes < b.bytes;
      if (a.loss != b.loss) return a.loss < b.loss;
      return a.orig < b.orig;
    });
    for (const Cand& k : all)
      if (c[i].empty() || k.loss < c[i].back().loss) c[i].push_back(k);
    if (c[i].size() > 255)
      throw Error(ErrorCode::kInvalidArgument, "allocate: item '" + it.name + "' has " + std::to_string(c[i].size()) +
                                                   " non-dominated choices; at most 255 are supported");
  }
  if (budget < sum_min)
    throw Error(ErrorCode::kInvalidArgument,
                "allocate: budget " + std::to_string(budget) + " bytes is below the smallest mix; the reachable range is [" +
                    std::to_string(sum_min) + ", " + std::to_string(sum_max) + "] bytes (every tensor in its smallest / largest format)");

  std::vector<int> pick(n);
  uint64_t sum_best = 0;  // every item at its lowest loss (its largest non-dominated choice)
  for (size_t i = 0; i < n; ++i) sum_best = sat_add(sum_best, c[i].back().bytes);
  if (budget >= sum_best) {
    for (size_t i = 0; i < n; ++i) pick[i] = static_cast<int>(c[i].size()) - 1;
  } else {
    double lambda = 0;
    pick = lagrangian_walk(c, budget, lambda);
    exchange_refine(c, pick, budget);
    std::vector<int> a = dp_mix(c, budget - sum_min, mix_loss(c, pick), lambda);
    if (!a.empty()) {
      exchange_refine(c, a, budget);
      const double la = mix_loss(c, a), lb = mix_loss(c, pick);
      if (la < lb || (la == lb && mix_bytes(c, a) < mix_bytes(c, pick))) pick = a;
    }
  }

  Allocation out;
  out.choice.resize(n);
  for (size_t i = 0; i < n; ++i) out.choice[i] = c[i][pick[i]].orig;
  out.bytes = mix_bytes(c, pick);
  out.loss = mix_loss(c, pick);
  MXLM_ASSERT(out.bytes <= budget);
  return out;
}

uint64_t parse_size_arg(const std::string& s) {
  auto fail = [&s](const std::string& why) -> Error {
    return Error(ErrorCode::kInvalidArgument,
                 "size '" + s + "' " + why +
                     "; expected a positive number of bytes with an optional suffix K, M, G or T (powers of 1024), "
                     "optionally followed by B or iB: e.g. 123456, 64K, 300M, 300MB, 300MiB, 1.5G");
  };
  size_t p = 0;
  unsigned __int128 mant = 0;
  int digits = 0, frac_digits = 0;
  bool dot = false;
  for (; p < s.size(); ++p) {
    const char ch = s[p];
    if (ch == '.' && !dot) {
      dot = true;
      continue;
    }
    if (ch < '0' || ch > '9') break;
    if (mant == 0 && ch == '0' && !dot) continue;  // leading zeros carry no digits
    if (++digits > 24) throw fail("has more than 24 significant digits");  // keeps mant·2^40 in 128 bits
    mant = mant * 10 + unsigned(ch - '0');
    if (dot) ++frac_digits;
  }
  const bool any_digit = std::any_of(s.begin(), s.begin() + p, [](char ch) { return ch >= '0' && ch <= '9'; });
  if (s.empty()) throw fail("is empty");
  if (s[0] == '-') throw fail("is negative");
  if (!any_digit) throw fail("is not a number");
  std::string suf;
  for (size_t q = p; q < s.size(); ++q) suf += static_cast<char>(std::toupper(static_cast<unsigned char>(s[q])));
  int shift = -1;
  std::string rest;
  if (suf.empty() || suf == "B") {
    shift = 0;
  } else {
    const std::string units = "KMGT";
    const size_t u = units.find(suf[0]);
    rest = suf.substr(1);
    if (u != std::string::npos && (rest.empty() || rest == "B" || rest == "IB")) shift = 10 * int(u + 1);
  }
  if (shift < 0) throw fail("has an unknown suffix '" + s.substr(p) + "'");
  if (dot && shift == 0) throw fail("has a fraction of a byte");
  unsigned __int128 v = mant << shift;
  for (int d = 0; d < frac_digits; ++d) v /= 10;  // exact: floor(mant · 2^shift / 10^frac)
  if (v > UINT64_MAX) throw fail("is too large (more than 2^64 - 1 bytes)");
  if (v == 0) throw fail("is zero bytes");
  return static_cast<uint64_t>(v);
}

}  // namespace mxlm
