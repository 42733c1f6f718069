// The bit allocator (model/allocate.h): exact against brute force on small instances, never over
// the budget, close to the budget and at least as good as the Lagrangian relaxation on realistic
// ones; the --size parser; and recipes (model/recipe.h: parsing with clear errors, rule
// precedence, the unmatched-rule check and the --dry-run round trip), which feed the same
// quantizer step and live here to keep the test files few.
#include "model/allocate.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <random>

#include "base/error.h"
#include "model/recipe.h"

namespace mxlm {
namespace {

// Least left-to-right loss sum over all mixes that fit (the allocator sums in the same order).
double brute_force(const std::vector<AllocItem>& items, uint64_t budget) {
  double best = INFINITY;
  std::vector<size_t> idx(items.size(), 0);
  for (;;) {
    uint64_t b = 0;
    double l = 0;
    for (size_t i = 0; i < items.size(); ++i) b += items[i].choices[idx[i]].bytes, l += items[i].choices[idx[i]].loss;
    if (b <= budget) best = std::min(best, l);
    size_t i = 0;
    while (i < items.size() && ++idx[i] == items[i].choices.size()) idx[i++] = 0;
    if (i == items.size()) return best;
  }
}

// Checks the returned totals against the choices and that no picked choice is dominated.
void check_consistent(const std::vector<AllocItem>& items, const Allocation& a, uint64_t budget) {
  ASSERT_EQ(a.choice.size(), items.size());
  uint64_t b = 0;
  double l = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    ASSERT_GE(a.choice[i], 0);
    ASSERT_LT(a.choice[i], static_cast<int>(items[i].choices.size()));
    const AllocChoice& p = items[i].choices[a.choice[i]];
    b += p.bytes;
    l += p.loss;
    for (const AllocChoice& q : items[i].choices) {
      const bool dominates = q.bytes <= p.bytes && q.loss <= p.loss && (q.bytes < p.bytes || q.loss < p.loss);
      EXPECT_FALSE(dominates) << "item " << i << " picked a dominated choice";
    }
  }
  EXPECT_EQ(a.bytes, b);
  EXPECT_DOUBLE_EQ(a.loss, l);
  EXPECT_LE(a.bytes, budget);
}

TEST(AllocateTest, MatchesBruteForceOnSmallInstances) {
  std::mt19937_64 rng(1234);
  int cases = 0;
  for (int t = 0; t < 300; ++t) {
    std::vector<AllocItem> items(1 + rng() % 6);
    uint64_t lo = 0, hi = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      items[i].name = std::to_string(i);  // ("t" + to_string trips GCC 12's -Wrestrict false positive)
      const int m = 1 + static_cast<int>(rng() % 5);
      uint64_t mn = UINT64_MAX, mx = 0;
      for (int j = 0; j < m; ++j) {
        AllocChoice c;
        c.bytes = rng() % 20;
        // Every third instance uses small integer losses, so ties and dominated choices occur.
        c.loss = t % 3 == 0 ? double(rng() % 6) : std::uniform_real_distribution<double>(0, 10)(rng);
        mn = std::min(mn, c.bytes);
        mx = std::max(mx, c.bytes);
        items[i].choices.push_back(c);
      }
      lo += mn;
      hi += mx;
    }
    const uint64_t budget = lo + rng() % (hi - lo + 3);
    const Allocation a = allocate(items, budget);
    check_consistent(items, a, budget);
    EXPECT_DOUBLE_EQ(a.loss, brute_force(items, budget)) << "instance " << t << " budget " << budget;
    ++cases;
  }
  EXPECT_EQ(cases, 300);
}

TEST(AllocateTest, NearBruteForceWhenBucketsAreWide) {
  // Sizes up to 1e8 bytes: the DP merges byte counts into buckets (u > 1 byte), where it is no
  // longer exact by construction; the walk, the local search and the bounds still land on the
  // optimum in almost every case and never far from it.
  std::mt19937_64 rng(99);
  int exact = 0;
  double worst = 0;
  for (int t = 0; t < 200; ++t) {
    std::vector<AllocItem> items(2 + rng() % 5);
    uint64_t lo = 0, hi = 0;
    for (AllocItem& it : items) {
      uint64_t mn = UINT64_MAX, mx = 0;
      for (int j = 0; j < 5; ++j) {
        const AllocChoice c{1 + rng() % 100000000, std::uniform_real_distribution<double>(0, 10)(rng)};
        mn = std::min(mn, c.bytes), mx = std::max(mx, c.bytes);
        it.choices.push_back(c);
      }
      lo += mn, hi += mx;
    }
    const uint64_t budget = lo + rng() % (hi - lo + 1);
    const Allocation a = allocate(items, budget);
    check_consistent(items, a, budget);
    const double best = brute_force(items, budget);
    exact += a.loss == best;
    worst = std::max(worst, (a.loss - best) / std::max(best, 1e-12));
  }
  std::printf("wide buckets: %d / 200 exact, worst %.3g relative\n", exact, worst);
  EXPECT_GE(exact, 198);  // measured: 200
  EXPECT_LE(worst, 1e-3);
}

TEST(AllocateTest, BudgetBelowMinimumNamesTheRange) {
  std::vector<AllocItem> items = {{"a", {{10, 1.0}, {20, 0.5}}}, {"b", {{7, 2.0}, {30, 0.1}, {12, 1.0}}}};
  try {
    allocate(items, 16);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_NE(std::string(e.what()).find("[17, 50]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("16"), std::string::npos) << e.what();
  }
  EXPECT_EQ(allocate(items, 17).bytes, 17u);  // the lower end is reachable
}

TEST(AllocateTest, BudgetAboveMaximumTakesTheBestChoices) {
  // Item b's largest choice (30 bytes) is not its best: 12 bytes reach loss 0.05.
  std::vector<AllocItem> items = {{"a", {{10, 1.0}, {20, 0.5}}}, {"b", {{7, 2.0}, {30, 0.1}, {12, 0.05}}}};
  const Allocation a = allocate(items, 1000);
  EXPECT_EQ(a.choice, (std::vector<int>{1, 2}));
  EXPECT_EQ(a.bytes, 32u);
  EXPECT_TRUE(allocate({}, 0).choice.empty());
}

TEST(AllocateTest, NeverPicksADominatedChoice) {
  // Choice 1 of each item costs more and loses more than choice 2; equal-loss choice 3 is larger.
  std::vector<AllocItem> items;
  for (int i = 0; i < 20; ++i)
    items.push_back({"t", {{100, 5.0}, {300, 4.0}, {250, 1.0}, {400, 1.0}}});
  for (uint64_t budget = 2000; budget <= 9000; budget += 137) check_consistent(items, allocate(items, budget), budget);
}

TEST(AllocateTest, RejectsBadItems) {
  EXPECT_THROW(allocate({{"empty", {}}}, 100), Error);
  EXPECT_THROW(allocate({{"nan", {{1, NAN}}}}, 100), Error);
  try {
    allocate({{"blk.0.attn_q", {}}}, 100);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("blk.0.attn_q"), std::string::npos) << e.what();
  }
}

// Realistic: n tensors of 2e4..2e7 weights, 15 formats from 2.5 to 32 bits per weight; the loss
// falls about 4x per extra bit (MSE of uniform quantization), scaled by a per-tensor sensitivity
// and ±30 % noise, so the curves are convex-ish but not exactly convex.
std::vector<AllocItem> realistic(int n, uint64_t seed) {
  static const double kBpw[] = {2.5, 3.0, 3.5, 4.0, 4.125, 4.25, 4.5, 5.0, 5.5, 6.5, 8.125, 8.25, 8.5, 16, 32};
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0, 1);
  std::vector<AllocItem> items(n);
  for (int i = 0; i < n; ++i) {
    items[i].name = "blk." + std::to_string(i / 7) + ".t" + std::to_string(i % 7);
    const double elems = 2e4 * std::pow(1000.0, u(rng));
    const double sens = std::pow(100.0, u(rng));
    for (double b : kBpw)
      items[i].choices.push_back({static_cast<uint64_t>(elems * b / 8), sens * elems * std::pow(2.0, -2 * b) * (0.7 + 0.6 * u(rng))});
  }
  return items;
}

struct Lagrange {
  double best_feasible = INFINITY;  // least loss of a mix argmin_j l + λ·b that fits
  double lower_bound = -INFINITY;   // max over λ of Σ min_j (l + λ·b) - λ·budget
};

Lagrange lagrange(const std::vector<AllocItem>& items, uint64_t budget) {
  Lagrange r;
  auto eval = [&](double lam) {
    uint64_t b = 0;
    double l = 0, dual = 0;
    for (const AllocItem& it : items) {
      size_t k = 0;
      for (size_t j = 1; j < it.choices.size(); ++j)
        if (it.choices[j].loss + lam * double(it.choices[j].bytes) < it.choices[k].loss + lam * double(it.choices[k].bytes)) k = j;
      b += it.choices[k].bytes;
      l += it.choices[k].loss;
      dual += it.choices[k].loss + lam * double(it.choices[k].bytes);
    }
    if (b <= budget) r.best_feasible = std::min(r.best_feasible, l);
    r.lower_bound = std::max(r.lower_bound, dual - lam * double(budget));
    return b <= budget;
  };
  double lo = -60, hi = 30;  // log10 λ: bytes(λ) falls as λ grows
  for (int it = 0; it < 200; ++it) {
    const double mid = 0.5 * (lo + hi);
    (eval(std::pow(10.0, mid)) ? hi : lo) = mid;
  }
  return r;
}

TEST(AllocateTest, RealisticInstanceFillsTheBudgetAndBeatsTheLagrangian) {
  int checked = 0;
  for (int n : {60, 150, 300}) {
    const std::vector<AllocItem> items = realistic(n, 77 + n);
    uint64_t lo = 0, hi = 0;
    for (const AllocItem& it : items) lo += it.choices.front().bytes, hi += it.choices.back().bytes;
    for (double frac : {0.02, 0.1, 0.3, 0.6}) {
      const uint64_t budget = lo + static_cast<uint64_t>(frac * double(hi - lo));
      const auto t0 = std::chrono::steady_clock::now();
      const Allocation a = allocate(items, budget);
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      check_consistent(items, a, budget);
      EXPECT_GE(double(a.bytes), 0.995 * double(budget)) << "n " << n << " frac " << frac;
      const Lagrange lg = lagrange(items, budget);
      EXPECT_LE(a.loss, lg.best_feasible * (1 + 1e-12)) << "n " << n << " frac " << frac;
      EXPECT_LE(lg.lower_bound, a.loss * (1 + 1e-9));
      // The duality gap of these instances is up to ~0.3 % (a 10^6-bucket DP gets no closer).
      EXPECT_LE(a.loss - lg.lower_bound, 5e-3 * a.loss) << "n " << n << " frac " << frac;
      std::printf("n %3d frac %.2f: %.4f %% under budget, loss %.6g, Lagrangian feasible %.6g, bound %.6g, %.3f s\n", n, frac,
                  100.0 * double(budget - a.bytes) / double(budget), a.loss, lg.best_feasible, lg.lower_bound, sec);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 12);
}

TEST(AllocateTest, CoarseUnitsNeverExceedTheBudget) {
  // Many items, bytes that are not multiples of anything: the DP's unit is > 1 byte here.
  const std::vector<AllocItem> items = realistic(300, 5);
  uint64_t lo = 0;
  for (const AllocItem& it : items) lo += it.choices.front().bytes;
  std::mt19937_64 rng(9);
  for (int t = 0; t < 10; ++t) {
    const uint64_t budget = lo + rng() % (lo * 3);
    check_consistent(items, allocate(items, budget), budget);
  }
}

TEST(AllocateTest, LinearLossesStayWithinTheBudget) {
  // Loss = -bytes for every choice: every mix that fills the budget is optimal, every bound is
  // tight, so nothing is pruned and the DP must widen its buckets rather than run out of memory.
  // (Its time is printed, not asserted: speed is measured by benchmarks, not unit tests.)
  std::vector<AllocItem> items = realistic(300, 11);
  uint64_t lo = 0;
  for (AllocItem& it : items) {
    lo += it.choices.front().bytes;
    for (AllocChoice& ch : it.choices) ch.loss = -double(ch.bytes);
  }
  const uint64_t budget = lo * 3;
  const auto t0 = std::chrono::steady_clock::now();
  const Allocation a = allocate(items, budget);
  const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  check_consistent(items, a, budget);
  EXPECT_GE(double(a.bytes), 0.995 * double(budget));
  std::printf("linear losses: %.6f %% under budget, %.3f s\n", 100.0 * double(budget - a.bytes) / double(budget), sec);
}

TEST(SizeArgTest, AcceptsBytesAndBinarySuffixes) {
  EXPECT_EQ(parse_size_arg("123456"), 123456u);
  EXPECT_EQ(parse_size_arg("64K"), 64u << 10);
  EXPECT_EQ(parse_size_arg("300M"), 300ull << 20);
  EXPECT_EQ(parse_size_arg("300MB"), 300ull << 20);
  EXPECT_EQ(parse_size_arg("300MiB"), 300ull << 20);
  EXPECT_EQ(parse_size_arg("300mib"), 300ull << 20);
  EXPECT_EQ(parse_size_arg("1.5G"), 3ull << 29);
  EXPECT_EQ(parse_size_arg("2T"), 2ull << 40);
  EXPECT_EQ(parse_size_arg("4096B"), 4096u);
  EXPECT_EQ(parse_size_arg("0.5K"), 512u);
  EXPECT_EQ(parse_size_arg("0.001K"), 1u);  // 1.024 bytes, rounded down
  EXPECT_EQ(parse_size_arg("18446744073709551615"), UINT64_MAX);
}

TEST(SizeArgTest, RejectsGarbageNamingTheForms) {
  for (const char* bad : {"", "abc", "-5", "-5M", "0", "0K", "0.0001K", "1.5", "12X", "3MBB", "1e9", " 5", "5 M", "18446744073709551616",
                          "16777216T", "1.2.3M", "."}) {
    try {
      parse_size_arg(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      EXPECT_NE(std::string(e.what()).find("300MiB"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("1024"), std::string::npos) << e.what();
    }
  }
}

// ---- Recipes ----


// The message of the Error that `f` throws ("" when it throws none).
template <class F>
std::string error_of(F f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

bool has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

TEST(RecipeTest, ParsesRulesInFileOrder) {
  const Recipe r = parse_recipe(R"({"default": "q4_g32",
      "tensors": {"output": "q8_g32", "blk.*.ffn_down": "q6_g32", "blk.1?.*": "q3_g32", "blk.*": "q5_g32"}})",
                                "r.json");
  ASSERT_EQ(r.rules.size(), 4u);
  EXPECT_EQ(r.rules[0].first, "output");
  EXPECT_EQ(r.rules[1].first, "blk.*.ffn_down");  // not alphabetical: the file's order
  EXPECT_EQ(r.rules[3].first, "blk.*");
  EXPECT_EQ(r.default_format, QType::kQ4G32);
  EXPECT_EQ(recipe_format(r, "output"), QType::kQ8G32);
  EXPECT_EQ(recipe_format(r, "blk.12.ffn_down"), QType::kQ6G32);  // first matching glob
  EXPECT_EQ(recipe_format(r, "blk.12.attn_q"), QType::kQ3G32);
  EXPECT_EQ(recipe_format(r, "blk.2.attn_q"), QType::kQ5G32);
  EXPECT_EQ(recipe_format(r, "tok_embd"), QType::kQ4G32);  // the default
  EXPECT_FALSE(recipe_format(parse_recipe(R"({"tensors": {"output": "f16"}})", "r"), "tok_embd").has_value());
}

TEST(RecipeTest, ExactRuleBeatsAnEarlierGlob) {
  const Recipe r = parse_recipe(R"({"tensors": {"blk.*": "q4_g32", "blk.3.attn_v": "q8_g32"}})", "r");
  EXPECT_EQ(recipe_format(r, "blk.3.attn_v"), QType::kQ8G32);
  EXPECT_EQ(recipe_format(r, "blk.3.attn_k"), QType::kQ4G32);
}

TEST(RecipeTest, GlobMatching) {
  EXPECT_TRUE(recipe_glob_match("*", ""));
  EXPECT_TRUE(recipe_glob_match("blk.*.attn_?", "blk.10.attn_q"));
  EXPECT_FALSE(recipe_glob_match("blk.*.attn_?", "blk.10.attn_norm"));
  EXPECT_TRUE(recipe_glob_match("blk.1*", "blk.12.ffn_up"));  // '*' crosses dots
  EXPECT_TRUE(recipe_glob_match("*down", "blk.0.ffn_down"));
  EXPECT_FALSE(recipe_glob_match("*down", "blk.0.ffn_down_x"));
  EXPECT_TRUE(recipe_glob_match("a*b*c", "aXbYbZc"));
  EXPECT_FALSE(recipe_glob_match("a*b*c", "aXbYbZ"));
  EXPECT_FALSE(recipe_glob_match("?", ""));
  EXPECT_TRUE(recipe_glob_match("**?", "x"));
}

TEST(RecipeTest, ErrorsNameFileKeyAndAllowedValues) {
  std::string m = error_of([] { parse_recipe("{\"default\": \"q4_g32\",", "bad.json"); });
  EXPECT_TRUE(has(m, "bad.json") && has(m, "not valid JSON")) << m;
  m = error_of([] { parse_recipe(R"({"default": "q4_g33"})", "bad.json"); });
  EXPECT_TRUE(has(m, "bad.json") && has(m, "q4_g33") && has(m, "q4_g32") && has(m, "nu3_g32") && has(m, "default")) << m;
  m = error_of([] { parse_recipe(R"({"tensors": {"output": 8}})", "bad.json"); });
  EXPECT_TRUE(has(m, "output") && has(m, "string") && has(m, "q8_g32")) << m;
  m = error_of([] { parse_recipe(R"({"tensors": {"output": "q8"}})", "bad.json"); });
  EXPECT_TRUE(has(m, "output") && has(m, "'q8'") && has(m, "q8_g32")) << m;
  m = error_of([] { parse_recipe(R"({"defaults": "q4_g32"})", "bad.json"); });
  EXPECT_TRUE(has(m, "\"defaults\"") && has(m, "\"default\", \"tensors\"")) << m;
  m = error_of([] { parse_recipe("{}", "bad.json"); });
  EXPECT_TRUE(has(m, "empty")) << m;
  m = error_of([] { parse_recipe(R"({"tensors": {}})", "bad.json"); });
  EXPECT_TRUE(has(m, "empty")) << m;
  m = error_of([] { parse_recipe(R"(["q4_g32"])", "bad.json"); });
  EXPECT_TRUE(has(m, "object")) << m;
  m = error_of([] { parse_recipe(R"({"tensors": "q4_g32"})", "bad.json"); });
  EXPECT_TRUE(has(m, "\"tensors\" must be an object")) << m;
  m = error_of([] { parse_recipe(R"({"tensors": {"output": "q8_g32", "output": "q4_g32"}})", "bad.json"); });
  EXPECT_TRUE(has(m, "duplicate") && has(m, "output")) << m;
  m = error_of([] { parse_recipe(R"({"tensors": {"": "q8_g32"}})", "bad.json"); });
  EXPECT_TRUE(has(m, "empty tensor name")) << m;
}

TEST(RecipeTest, CheckRejectsRulesThatMatchNothing) {
  const std::vector<std::string> names = {"tok_embd", "output_norm", "output", "blk.0.attn_q", "blk.0.ffn_down",
                                          "blk.1.attn_q", "blk.1.ffn_down"};
  check_recipe(parse_recipe(R"({"tensors": {"blk.*.ffn_down": "q6_g32", "output": "q8_g32"}})", "ok.json"), names, "ok.json");
  const std::string m = error_of([&] {
    check_recipe(parse_recipe(R"({"tensors": {"output": "q8_g32", "blk.*.ffn_down.weight": "q6_g32"}})", "typo.json"), names,
                 "typo.json");
  });
  EXPECT_TRUE(has(m, "typo.json") && has(m, "blk.*.ffn_down.weight") && has(m, "blk.*.attn_q") && has(m, "tok_embd")) << m;
  EXPECT_TRUE(has(m, "e.g. blk.1.ffn_down")) << m;  // layers folded into '*', one real name shown
}

TEST(RecipeTest, ToJsonRoundTrips) {
  const std::vector<std::pair<std::string, QType>> mix = {
      {"tok_embd", QType::kQ6G32}, {"blk.0.attn_q", QType::kQ4G32}, {"blk.0.ffn_down", QType::kNU3G32}, {"output", QType::kQ8G32},
      {"a\"quote\\", QType::kBF16}};
  const std::string text = recipe_to_json(mix);
  const Recipe r = parse_recipe(text, "dry-run");
  EXPECT_EQ(r.rules, mix) << text;
  EXPECT_FALSE(r.default_format.has_value());
  for (const auto& [name, q] : mix) EXPECT_EQ(recipe_format(r, name), q);
  EXPECT_THROW(recipe_to_json({}), Error);
  EXPECT_THROW(recipe_to_json({{"x", QType::kF16}, {"x", QType::kF32}}), Error);
}

}  // namespace
}  // namespace mxlm
