// Image ids that are strings (photo paths relative to their folder) next to cn_clip's integer ids.
//
// Inside the toolkit every id is an int64 (search, metrics, stores keep working on integers). A
// string id is mapped to a negative int64 taken from its SHA-256 (name_to_id), so the same path gets
// the same id in every file and run, and the string itself travels beside it (IdNames) to every
// output: stores keep it in their metadata, JSONL files write it instead of the number. Integer ids
// from cn_clip's files stay integers; they are expected to be >= 0 (a negative integer id could
// collide with a string's, with probability about n / 2^62).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace clip {

using IdNames = std::unordered_map<int64_t, std::string>;

// -1 - (first 8 bytes of SHA-256(name) as a big-endian integer, masked to 62 bits).
int64_t name_to_id(std::string_view name);

// The name of an id when `names` knows it, else the integer.
nlohmann::json id_to_json(int64_t id, const IdNames* names);
std::string id_to_string(int64_t id, const IdNames* names);

// An integer, or a non-empty string (mapped by name_to_id and recorded in `names` when given).
// nullopt for anything else (booleans, floats, objects, "", and a quoted number such as "100",
// which in cn_clip's files is a mistake for the integer rather than a path).
std::optional<int64_t> id_from_json(const nlohmann::json& v, IdNames* names = nullptr);

}  // namespace clip
