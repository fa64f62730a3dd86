#!/usr/bin/env bash
# Recall@10 against latency from bench_search --ann output (its "bench ann" and "bench int8" lines), as an SVG:
#   build/bin/bench_search --sizes 1000000 --ann | tee out.txt; bench/plot_ann.sh < out.txt > docs/search-recall.svg
# One polyline per (data, index) over its nprobe/ef values (int8: one point per scale kind); x = ms per query
# (log scale), y = recall@10.
awk '
function field(name,   i, kv) { for (i = 1; i <= NF; i++) { split($i, kv, "="); if (kv[1] == name) return kv[2] } return "" }
/^bench (ann|int8) / {
  key = field("data") " " ($2 == "int8" ? "int8" (field("scale") == "" ? "" : " " field("scale")) : field("index"))
  if (!(key in seen)) { seen[key] = 1; keys[++nk] = key }
  n[key]++; x[key, n[key]] = field("ms_per_query") + 0; y[key, n[key]] = field("recall10") + 0
  if (!have_min || y[key, n[key]] < miny) { miny = y[key, n[key]]; have_min = 1 }
  p = field("nprobe"); if (p == "") p = field("ef"); lab[key, n[key]] = p
}
END {
  W = 760; H = 460; L = 70; R = 230; T = 30; B = 50; lo = -1; hi = 4   # x from 0.1 ms to 10 s
  y0 = int(miny * 10) / 10; if (y0 > 0.9) y0 = 0.9                      # y from below the lowest recall to 1
  printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n", W, H
  printf "<rect width=\"%d\" height=\"%d\" fill=\"white\"/>\n", W, H
  pw = W - L - R; ph = H - T - B
  for (e = lo; e <= hi; e++) { gx = L + (e - lo) / (hi - lo) * pw
    printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/><text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", gx, T, gx, T + ph, gx, T + ph + 16, 10 ^ e }
  for (r = 0; r <= 5; r++) { gv = y0 + (1 - y0) * r / 5; gy = T + ph - r / 5 * ph
    printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/><text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", L, gy, L + pw, gy, L - 6, gy + 4, gv }
  # The goal of issue #15: recall@10 >= 0.95 at <= 2 ms per query (dashed).
  tx = L + (log(2) / log(10) - lo) / (hi - lo) * pw; ty = T + ph - (0.95 - y0) / (1 - y0) * ph
  printf "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n", tx, T, tx, T + ph
  if (y0 < 0.95) printf "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n", L, ty, L + pw, ty
  printf "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">ms per query (log scale)</text>\n", L + pw / 2, H - 10
  printf "<text x=\"16\" y=\"%d\" transform=\"rotate(-90 16 %d)\" text-anchor=\"middle\">recall@10</text>\n", T + ph / 2, T + ph / 2
  split("#1f77b4 #d62728 #2ca02c #ff7f0e #9467bd #8c564b #e377c2 #7f7f7f", col, " ")
  for (k = 1; k <= nk; k++) { key = keys[k]; c = col[(k - 1) % 8 + 1]; pts = ""
    for (i = 1; i <= n[key]; i++) { v = x[key, i]; if (v < 0.1) v = 0.1
      px = L + (log(v) / log(10) - lo) / (hi - lo) * pw; py = T + ph - (y[key, i] - y0) / (1 - y0) * ph; pts = pts sprintf("%.1f,%.1f ", px, py)
      printf "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", px, py, c
      if (lab[key, i] != "") printf "<text x=\"%.1f\" y=\"%.1f\" font-size=\"9\" fill=\"%s\">%s</text>\n", px + 4, py - 4, c, lab[key, i] }
    printf "<polyline points=\"%s\" fill=\"none\" stroke=\"%s\"/>\n", pts, c
    printf "<text x=\"%d\" y=\"%d\" fill=\"%s\">%s</text>\n", L + pw + 12, T + 14 + 18 * k, c, key }
  print "</svg>"
}'
