#include "clip/base/ids.h"

#include "clip/base/sha256.h"

namespace clip {

int64_t name_to_id(std::string_view name) {
  Sha256 h;
  h.update(name.data(), name.size());
  const auto d = h.digest();
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | d[i];
  v &= (uint64_t(1) << 62) - 1;
  return -1 - static_cast<int64_t>(v);
}

nlohmann::json id_to_json(int64_t id, const IdNames* names) {
  if (names && id < 0) {
    auto it = names->find(id);
    if (it != names->end()) return it->second;
  }
  return id;
}

std::string id_to_string(int64_t id, const IdNames* names) {
  if (names && id < 0) {
    auto it = names->find(id);
    if (it != names->end()) return it->second;
  }
  return std::to_string(id);
}

std::optional<int64_t> id_from_json(const nlohmann::json& v, IdNames* names) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX)) return std::nullopt;
    return v.get<int64_t>();
  }
  if (v.is_string()) {
    const auto& s = v.get_ref<const std::string&>();
    if (s.empty()) return std::nullopt;
    // A quoted number ("100") is a mistake for an integer id in cn_clip's files, not a path.
    size_t digits = s[0] == '-' || s[0] == '+' ? 1 : 0;
    if (digits < s.size() && s.find_first_not_of("0123456789", digits) == std::string::npos) return std::nullopt;
    int64_t id = name_to_id(s);
    if (names) names->emplace(id, s);
    return id;
  }
  return std::nullopt;
}

}  // namespace clip
