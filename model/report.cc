// HTML/SVG report writers (report.h).
//
// Plot geometry: a W×H SVG with margins; data maps linearly to the inner box, y (Δppl) through
// log10 when log-scaled. Ticks are "nice" steps 1/2/5·10^k aiming at ~6 per axis; a log axis
// ticks at each power of ten, and at 2 and 5 times it when the axis spans < 3 decades (otherwise
// one or two ticks would be all there is).
//
// Why log y only above a 20x spread: Δppl of 2-bit formats is 10-100x that of 6-bit ones, and on
// a linear axis every format above 4 bits then sits on the zero line. Below 20x a linear axis
// reads more naturally and can show 0 and negative values (a mix can beat the base model by noise).
//
// Colours: a 5-stop viridis-like ramp (dark blue -> yellow), perceptually ordered and readable in
// grey; cell text switches to white on dark cells (relative luminance < 0.45).
#include "model/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>

namespace mxlm {
namespace {

std::string num(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

// Coordinates in the SVG: one decimal is plenty at screen resolution.
std::string px(double v) { return num("%.1f", v); }

std::string human_bytes(uint64_t b) {
  const char* units[] = {"B", "K", "M", "G", "T"};
  double v = double(b);
  int u = 0;
  while (v >= 1024 && u < 4) v /= 1024, ++u;
  return u == 0 ? std::to_string(b) + " B" : num(v < 10 ? "%.2f" : v < 100 ? "%.1f" : "%.0f", v) + " " + units[u] + "iB";
}

const char* kPageStyle =
    "body{font-family:sans-serif;margin:24px;color:#222;background:#fff}"
    "h1{font-size:20px}h2{font-size:16px;margin:18px 0 6px}"
    "table{border-collapse:collapse;margin-top:16px;font-size:13px}"
    "th,td{border:1px solid #bbb;padding:3px 8px;text-align:left}th{background:#eee}"
    "svg{display:block;margin:8px 0}svg text{font-family:sans-serif}"
    ".note{color:#a00;font-size:13px}.panels{display:flex;flex-wrap:wrap;gap:24px}";

std::string page_begin(const std::string& title) {
  return "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + html_escape(title) +
         "</title>\n<style>" + kPageStyle + "</style>\n</head>\n<body>\n<h1>" + html_escape(title) + "</h1>\n";
}

const char* kPageEnd = "</body>\n</html>\n";

// Splits a markdown table row "| a | b |" into trimmed cells.
std::vector<std::string> md_cells(const std::string& line) {
  std::string s = line;
  auto trim = [](std::string t) {
    const size_t a = t.find_first_not_of(" \t\r"), b = t.find_last_not_of(" \t\r");
    return a == std::string::npos ? std::string() : t.substr(a, b - a + 1);
  };
  s = trim(s);
  if (!s.empty() && s.front() == '|') s.erase(0, 1);
  if (!s.empty() && s.back() == '|') s.pop_back();
  std::vector<std::string> out;
  std::string cur;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == '|') cur += '|', ++i;  // "\|" is a literal bar
    else if (s[i] == '|') out.push_back(trim(cur)), cur.clear();
    else cur += s[i];
  }
  out.push_back(trim(cur));
  return out;
}

bool md_separator(const std::vector<std::string>& cells) {
  for (const std::string& c : cells)
    if (c.empty() || c.find_first_not_of("-: ") != std::string::npos) return false;
  return true;
}

// Markdown tables -> <table>; a row of dashes after the first row makes it the header. Other
// non-blank lines become <p>. Everything is escaped; no other markdown is interpreted.
std::string markdown_to_html(const std::string& md) {
  std::vector<std::string> lines;
  size_t pos = 0;
  while (pos <= md.size()) {
    const size_t e = md.find('\n', pos);
    lines.push_back(md.substr(pos, e == std::string::npos ? std::string::npos : e - pos));
    if (e == std::string::npos) break;
    pos = e + 1;
  }
  std::string out;
  for (size_t i = 0; i < lines.size();) {
    const std::string& l = lines[i];
    const size_t first = l.find_first_not_of(" \t\r");
    if (first == std::string::npos) {
      ++i;
      continue;
    }
    if (l[first] != '|') {
      out += "<p>" + html_escape(l.substr(first)) + "</p>\n";
      ++i;
      continue;
    }
    std::vector<std::vector<std::string>> rows;
    while (i < lines.size()) {
      const size_t f = lines[i].find_first_not_of(" \t\r");
      if (f == std::string::npos || lines[i][f] != '|') break;
      rows.push_back(md_cells(lines[i++]));
    }
    const bool header = rows.size() >= 2 && md_separator(rows[1]);
    out += "<table>\n";
    for (size_t r = 0; r < rows.size(); ++r) {
      if (header && r == 1) continue;
      const char* tag = header && r == 0 ? "th" : "td";
      out += "<tr>";
      for (const std::string& c : rows[r]) out += std::string("<") + tag + ">" + html_escape(c) + "</" + tag + ">";
      out += "</tr>\n";
    }
    out += "</table>\n";
  }
  return out;
}

// "Nice" ticks covering [lo, hi]: multiples of 1, 2 or 5 times a power of ten, about n of them.
std::vector<double> nice_ticks(double lo, double hi, int n) {
  const double raw = (hi - lo) / n;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) t.push_back(std::abs(v) < 1e-12 * step ? 0.0 : v);
  return t;
}

struct Rgb {
  double r, g, b;
};

// t in [0, 1] -> a viridis-like ramp.
Rgb ramp(double t) {
  static const Rgb kStops[] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  t = std::clamp(std::isfinite(t) ? t : 0.0, 0.0, 1.0) * 4;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  const Rgb& a = kStops[i];
  const Rgb& b = kStops[i + 1];
  return {a.r + f * (b.r - a.r), a.g + f * (b.g - a.g), a.b + f * (b.b - a.b)};
}

std::string hex(const Rgb& c) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", int(std::lround(c.r)), int(std::lround(c.g)), int(std::lround(c.b)));
  return buf;
}

bool dark(const Rgb& c) { return (0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b) / 255 < 0.45; }

}  // namespace

std::string html_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char ch : s) {
    switch (ch) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += ch;
    }
  }
  return o;
}

std::string pareto_html(const std::string& title, const std::vector<ParetoPoint>& pts, const std::string& table_markdown) {
  const double W = 820, H = 500, L = 80, R = 190, T = 30, B = 60;  // R leaves room for the legend
  const double pw = W - L - R, ph = H - T - B;
  std::vector<ParetoPoint> ok;
  std::vector<std::string> skipped;
  for (const ParetoPoint& p : pts) {
    if (std::isfinite(p.bpw) && std::isfinite(p.dppl_percent)) ok.push_back(p);
    else skipped.push_back(p.label);
  }
  std::string out = page_begin(title);
  double xlo = 0, xhi = 1, ylo = 0, yhi = 1;
  bool log_y = false;
  if (!ok.empty()) {
    xlo = xhi = ok[0].bpw;
    ylo = yhi = ok[0].dppl_percent;
    for (const ParetoPoint& p : ok) {
      xlo = std::min(xlo, p.bpw), xhi = std::max(xhi, p.bpw);
      ylo = std::min(ylo, p.dppl_percent), yhi = std::max(yhi, p.dppl_percent);
    }
    log_y = ylo > 0 && yhi / ylo > 20;
    if (xhi - xlo < 1e-9) xlo -= 0.5, xhi += 0.5;
    const double xp = 0.06 * (xhi - xlo);
    xlo -= xp, xhi += xp;
    if (log_y) {
      ylo = std::log10(ylo), yhi = std::log10(yhi);
      const double yp = 0.06 * (yhi - ylo);
      ylo -= yp, yhi += yp;
    } else {
      ylo = std::min(ylo, 0.0), yhi = std::max(yhi, 0.0);
      if (yhi - ylo < 1e-12) yhi = ylo + 1;
      const double yp = 0.06 * (yhi - ylo);
      yhi += yp;
      if (ylo < 0) ylo -= yp;
    }
  }
  auto X = [&](double v) { return L + (v - xlo) / (xhi - xlo) * pw; };
  auto Y = [&](double v) { return T + ph - ((log_y ? std::log10(v) : v) - ylo) / (yhi - ylo) * ph; };

  out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + px(W) + "\" height=\"" + px(H) + "\" viewBox=\"0 0 " + px(W) +
         " " + px(H) + "\" data-yscale=\"" + (log_y ? "log" : "linear") + "\" role=\"img\">\n";
  out += "<title>" + html_escape(title) + "</title>\n";
  out += "<rect x=\"" + px(L) + "\" y=\"" + px(T) + "\" width=\"" + px(pw) + "\" height=\"" + px(ph) +
         "\" fill=\"none\" stroke=\"#888\"/>\n";
  if (ok.empty()) {
    out += "<text x=\"" + px(L + pw / 2) + "\" y=\"" + px(T + ph / 2) + "\" text-anchor=\"middle\">no points</text>\n";
  } else {
    // Grid and ticks.
    for (double v : nice_ticks(xlo, xhi, 8)) {
      const std::string x = px(X(v));
      out += "<line x1=\"" + x + "\" y1=\"" + px(T) + "\" x2=\"" + x + "\" y2=\"" + px(T + ph) + "\" stroke=\"#eee\"/>";
      out += "<text x=\"" + x + "\" y=\"" + px(T + ph + 16) + "\" font-size=\"11\" text-anchor=\"middle\">" + num("%g", v) +
             "</text>\n";
    }
    std::vector<double> yt;
    if (log_y) {
      const bool fine = yhi - ylo < 3;
      for (int e = static_cast<int>(std::floor(ylo)); e <= static_cast<int>(std::ceil(yhi)); ++e)
        for (double m : {1.0, 2.0, 5.0}) {
          const double v = m * std::pow(10.0, e);
          if ((m == 1.0 || fine) && std::log10(v) >= ylo && std::log10(v) <= yhi) yt.push_back(v);
        }
    } else {
      yt = nice_ticks(ylo, yhi, 6);
    }
    for (double v : yt) {
      const std::string y = px(Y(v));
      out += "<line x1=\"" + px(L) + "\" y1=\"" + y + "\" x2=\"" + px(L + pw) + "\" y2=\"" + y + "\" stroke=\"" +
             (v == 0 && !log_y ? "#999" : "#eee") + "\"/>";
      out += "<text x=\"" + px(L - 6) + "\" y=\"" + px(Y(v) + 4) + "\" font-size=\"11\" text-anchor=\"end\">" + num("%g", v) +
             "</text>\n";
    }
    out += "<text x=\"" + px(L + pw / 2) + "\" y=\"" + px(H - 18) + "\" font-size=\"13\" text-anchor=\"middle\">bits per weight</text>\n";
    out += "<text transform=\"translate(18 " + px(T + ph / 2) + ") rotate(-90)\" font-size=\"13\" text-anchor=\"middle\">" +
           std::string(log_y ? "&#916;ppl % (log scale)" : "&#916;ppl %") + "</text>\n";

    // Pareto fronts, one per kind: sorted by bits, a point is on the front when its Δppl is
    // strictly below every point with fewer bits (ties in bits: the lower Δppl first).
    const char* kColor[2] = {"#1f77b4", "#d62728"};  // uniform, mixed
    std::vector<bool> on_front(ok.size(), false);
    for (int kind = 0; kind < 2; ++kind) {
      std::vector<size_t> idx;
      for (size_t i = 0; i < ok.size(); ++i)
        if (ok[i].mixed == (kind == 1)) idx.push_back(i);
      std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
        return ok[a].bpw != ok[b].bpw ? ok[a].bpw < ok[b].bpw : ok[a].dppl_percent < ok[b].dppl_percent;
      });
      std::string poly;
      double best = INFINITY;
      for (size_t i : idx) {
        if (ok[i].dppl_percent < best) {
          best = ok[i].dppl_percent;
          on_front[i] = true;
          poly += (poly.empty() ? "" : " ") + px(X(ok[i].bpw)) + "," + px(Y(ok[i].dppl_percent));
        }
      }
      if (!poly.empty())
        out += std::string("<polyline class=\"front ") + (kind ? "mixed" : "uniform") + "\" points=\"" + poly +
               "\" fill=\"none\" stroke=\"" + kColor[kind] + "\" stroke-width=\"1.5\"/>\n";
    }
    // Labels: each at the first of six spots around its marker that overlaps no marker, no label
    // placed before and stays inside the box; else at the spot with the least overlap. Front
    // points are placed first. Text extent is estimated (6 px per character at 11 px).
    struct Box {
      double x0, y0, x1, y1;
    };
    auto overlap = [](const Box& a, const Box& b) {
      const double w = std::min(a.x1, b.x1) - std::max(a.x0, b.x0), h = std::min(a.y1, b.y1) - std::max(a.y0, b.y0);
      return w > 0 && h > 0 ? w * h : 0.0;
    };
    std::vector<Box> taken;
    for (const ParetoPoint& p : ok) taken.push_back({X(p.bpw) - 6, Y(p.dppl_percent) - 6, X(p.bpw) + 6, Y(p.dppl_percent) + 6});
    std::vector<size_t> order;
    for (int pass = 0; pass < 2; ++pass)
      for (size_t i = 0; i < ok.size(); ++i)
        if (on_front[i] == (pass == 0)) order.push_back(i);
    struct Spot {
      double dx, dy;
      const char* anchor;
    };
    static const Spot kSpots[] = {{7, -7, "start"}, {7, 15, "start"}, {-7, -7, "end"}, {-7, 15, "end"}, {0, -10, "middle"}, {0, 20, "middle"}};
    std::vector<std::string> label_svg(ok.size());
    for (size_t i : order) {
      const double x = X(ok[i].bpw), y = Y(ok[i].dppl_percent), w = 6.0 * double(ok[i].label.size()) + 2;
      double best_cost = INFINITY;
      Box best_box{};
      const Spot* best = &kSpots[0];
      for (const Spot& sp : kSpots) {
        const double lx = x + sp.dx, ly = y + sp.dy;  // text baseline
        const double x0 = sp.anchor[0] == 's' ? lx : sp.anchor[0] == 'e' ? lx - w : lx - w / 2;
        const Box b{x0, ly - 10, x0 + w, ly + 2};
        double cost = 0;
        for (const Box& t : taken) cost += overlap(b, t);
        if (b.x0 < L || b.x1 > L + pw || b.y0 < T || b.y1 > T + ph) cost += 1000;
        if (cost < best_cost) best_cost = cost, best_box = b, best = &sp;
        if (cost == 0) break;
      }
      taken.push_back(best_box);
      label_svg[i] = "<text class=\"lbl\" x=\"" + px(x + best->dx) + "\" y=\"" + px(y + best->dy) + "\" text-anchor=\"" + best->anchor +
                     "\" font-size=\"11\" fill=\"" + (on_front[i] ? "#222" : "#888") + "\">" + html_escape(ok[i].label) + "</text>\n";
    }
    // Markers and labels.
    for (size_t i = 0; i < ok.size(); ++i) {
      const ParetoPoint& p = ok[i];
      const double x = X(p.bpw), y = Y(p.dppl_percent);
      const std::string tip = "<title>" + html_escape(p.label) + ": " + num("%.3f", p.bpw) + " bpw, &#916;ppl " +
                              num("%.4g", p.dppl_percent) + " %" + (on_front[i] ? "" : " (dominated)") + "</title>";
      const std::string opacity = on_front[i] ? "1" : "0.45";
      if (p.mixed)
        out += "<circle class=\"pt mixed\" cx=\"" + px(x) + "\" cy=\"" + px(y) + "\" r=\"5\" fill=\"" + kColor[1] +
               "\" fill-opacity=\"" + opacity + "\">" + tip + "</circle>";
      else
        out += "<rect class=\"pt uniform\" x=\"" + px(x - 4.5) + "\" y=\"" + px(y - 4.5) +
               "\" width=\"9\" height=\"9\" fill=\"" + kColor[0] + "\" fill-opacity=\"" + opacity + "\">" + tip + "</rect>";
      out += label_svg[i];
    }
  }
  // Legend, right of the plot box.
  const double lx = L + pw + 20, ly = T + 10;
  out += "<g class=\"legend\" font-size=\"12\">";
  out += "<circle cx=\"" + px(lx + 6) + "\" cy=\"" + px(ly) + "\" r=\"5\" fill=\"#d62728\"/><text x=\"" + px(lx + 18) + "\" y=\"" +
         px(ly + 4) + "\">allocated mix</text>";
  out += "<rect x=\"" + px(lx + 1.5) + "\" y=\"" + px(ly + 20 - 4.5) + "\" width=\"9\" height=\"9\" fill=\"#1f77b4\"/><text x=\"" +
         px(lx + 18) + "\" y=\"" + px(ly + 24) + "\">uniform format</text>";
  out += "<line x1=\"" + px(lx) + "\" y1=\"" + px(ly + 40) + "\" x2=\"" + px(lx + 12) + "\" y2=\"" + px(ly + 40) +
         "\" stroke=\"#555\" stroke-width=\"1.5\"/><text x=\"" + px(lx + 18) + "\" y=\"" + px(ly + 44) + "\">Pareto front</text>";
  out += "<text x=\"" + px(lx) + "\" y=\"" + px(ly + 64) + "\" fill=\"#888\">faded: dominated</text>";
  out += "</g>\n</svg>\n";
  if (!skipped.empty()) {
    std::string s;
    for (const std::string& l : skipped) s += (s.empty() ? "" : ", ") + html_escape(l);
    out += "<p class=\"note\">Not plotted (non-finite bits or &#916;ppl): " + s + "</p>\n";
  }
  out += markdown_to_html(table_markdown);
  out += kPageEnd;
  return out;
}

namespace {

// The grid column of a tensor name (see heatmap_html in report.h).
std::string heat_column(const std::string& tensor) {
  std::string t = tensor;
  if (t.rfind("blk.", 0) == 0) {
    const size_t dot = t.find('.', 4);
    if (dot != std::string::npos && dot > 4 && t.find_first_not_of("0123456789", 4) == dot) t = t.substr(dot + 1);
  }
  const std::string suffix = ".weight";
  if (t.size() > suffix.size() && t.compare(t.size() - suffix.size(), suffix.size(), suffix) == 0) t.resize(t.size() - suffix.size());
  static const std::map<std::string, std::string> kAlias = {
      {"attn_q", "q"},       {"q_proj", "q"},        {"q", "q"},         {"attn_k", "k"},          {"k_proj", "k"},
      {"k", "k"},            {"attn_v", "v"},        {"v_proj", "v"},    {"v", "v"},               {"attn_o", "o"},
      {"attn_output", "o"},  {"o_proj", "o"},        {"o", "o"},         {"ffn_gate", "gate"},     {"gate_proj", "gate"},
      {"gate", "gate"},      {"ffn_up", "up"},       {"up_proj", "up"},  {"up", "up"},             {"ffn_down", "down"},
      {"down_proj", "down"}, {"down", "down"},       {"tok_embd", "embd"}, {"token_embd", "embd"}, {"embed_tokens", "embd"},
      {"embd", "embd"},      {"output", "head"},     {"lm_head", "head"}, {"head", "head"}};
  const auto it = kAlias.find(t);
  return it == kAlias.end() ? t : it->second;
}

}  // namespace

std::string heatmap_html(const std::string& title, const std::vector<HeatCell>& cells) {
  std::vector<std::string> cols = {"q", "k", "v", "o", "gate", "up", "down", "embd", "head"};
  std::vector<int> layers;
  std::map<std::pair<int, size_t>, const HeatCell*> grid;
  for (const HeatCell& c : cells) {
    const std::string col = heat_column(c.tensor);
    size_t ci = std::find(cols.begin(), cols.end(), col) - cols.begin();
    if (ci == cols.size()) cols.push_back(col);
    if (std::find(layers.begin(), layers.end(), c.layer) == layers.end()) layers.push_back(c.layer);
    grid[{c.layer, ci}] = &c;
  }
  std::sort(layers.begin(), layers.end());
  // Drop the standard columns that no cell uses (e.g. "head" with tied embeddings).
  std::vector<size_t> used;
  for (size_t ci = 0; ci < cols.size(); ++ci)
    for (const auto& kv : grid)
      if (kv.first.second == ci) {
        used.push_back(ci);
        break;
      }

  std::string out = page_begin(title);
  if (cells.empty()) return out + "<p>no cells</p>\n" + kPageEnd;
  out += "<div class=\"panels\">\n";
  struct Panel {
    const char* name;
    bool log;
  };
  const Panel panels[3] = {{"bits per weight", false}, {"predicted loss (log colour scale)", true}, {"bytes (log colour scale)", true}};
  const double cw = 66, ch = 20, lw = 78, top = 44, barh = 40;
  for (int pi = 0; pi < 3; ++pi) {
    auto value = [pi](const HeatCell& c) { return pi == 0 ? c.bits : pi == 1 ? c.predicted_loss : double(c.bytes); };
    auto label = [pi](const HeatCell& c) {
      return pi == 0 ? num("%.2f", c.bits) : pi == 1 ? num("%.2g", c.predicted_loss) : human_bytes(c.bytes);
    };
    // Colour scale over the finite values (positive ones on a log scale; others get the bottom colour).
    double lo = INFINITY, hi = -INFINITY;
    for (const HeatCell& c : cells) {
      double v = value(c);
      if (!std::isfinite(v) || (panels[pi].log && v <= 0)) continue;
      if (panels[pi].log) v = std::log10(v);
      lo = std::min(lo, v), hi = std::max(hi, v);
    }
    auto shade = [&](const HeatCell& c) {
      double v = value(c);
      if (!std::isfinite(v) || (panels[pi].log && v <= 0) || !std::isfinite(lo)) return ramp(0);
      if (panels[pi].log) v = std::log10(v);
      return ramp(hi > lo ? (v - lo) / (hi - lo) : 0.5);
    };
    const double W = lw + cw * double(used.size()) + 10, H = top + ch * double(layers.size()) + barh + 10;
    out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + px(W) + "\" height=\"" + px(H) + "\" viewBox=\"0 0 " + px(W) +
           " " + px(H) + "\" font-size=\"10\">\n";
    out += "<text x=\"2\" y=\"14\" font-size=\"13\" font-weight=\"bold\">" + std::string(panels[pi].name) + "</text>\n";
    for (size_t k = 0; k < used.size(); ++k)
      out += "<text x=\"" + px(lw + cw * (double(k) + 0.5)) + "\" y=\"" + px(top - 6) + "\" text-anchor=\"middle\">" +
             html_escape(cols[used[k]]) + "</text>";
    out += "\n";
    for (size_t r = 0; r < layers.size(); ++r) {
      const double y = top + ch * double(r);
      out += "<text x=\"" + px(lw - 6) + "\" y=\"" + px(y + ch / 2 + 3.5) + "\" text-anchor=\"end\">" +
             (layers[r] < 0 ? std::string("embd / head") : "layer " + std::to_string(layers[r])) + "</text>";
      for (size_t k = 0; k < used.size(); ++k) {
        const double x = lw + cw * double(k);
        const auto it = grid.find({layers[r], used[k]});
        if (it == grid.end()) {
          out += "<rect x=\"" + px(x) + "\" y=\"" + px(y) + "\" width=\"" + px(cw - 1) + "\" height=\"" + px(ch - 1) +
                 "\" fill=\"#f4f4f4\"/>";
          continue;
        }
        const HeatCell& c = *it->second;
        const Rgb col = shade(c);
        const std::string where = c.layer < 0 ? c.tensor : "layer " + std::to_string(c.layer) + " " + c.tensor;
        out += "<rect x=\"" + px(x) + "\" y=\"" + px(y) + "\" width=\"" + px(cw - 1) + "\" height=\"" + px(ch - 1) + "\" fill=\"" +
               hex(col) + "\"><title>" + html_escape(where) + ": " + html_escape(c.format) + ", " + num("%.3f", c.bits) +
               " bpw, predicted loss " + num("%.4g", c.predicted_loss) + ", " + human_bytes(c.bytes) + "</title></rect>";
        out += "<text x=\"" + px(x + (cw - 1) / 2) + "\" y=\"" + px(y + ch / 2 + 3) + "\" text-anchor=\"middle\" fill=\"" +
               (dark(col) ? "#fff" : "#111") + "\" pointer-events=\"none\">" + html_escape(label(c)) + "</text>";
      }
      out += "\n";
    }
    // Colour bar with the scale's ends.
    const double by = top + ch * double(layers.size()) + 12, bw = cw * double(used.size());
    const std::string gid = "ramp" + std::to_string(pi);
    out += "<defs><linearGradient id=\"" + gid + "\">";
    for (int s = 0; s <= 4; ++s) out += "<stop offset=\"" + num("%.2f", s / 4.0) + "\" stop-color=\"" + hex(ramp(s / 4.0)) + "\"/>";
    out += "</linearGradient></defs>";
    out += "<rect x=\"" + px(lw) + "\" y=\"" + px(by) + "\" width=\"" + px(bw) + "\" height=\"10\" fill=\"url(#" + gid + ")\"/>";
    auto end_label = [&](double v) {
      if (!std::isfinite(v)) return std::string("n/a");
      if (pi == 2) return human_bytes(static_cast<uint64_t>(std::llround(std::pow(10.0, v))));
      return panels[pi].log ? num("%.2g", std::pow(10.0, v)) : num("%.2f", v);
    };
    out += "<text x=\"" + px(lw) + "\" y=\"" + px(by + 24) + "\">" + end_label(lo) + "</text>";
    out += "<text x=\"" + px(lw + bw) + "\" y=\"" + px(by + 24) + "\" text-anchor=\"end\">" + end_label(hi) + "</text>\n";
    out += "</svg>\n";
  }
  out += "</div>\n";
  out += kPageEnd;
  return out;
}

}  // namespace mxlm
