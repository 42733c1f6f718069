// HTML reports (model/report.h): self-contained, balanced tags, every label present and escaped,
// one marker per point, and the Δppl axis log-scaled exactly when the range spans > 20x.
#include "model/report.h"

#include <gtest/gtest.h>

#include <cmath>

namespace mxlm {
namespace {

size_t count(const std::string& s, const std::string& part) {
  size_t n = 0;
  for (size_t p = s.find(part); p != std::string::npos; p = s.find(part, p + part.size())) ++n;
  return n;
}

// Balanced enough for a browser: each container tag closes as often as it opens, nothing is
// fetched from elsewhere and no script runs.
void expect_self_contained(const std::string& html) {
  for (const char* tag : {"svg", "table", "tr", "title", "text", "g", "p", "div", "style", "html", "body", "head"}) {
    const std::string open = std::string("<") + tag;
    size_t opens = 0;  // "<svg" or "<svg>", not "<g" matching "<genre"
    for (size_t p = html.find(open); p != std::string::npos; p = html.find(open, p + 1)) {
      const char next = p + open.size() < html.size() ? html[p + open.size()] : '\0';
      if (next == ' ' || next == '>' || next == '\n') ++opens;
    }
    EXPECT_EQ(opens, count(html, std::string("</") + tag + ">")) << tag;
  }
  EXPECT_EQ(count(html, "<script"), 0u);
  EXPECT_EQ(count(html, "<link"), 0u);
  EXPECT_EQ(count(html, "http://"), count(html, "xmlns=\"http://www.w3.org/2000/svg\""));  // no fetched URLs
  EXPECT_EQ(count(html, "https://"), 0u);
  EXPECT_EQ(html.rfind("<!DOCTYPE html>", 0), 0u);
}

std::vector<ParetoPoint> sample_points() {
  return {{"q2_g32", 2.5, 180.0, false}, {"q3_g32", 3.5, 21.0, false}, {"q4_g32", 4.5, 4.1, false},
          {"q4_g128", 4.125, 5.3, false}, {"q6_g32", 6.5, 0.6, false},  {"q8_g32", 8.5, 0.05, false},
          {"mix 3.0", 3.0, 30.0, true},   {"mix 4.0", 4.0, 3.9, true},   {"mix 4.2 bad", 4.2, 6.0, true},
          {"mix <&>", 5.0, 1.2, true}};
}

TEST(ReportTest, ParetoPageIsSelfContainedAndLabelsEveryPoint) {
  const std::vector<ParetoPoint> pts = sample_points();
  const std::string md = "| format | bpw | dppl % |\n|---|---:|---:|\n| q4_g32 | 4.5 | 4.1 |\n| mix <&> | 5.0 | 1.2 |\n\nmeasured on wiki.test";
  const std::string html = pareto_html("Pareto <test> & more", pts, md);
  expect_self_contained(html);
  for (const ParetoPoint& p : pts) EXPECT_NE(html.find(html_escape(p.label)), std::string::npos) << p.label;
  EXPECT_NE(html.find("mix &lt;&amp;&gt;"), std::string::npos);
  EXPECT_EQ(html.find("mix <&>"), std::string::npos);
  EXPECT_NE(html.find("Pareto &lt;test&gt; &amp; more"), std::string::npos);
  EXPECT_EQ(count(html, "class=\"pt "), pts.size());
  EXPECT_EQ(count(html, "class=\"pt mixed\""), 4u);
  EXPECT_EQ(count(html, "class=\"pt uniform\""), 6u);
  EXPECT_EQ(count(html, "<polyline class=\"front mixed\""), 1u);
  EXPECT_EQ(count(html, "<polyline class=\"front uniform\""), 1u);
  // "mix 4.2 bad" (4.2 bpw, 6 %) is beaten by "mix 4.0" on both axes; q4_g32 is not beaten by
  // any uniform format (q4_g128 has fewer bits but more loss).
  EXPECT_NE(html.find("mix 4.2 bad: 4.200 bpw, &#916;ppl 6 % (dominated)"), std::string::npos);
  EXPECT_NE(html.find("q4_g32: 4.500 bpw, &#916;ppl 4.1 %</title>"), std::string::npos);
  // The table: a header row, two data rows, the note as a paragraph.
  EXPECT_NE(html.find("<th>format</th><th>bpw</th><th>dppl %</th>"), std::string::npos);
  EXPECT_NE(html.find("<td>mix &lt;&amp;&gt;</td>"), std::string::npos);
  EXPECT_NE(html.find("<p>measured on wiki.test</p>"), std::string::npos);
  EXPECT_EQ(count(html, "<tr>"), 3u);
  EXPECT_NE(html.find("allocated mix"), std::string::npos);  // legend
  EXPECT_NE(html.find("uniform format"), std::string::npos);
}

TEST(ReportTest, LogScaleExactlyWhenTheRangeSpansMoreThan20x) {
  const std::vector<ParetoPoint> wide = sample_points();  // 0.05 .. 180 %
  EXPECT_NE(pareto_html("t", wide, "").find("data-yscale=\"log\""), std::string::npos);
  EXPECT_NE(pareto_html("t", wide, "").find("(log scale)"), std::string::npos);
  const std::vector<ParetoPoint> narrow = {{"a", 4, 1.0, false}, {"b", 5, 19.0, true}};  // 19x
  EXPECT_NE(pareto_html("t", narrow, "").find("data-yscale=\"linear\""), std::string::npos);
  const std::vector<ParetoPoint> just_over = {{"a", 4, 1.0, false}, {"b", 5, 21.0, true}};
  EXPECT_NE(pareto_html("t", just_over, "").find("data-yscale=\"log\""), std::string::npos);
  // A non-positive Δppl cannot go on a log axis.
  const std::vector<ParetoPoint> negative = {{"a", 4, -0.1, false}, {"b", 2, 50.0, true}, {"c", 8, 0.01, true}};
  const std::string h = pareto_html("t", negative, "");
  EXPECT_NE(h.find("data-yscale=\"linear\""), std::string::npos);
  EXPECT_EQ(count(h, "class=\"pt "), 3u);
  expect_self_contained(h);
}

TEST(ReportTest, ParetoEdgeCases) {
  std::string h = pareto_html("empty", {}, "");
  expect_self_contained(h);
  EXPECT_NE(h.find("no points"), std::string::npos);
  h = pareto_html("one", {{"only", 4.5, 3.0, false}}, "");
  expect_self_contained(h);
  EXPECT_EQ(count(h, "class=\"pt "), 1u);
  h = pareto_html("nan", {{"ok", 4.5, 3.0, false}, {"broken", NAN, 3.0, true}}, "");
  expect_self_contained(h);
  EXPECT_EQ(count(h, "class=\"pt "), 1u);
  EXPECT_NE(h.find("Not plotted"), std::string::npos);
  EXPECT_NE(h.find("broken"), std::string::npos);
  EXPECT_EQ(h.find("nan\""), std::string::npos);  // no NaN coordinates
}

TEST(ReportTest, HeatmapHasThreePanelsAndATooltipPerCell) {
  std::vector<HeatCell> cells;
  const char* names[] = {"attn_q", "attn_k", "attn_v", "attn_o", "ffn_gate", "ffn_up", "ffn_down"};
  for (int l = 0; l < 4; ++l)
    for (int t = 0; t < 7; ++t)
      cells.push_back({l, "blk." + std::to_string(l) + "." + names[t], t == 6 ? "q6_g32" : "q4_g32", t == 6 ? 6.5 : 4.5,
                       std::pow(10.0, -l - t * 0.3), static_cast<uint64_t>(1000 + 4096 * t)});
  cells.push_back({-1, "tok_embd", "q8_g32", 8.5, 1e-4, 50u << 20});
  cells.push_back({-1, "output", "q6_g32", 6.5, 2e-3, 40u << 20});
  cells.push_back({2, "weird<&>", "f16", 16, 0, 77});  // an unknown tensor gets its own column; loss 0 on a log scale
  const std::string html = heatmap_html("Heat <map>", cells);
  expect_self_contained(html);
  EXPECT_EQ(count(html, "<svg"), 3u);
  EXPECT_EQ(count(html, "<rect x=") - count(html, "fill=\"#f4f4f4\"/>") - 3 /* colour bars */, 3 * cells.size());
  EXPECT_NE(html.find("layer 3 blk.3.ffn_down: q6_g32, 6.500 bpw"), std::string::npos);
  EXPECT_NE(html.find("<title>tok_embd: q8_g32"), std::string::npos);
  EXPECT_NE(html.find(">embd / head</text>"), std::string::npos);
  EXPECT_NE(html.find(">50.0 MiB</text>"), std::string::npos);
  EXPECT_NE(html.find(">6.50</text>"), std::string::npos);
  EXPECT_NE(html.find("weird&lt;&amp;&gt;"), std::string::npos);
  EXPECT_EQ(html.find("weird<&>"), std::string::npos);
  EXPECT_NE(html.find("Heat &lt;map&gt;"), std::string::npos);
  for (const char* col : {">q</text>", ">k</text>", ">v</text>", ">o</text>", ">gate</text>", ">up</text>", ">down</text>",
                          ">embd</text>", ">head</text>"})
    EXPECT_EQ(count(html, col), 3u) << col;
  // Rows: embd / head first, then layers 0..3.
  EXPECT_LT(html.find("embd / head"), html.find("layer 0</text>"));
  EXPECT_LT(html.find("layer 0</text>"), html.find("layer 3</text>"));
  expect_self_contained(heatmap_html("empty", {}));
}

}  // namespace
}  // namespace mxlm
