// Training curves as a self-contained SVG: stacked panels sharing the step axis, each with its own
// y axis, "nice" ticks, grid lines and a legend.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "clip/train/train.h"

namespace clip {

namespace {

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

// Heckbert's "nice numbers": 1, 2, 2.5 or 5 times a power of ten.
double nice_step(double range, int target_ticks) {
  if (!(range > 0)) return 1;
  double raw = range / std::max(1, target_ticks);
  double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double f = raw / mag;
  double nf = f < 1.5 ? 1 : f < 2.25 ? 2 : f < 3.5 ? 2.5 : f < 7.5 ? 5 : 10;
  return nf * mag;
}

struct Axis {
  double lo = 0, hi = 1, step = 1;
  bool log = false;
  double map(double v, double px_lo, double px_hi) const {
    double a = log ? std::log10(std::max(v, 1e-300)) : v;
    double t = (a - lo) / (hi - lo);
    return px_lo + t * (px_hi - px_lo);
  }
};

Axis make_axis(double mn, double mx, bool log, int ticks, bool include_zero) {
  Axis ax;
  ax.log = log;
  if (log) {
    mn = std::log10(std::max(mn, 1e-300));
    mx = std::log10(std::max(mx, 1e-300));
    ax.lo = std::floor(mn);
    ax.hi = std::max(ax.lo + 1, std::ceil(mx));
    ax.step = std::max(1.0, std::ceil((ax.hi - ax.lo) / ticks));
    return ax;
  }
  if (include_zero) mn = std::min(mn, 0.0);
  if (!(mx > mn)) {
    double pad = mn == 0 ? 1 : std::fabs(mn) * 0.1;
    mn -= pad;
    mx += pad;
  }
  ax.step = nice_step(mx - mn, ticks);
  ax.lo = std::floor(mn / ax.step) * ax.step;
  ax.hi = std::ceil(mx / ax.step) * ax.step;
  if (ax.hi <= ax.lo) ax.hi = ax.lo + ax.step;
  return ax;
}

std::string tick_label(double v, double step, bool log) {
  if (log) return fmt::format("1e{}", static_cast<int>(std::lround(v)));
  if (std::fabs(v) < step * 1e-9) return "0";
  double a = std::fabs(v);
  if (a >= 1e5 || a < 1e-3) return fmt::format("{:.2g}", v);
  int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(step) + 1e-9)));
  if (step * std::pow(10.0, decimals) - std::floor(step * std::pow(10.0, decimals) + 1e-9) > 1e-6) ++decimals;
  return fmt::format("{:.{}f}", v, std::min(decimals, 6));
}

}  // namespace

std::string render_curves_svg(const std::string& title, const std::vector<CurvePanel>& panels, int64_t max_step) {
  const int W = 880, left = 78, right = 24, top = 46, panel_h = 190, gap = 46, bottom = 44;
  const int H = top + static_cast<int>(panels.size()) * (panel_h + gap) - gap + bottom;
  const double x0 = left, x1 = W - right;
  std::string s;
  s += fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"12\">\n",
      W, H);
  s += fmt::format("<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"#ffffff\"/>\n", W, H);
  s += fmt::format("<text x=\"{}\" y=\"24\" font-size=\"16\" font-weight=\"bold\" text-anchor=\"middle\" "
                   "fill=\"#222\">{}</text>\n",
                   W / 2, xml_escape(title));

  // Shared x axis over steps.
  int64_t xmax = std::max<int64_t>(1, max_step);
  for (const auto& p : panels)
    for (const auto& se : p.series)
      for (const auto& pt : se.points) xmax = std::max(xmax, pt.step);
  Axis xa = make_axis(0, static_cast<double>(xmax), false, 8, true);
  xa.step = std::max(1.0, xa.step);

  for (size_t pi = 0; pi < panels.size(); ++pi) {
    const CurvePanel& p = panels[pi];
    const double y0 = top + pi * (panel_h + gap), y1 = y0 + panel_h;  // y0 top, y1 bottom
    double mn = std::numeric_limits<double>::infinity(), mx = -mn;
    size_t npts = 0;
    for (const auto& se : p.series)
      for (const auto& pt : se.points) {
        if (!std::isfinite(pt.value) || (p.log_y && pt.value <= 0)) continue;
        mn = std::min(mn, pt.value);
        mx = std::max(mx, pt.value);
        ++npts;
      }
    if (npts == 0) mn = 0, mx = 1;
    Axis ya = make_axis(mn, mx, p.log_y, 5, !p.log_y && mn >= 0 && mn < 0.35 * mx);

    s += fmt::format("<g class=\"panel\" id=\"panel{}\">\n", pi);
    s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#fbfbfd\" stroke=\"none\"/>\n", x0, y0,
                     x1 - x0, panel_h);
    s += fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"13\" font-weight=\"bold\" fill=\"#333\">{}</text>\n", x0,
                     y0 - 8, xml_escape(p.title));
    // Horizontal grid + y ticks.
    for (double v = ya.lo; v <= ya.hi + ya.step * 1e-6; v += ya.step) {
      double y = y1 - (v - ya.lo) / (ya.hi - ya.lo) * panel_h;
      s += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#e3e3e8\"/>\n", x0, y, x1,
                       y);
      s += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#444\"/>\n", x0 - 5, y, x0,
                       y);
      s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\" fill=\"#444\">{}</text>\n", x0 - 8, y + 4,
                       tick_label(v, ya.step, ya.log));
    }
    // Vertical grid + x ticks.
    for (double v = xa.lo; v <= xa.hi + 1e-9; v += xa.step) {
      double x = xa.map(v, x0, x1);
      s += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#eeeeF2\"/>\n", x, y0, x,
                       y1);
      s += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"#444\"/>\n", x, y1, x,
                       y1 + 5);
      s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"#444\">{}</text>\n", x, y1 + 18,
                       tick_label(v, xa.step, false));
    }
    // Axes.
    s += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#222\" stroke-width=\"1.2\"/>\n", x0,
                     y0, y1);
    s += fmt::format("<line x1=\"{0}\" y1=\"{2}\" x2=\"{1}\" y2=\"{2}\" stroke=\"#222\" stroke-width=\"1.2\"/>\n", x0, x1,
                     y1);
    s += fmt::format("<text transform=\"translate({:.1f},{:.1f}) rotate(-90)\" text-anchor=\"middle\" "
                     "fill=\"#333\">{}</text>\n",
                     x0 - 62, (y0 + y1) / 2, xml_escape(p.y_label));
    if (pi + 1 == panels.size())
      s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\" fill=\"#333\">step</text>\n",
                       (x0 + x1) / 2, y1 + 36);
    // Series, clipped to the plot area.
    s += fmt::format("<clipPath id=\"clip{0}\"><rect x=\"{1}\" y=\"{2}\" width=\"{3}\" height=\"{4}\"/></clipPath>\n",
                     pi, x0, y0 - 3, x1 - x0, panel_h + 6);
    for (const auto& se : p.series) {
      std::string pts;
      for (const auto& pt : se.points) {
        if (!std::isfinite(pt.value) || (ya.log && pt.value <= 0)) continue;
        double px = xa.map(static_cast<double>(pt.step), x0, x1);
        double py = y1 - (ya.map(pt.value, 0, 1)) * panel_h;
        pts += fmt::format("{:.1f},{:.1f} ", px, py);
        if (se.markers)
          s += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\" clip-path=\"url(#clip{})\"/>\n", px,
                           py, se.color, pi);
      }
      if (!pts.empty())
        s += fmt::format("<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\" stroke-linejoin=\"round\" "
                         "points=\"{}\" clip-path=\"url(#clip{})\"><title>{}</title></polyline>\n",
                         se.color, pts, pi, xml_escape(se.label));
    }
    // Legend (top right of the panel).
    if (!p.series.empty()) {
      size_t longest = 0;  // the box fits the longest label (about 6.8 px a character at the 12 px font)
      for (const auto& se : p.series) longest = std::max(longest, se.label.size());
      const double lw = std::max(150.0, 44 + 6.8 * double(longest)), lh = 8 + 16.0 * p.series.size();
      const double lx = x1 - lw - 8, ly = y0 + 8;
      s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"#ffffff\" "
                       "fill-opacity=\"0.85\" stroke=\"#bbb\"/>\n",
                       lx, ly, lw, lh);
      for (size_t k = 0; k < p.series.size(); ++k) {
        double yy = ly + 14 + 16.0 * k;
        s += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" "
                         "stroke-width=\"2.5\"/>\n",
                         lx + 8, yy - 4, lx + 30, yy - 4, p.series[k].color);
        s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" fill=\"#222\">{}</text>\n", lx + 36, yy,
                         xml_escape(p.series[k].label));
      }
    }
    s += "</g>\n";
  }
  s += "</svg>\n";
  return s;
}

}  // namespace clip
