#include "clip/retrieval/classify.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <charconv>
#include <fstream>
#include <set>

#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/retrieval/encoder.h"
#include "clip/retrieval/zeroshot_templates.h"

namespace clip {

std::vector<std::string> cnclip_templates() {
  return std::vector<std::string>(std::begin(kCnClipImagenetTemplates), std::end(kCnClipImagenetTemplates));
}

std::string fill_template(const std::string& tmpl, const std::string& label) {
  if (tmpl.find("{}") == std::string::npos)
    throw UsageError("template '" + tmpl + "' has no {} where the class name goes (e.g. '一张{}的照片')");
  std::string out;
  for (size_t i = 0; i < tmpl.size();) {
    if (tmpl.compare(i, 2, "{}") == 0) {
      out += label;
      i += 2;
    } else {
      out += tmpl[i++];
    }
  }
  return out;
}

at::Tensor class_features(Encoder& enc, const std::vector<std::string>& labels, const std::vector<std::string>& templates) {
  if (labels.empty()) throw UsageError("no class labels");
  if (templates.empty()) throw UsageError("no templates");
  std::vector<at::Tensor> rows;
  rows.reserve(labels.size());
  for (const auto& label : labels) {
    std::vector<std::string> texts;
    for (const auto& t : templates) texts.push_back(fill_template(t, label));
    at::Tensor f = enc.encode_texts(texts, /*preprocess=*/true);  // [T, E], each row unit norm
    f = f / f.norm(2, -1, true);
    at::Tensor m = f.mean(0);
    rows.push_back(m / m.norm());
  }
  return at::stack(rows, 0);
}

std::vector<std::vector<std::pair<int, float>>> classify(const at::Tensor& image_features, const at::Tensor& classes, int k) {
  at::Tensor img = image_features.to(at::kFloat);
  img = img / img.norm(2, -1, true);
  at::Tensor probs = (100.0 * at::matmul(img, classes.to(at::kFloat).t())).softmax(-1).contiguous();
  const int64_t n = probs.size(0), c = probs.size(1);
  const int kk = static_cast<int>(std::min<int64_t>(k, c));
  auto top = probs.topk(kk, 1, true, true);
  at::Tensor vals = std::get<0>(top).contiguous(), idx = std::get<1>(top).contiguous();
  const float* v = vals.data_ptr<float>();
  const int64_t* ix = idx.data_ptr<int64_t>();
  std::vector<std::vector<std::pair<int, float>>> out(n);
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < kk; ++j) out[i].emplace_back(static_cast<int>(ix[i * kk + j]), v[i * kk + j]);
  return out;
}

namespace {
std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}
}  // namespace

std::vector<std::string> read_labels(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_io_error("open", path);
  std::vector<std::string> labels;
  std::set<std::string> seen;
  std::string line;
  size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (lineno == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line.erase(0, 3);
    line = trim(line);
    if (line.empty()) continue;
    if (!seen.insert(line).second) throw UsageError(fmt::format("{}:{}: label '{}' is listed twice", path, lineno, line));
    labels.push_back(line);
  }
  if (labels.empty()) throw UsageError("'" + path + "' holds no labels (one class name per line)");
  return labels;
}

std::vector<std::pair<int64_t, std::string>> read_class_ground_truth(const std::string& path, IdNames* names) {
  std::ifstream in(path);
  if (!in) throw_io_error("open", path);
  std::vector<std::pair<int64_t, std::string>> out;
  std::string line;
  size_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    line = trim(line);
    if (line.empty()) continue;
    std::string id_text, label;
    if (line[0] == '{') {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        throw DataError(fmt::format("{}:{}: not valid JSON ({})", path, lineno, e.what()));
      }
      auto id = j.contains("image_id") ? id_from_json(j["image_id"], names) : std::nullopt;
      if (!id || !j.contains("label") || !j["label"].is_string())
        throw DataError(fmt::format("{}:{}: expected {{\"image_id\": int or path, \"label\": str}}", path, lineno));
      out.emplace_back(*id, j["label"].get<std::string>());
      continue;
    }
    size_t sep = line.find('\t');
    if (sep == std::string::npos) sep = line.rfind(',');
    if (sep == std::string::npos)
      throw DataError(fmt::format("{}:{}: expected 'image_id<TAB>label', 'image_id,label' or JSONL", path, lineno));
    id_text = trim(line.substr(0, sep));
    label = trim(line.substr(sep + 1));
    int64_t v = 0;
    auto r = std::from_chars(id_text.data(), id_text.data() + id_text.size(), v);
    if (r.ec == std::errc() && r.ptr == id_text.data() + id_text.size() && !id_text.empty()) {
      out.emplace_back(v, label);
    } else {
      out.emplace_back(*id_from_json(nlohmann::json(id_text), names), label);
    }
  }
  if (out.empty()) throw DataError("'" + path + "' holds no (image_id, label) lines");
  return out;
}

}  // namespace clip
