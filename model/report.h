// Self-contained HTML reports of the mixed-precision quantizer: the size/quality Pareto plot of
// mixes against uniform formats, and a per-tensor heatmap of one mix. Each page is one file with
// inline SVG and an inline <style>: no scripts, fonts, stylesheets or images from elsewhere, so
// it opens offline and can be attached to an issue. All caller text is HTML-escaped.
//
// (The writers live in model/ rather than tools/ so that the unit tests, which link mxlm_model
// but not the tools, can check the markup.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mxlm {

// Escapes & < > " ' as entities, for text and attribute values alike.
std::string html_escape(const std::string& s);

struct ParetoPoint {
  std::string label;    // e.g. "q4_g32" or "mix 3.9 bpw"
  double bpw;           // bits per weight of the whole model (x)
  double dppl_percent;  // perplexity increase over the unquantized model, in % (y)
  bool mixed;           // true: an allocated mix; false: a uniform format
};

// A page with an SVG scatter plot, x = bits per weight, y = Δppl %, followed by `table_markdown`
// rendered as an HTML table (lines starting with '|'; other lines become paragraphs).
//   - y is log-scaled when every plotted Δppl is > 0 and max/min > 20 (the <svg> then carries
//     data-yscale="log", else "linear"); a linear axis always includes 0.
//   - Mixes are circles, uniform formats squares; each marker has class "pt mixed" or
//     "pt uniform" and a <title> tooltip, and is labelled. A legend names the two styles.
//   - Each kind is joined along its own Pareto front: the points that no point of the same kind
//     beats on both axes (no more bits and no more Δppl, one of them strictly less).
//   - Points with a non-finite coordinate are not plotted but listed under the plot.
std::string pareto_html(const std::string& title, const std::vector<ParetoPoint>& pts, const std::string& table_markdown);

struct HeatCell {
  int layer;              // block index; -1 for the token embedding and the output head
  std::string tensor;     // "attn_q", "blk.3.ffn_down", "ffn_down.weight", "tok_embd", "output", ...
  std::string format;     // format name, shown in the tooltip
  double bits;            // bits per weight of this tensor
  double predicted_loss;  // the allocator's loss for this tensor in this format
  uint64_t bytes;         // stored size
};

// A page with three layer × tensor grids (bits per weight; predicted loss, log colour scale;
// bytes, log colour scale since the embedding and head are tens of times a layer matrix).
// Rows: layer -1 (labelled "embd / head") on top, then the layers in order. Columns: q k v o gate
// up down, then "embd" and "head" for the token embedding and output head, then any other tensor
// name in order of appearance. A tensor's column comes from its name with "blk.N." and ".weight"
// stripped (attn_q, q, q_proj -> q; attn_o, attn_output, o_proj -> o; ffn_gate, gate_proj ->
// gate; ...). Every cell shows its value and has a <title> tooltip with tensor, format, bits,
// loss and bytes. A cell given twice keeps the last.
std::string heatmap_html(const std::string& title, const std::vector<HeatCell>& cells);

}  // namespace mxlm
