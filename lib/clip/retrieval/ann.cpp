#include "clip/retrieval/ann.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "clip/base/cpu.h"
#include "clip/base/error.h"
#include "clip/base/fileio.h"
#include "clip/base/log.h"
#include "clip/retrieval/search.h"
#include "clip/retrieval/sidecar.h"

#ifdef CLIP_HAVE_FAISS
#include <faiss/AutoTune.h>
#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IVFlib.h>
#include <faiss/IndexIVF.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/io.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <omp.h>
#endif

namespace clip {

namespace {
constexpr char kAnnMagic[8] = {'C', 'L', 'I', 'P', 'A', 'N', 'N', '\0'};
constexpr uint32_t kAnnVersion = 1;
const char* const kWhat = "approximate index";

std::string remedy(const std::string& store) {
  return fmt::format("rebuild it with clip-index --ann FACTORY for '{}' (or delete it, or pass --exact to search "
                     "without it)",
                     store);
}

[[noreturn]] [[maybe_unused]] void no_faiss() {
  throw UsageError("this build has no faiss (libfaiss-dev was not found when it was configured): approximate "
                   "indexes are unavailable; install libfaiss-dev and rebuild, or search exactly");
}
}  // namespace

std::string ann_path(const std::string& store_path) { return store_path + ".ann"; }

#ifdef CLIP_HAVE_FAISS

bool have_faiss() { return true; }

namespace {

// Rows [b, e) of the store as float32.
std::vector<float> rows_f32(const FeatureSet& fs, int64_t b, int64_t e) {
  std::vector<float> v(static_cast<size_t>(e - b) * fs.dim);
  fs.copy_rows(b, e, v.data());
  return v;
}

void add_rows(faiss::Index* index, const FeatureSet& fs, int64_t b, int64_t e) {
  const int64_t step = 65536;
  for (int64_t r = b; r < e; r += step) {
    const int64_t r1 = std::min(e, r + step);
    auto v = rows_f32(fs, r, r1);
    index->add(r1 - r, v.data());
  }
}

void write_ann(const std::string& path, const faiss::Index* index, const std::string& factory, const FeatureSet& fs) {
  faiss::VectorIOWriter w;
  faiss::write_index(index, &w);
  nlohmann::json h = {{"factory", factory}, {"metric", "inner_product"}, {"faiss", FAISS_VERSION_MAJOR * 10000 + FAISS_VERSION_MINOR * 100 + FAISS_VERSION_PATCH},
                      {"store", identity_json(store_identity(fs))}, {"payload_size", w.data.size()}};
  write_sidecar(path, kAnnMagic, kAnnVersion, h, w.data.data(), w.data.size());
}

std::unique_ptr<faiss::Index> read_ann(const std::string& path, const FeatureSet& fs, std::string* factory) {
  Sidecar sc = read_sidecar(path, kAnnMagic, kAnnVersion, kWhat, remedy(fs.path));
  if (sc.header.value("metric", "") != "inner_product")
    throw DataError(fmt::format("{} '{}': metric '{}', expected inner_product; {}", kWhat, path,
                                sc.header.value("metric", ""), remedy(fs.path)));
  check_identity(sc.header.value("store", nlohmann::json()), fs, path, kWhat, remedy(fs.path));
  *factory = sc.header.value("factory", "");
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw_io_error("open", path);
  std::unique_ptr<faiss::Index> index;
  try {
    if (std::fseek(f, static_cast<long>(sc.payload_offset), SEEK_SET) != 0) throw_io_error("seek", path);
    faiss::FileIOReader r(f);
    index.reset(faiss::read_index(&r));
  } catch (const faiss::FaissException& e) {
    std::fclose(f);
    throw DataError(fmt::format("{} '{}': faiss cannot read it ({}); {}", kWhat, path, e.what(), remedy(fs.path)));
  }
  std::fclose(f);
  if (index->d != fs.dim || index->ntotal != fs.size() || index->metric_type != faiss::METRIC_INNER_PRODUCT)
    throw DataError(fmt::format("{} '{}': the faiss index holds {} rows of dim {}, the store {} of dim {}; {}", kWhat, path,
                                index->ntotal, index->d, fs.size(), fs.dim, remedy(fs.path)));
  return index;
}

}  // namespace

struct AnnIndex::Impl {
  std::unique_ptr<faiss::Index> index;
  std::string factory, path;
  // An IVF index with a flat coarse quantizer (every IVF factory string without a quantizer of its own):
  // its probed lists are scored in the store's own rows with the exact scan's kernel (search.h
  // score_rows, AVX-512/AVX2 over float16 or float32) instead of through the codes faiss keeps in the
  // lists. faiss's generic scanning code is compute-bound (about 1.5 ms per list of 1,000 rows on a
  // shared core of the development VM, SQ8 slower still); the rows are exact, so the candidates are
  // the true best rows of the probed lists whatever the codes are. CLIP_ANN_SCAN=faiss turns this off
  // (to compare). Not used without AVX2/F16C.
  const faiss::IndexIVF* ivf = nullptr;
  FeatureSet centroids;  // the quantizer's vectors, float32 (a view: no ids)
  FeatureSet rows;       // the store's matrix (a view: no ids; keeps its mapping alive)
  std::vector<int64_t> all_lists;
};

AnnIndex::AnnIndex() : im_(std::make_unique<Impl>()) {}
AnnIndex::~AnnIndex() = default;
const std::string& AnnIndex::factory() const { return im_->factory; }
const std::string& AnnIndex::path() const { return im_->path; }

double build_ann(const FeatureSet& fs, const AnnBuildOptions& opt, const std::string& path) {
  const auto t0 = std::chrono::steady_clock::now();
  if (fs.size() == 0) throw DataError(fmt::format("cannot build an approximate index over the empty store '{}'", fs.path));
  std::unique_ptr<faiss::Index> index;
  try {
    index.reset(faiss::index_factory(static_cast<int>(fs.dim), opt.factory.c_str(), faiss::METRIC_INNER_PRODUCT));
  } catch (const faiss::FaissException& e) {
    throw UsageError(fmt::format("--ann '{}': faiss does not accept this factory string ({}); e.g. IVF1024,SQ8, "
                                 "HNSW32, IVF4096,PQ64",
                                 opt.factory, e.what()));
  }
  try {
    if (!index->is_trained) {
      const int64_t n = std::min(fs.size(), std::max<int64_t>(opt.max_train, 1));
      const double step = static_cast<double>(fs.size()) / n;
      std::vector<float> train(static_cast<size_t>(n) * fs.dim);
      for (int64_t i = 0; i < n; ++i) fs.copy_rows(int64_t(i * step), int64_t(i * step) + 1, train.data() + i * fs.dim);
      log_info("training {} on {} of {} rows", opt.factory, n, fs.size());
      index->train(n, train.data());
    }
    add_rows(index.get(), fs, 0, fs.size());
  } catch (const faiss::FaissException& e) {
    throw DataError(fmt::format("building '{}' over '{}' failed in faiss: {}", opt.factory, fs.path, e.what()));
  }
  write_ann(path, index.get(), opt.factory, fs);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  log_info("wrote {} index {} ({} rows, {:.1f} s)", opt.factory, path, fs.size(), s);
  return s;
}

void carry_ann(const std::string& from_path, const FeatureSet& from_store, const FeatureSet& fs,
               const std::string& to_path) {
  std::string factory;
  auto index = read_ann(from_path, from_store, &factory);
  if (fs.size() < from_store.size() || fs.dim != from_store.dim)
    throw DataError(fmt::format("cannot carry {} '{}' over to '{}': it does not start with the rows of '{}'; {}", kWhat,
                                from_path, fs.path, from_store.path, remedy(fs.path)));
  for (int64_t r = 0; r < from_store.size(); ++r)
    if (from_store.ids[r] != fs.ids[r])
      throw DataError(fmt::format("cannot update {} '{}': rows of the store moved; {}", kWhat, from_path, remedy(fs.path)));
  try {
    add_rows(index.get(), fs, from_store.size(), fs.size());
  } catch (const faiss::FaissException& e) {
    throw DataError(fmt::format("cannot add rows to {} '{}' ({}): {}", kWhat, from_path, e.what(), remedy(fs.path)));
  }
  write_ann(to_path, index.get(), factory, fs);
  log_info("added {} rows to {} ({})", fs.size() - from_store.size(), to_path, factory);
}

void extend_ann(const std::string& path, const FeatureSet& old_store, const FeatureSet& fs) {
  carry_ann(path, old_store, fs, path);
}

std::string ann_factory_of(const std::string& path) {
  try {
    return read_sidecar(path, kAnnMagic, kAnnVersion, kWhat, "").header.value("factory", "");
  } catch (const Error&) {
    return {};
  }
}

std::unique_ptr<AnnIndex> AnnIndex::open(const std::string& path, const FeatureSet& fs, const AnnParams& p) {
  std::unique_ptr<AnnIndex> a(new AnnIndex());
  a->im_->path = path;
  a->im_->index = read_ann(path, fs, &a->im_->factory);
  faiss::ParameterSpace ps;
  try {
    if (p.nprobe > 0) {
      if (!faiss::ivflib::try_extract_index_ivf(a->im_->index.get()))
        throw UsageError(fmt::format("--nprobe applies to IVF indexes; '{}' is {}", path, a->im_->factory));
      ps.set_index_parameter(a->im_->index.get(), "nprobe", p.nprobe);
    }
    if (p.ef > 0) {
      if (!dynamic_cast<faiss::IndexHNSW*>(a->im_->index.get()))
        throw UsageError(fmt::format("--ef applies to HNSW indexes; '{}' is {}", path, a->im_->factory));
      ps.set_index_parameter(a->im_->index.get(), "efSearch", p.ef);
    }
  } catch (const faiss::FaissException& e) {
    throw UsageError(fmt::format("'{}': {}", path, e.what()));
  }
  const char* scan = std::getenv("CLIP_ANN_SCAN");
  const bool faiss_scan = scan && std::string(scan) == "faiss";
  const CpuFeatures& cpu = cpu_features();
  if (auto* ivf = faiss::ivflib::try_extract_index_ivf(a->im_->index.get());
      ivf && !faiss_scan && cpu.avx2 && cpu.fma && cpu.f16c && ivf->metric_type == faiss::METRIC_INNER_PRODUCT) {
    auto* flat = dynamic_cast<const faiss::IndexFlat*>(ivf->quantizer);
    if (flat && flat->metric_type == faiss::METRIC_INNER_PRODUCT && flat->d == fs.dim &&
        flat->ntotal == static_cast<faiss::Index::idx_t>(ivf->nlist) && ivf->invlists) {
      Impl& im = *a->im_;
      im.ivf = ivf;
      im.centroids.dim = fs.dim;
      im.centroids.dtype = StoreDtype::f32;
      im.centroids.data = flat->get_xb();
      im.centroids.format = "memory";
      im.rows.dim = fs.dim;
      im.rows.dtype = fs.dtype;
      im.rows.data = fs.data;
      im.rows.owner = fs.owner;
      im.rows.path = fs.path;
      im.rows.format = fs.format;
      im.all_lists.resize(ivf->nlist);
      for (size_t l = 0; l < ivf->nlist; ++l) im.all_lists[l] = static_cast<int64_t>(l);
    }
  }
  return a;
}

std::vector<std::vector<int64_t>> AnnIndex::candidates(const float* q, int64_t nq, int64_t n) const {
  n = std::min<int64_t>(n, im_->index->ntotal);
  if (const faiss::IndexIVF* ivf = im_->ivf) {
    // The nprobe lists whose centroids score highest, then every row of them scored from the store.
    const int64_t nlist = static_cast<int64_t>(ivf->nlist), D = im_->rows.dim;
    const int64_t np = std::max<int64_t>(1, std::min<int64_t>(static_cast<int64_t>(ivf->nprobe), nlist));
    std::vector<std::vector<int64_t>> out(nq);
    std::vector<float> cs(static_cast<size_t>(nlist)), sc;
    std::vector<int64_t> lists(static_cast<size_t>(nlist)), rows;
    std::vector<std::pair<float, int64_t>> best;
    for (int64_t i = 0; i < nq; ++i) {
      const float* qi = q + i * D;
      score_rows(im_->centroids, qi, im_->all_lists, cs.data());
      lists = im_->all_lists;
      std::partial_sort(lists.begin(), lists.begin() + np, lists.end(),
                        [&](int64_t a, int64_t b) { return cs[a] > cs[b] || (cs[a] == cs[b] && a < b); });
      rows.clear();
      for (int64_t j = 0; j < np; ++j) {
        const size_t l = static_cast<size_t>(lists[j]), m = ivf->invlists->list_size(l);
        if (m == 0) continue;
        faiss::InvertedLists::ScopedIds ids(ivf->invlists, l);
        for (size_t t = 0; t < m; ++t)
          if (ids[t] >= 0 && ids[t] < ivf->ntotal) rows.push_back(ids[t]);
      }
      sc.resize(rows.size());
      score_rows(im_->rows, qi, rows, sc.data());
      best.clear();
      for (size_t t = 0; t < rows.size(); ++t) best.emplace_back(sc[t], rows[t]);
      const size_t keep = std::min<size_t>(best.size(), static_cast<size_t>(n));
      std::partial_sort(best.begin(), best.begin() + keep, best.end(), [](const auto& a, const auto& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
      });
      for (size_t t = 0; t < keep; ++t) out[i].push_back(best[t].second);
    }
    return out;
  }
  std::vector<float> d(static_cast<size_t>(nq * n));
  std::vector<faiss::Index::idx_t> l(static_cast<size_t>(nq * n));
  // HNSW returns at most efSearch results: widen it for this call only (the index is shared by threads).
  faiss::SearchParametersHNSW hp;
  const faiss::SearchParameters* params = nullptr;
  if (auto* h = dynamic_cast<const faiss::IndexHNSW*>(im_->index.get())) {
    hp.efSearch = std::max<int>(h->hnsw.efSearch, static_cast<int>(n));
    params = &hp;
  }
  // faiss opens an OpenMP region per search even for one query; on a busy machine waking the other
  // threads costs more than the query itself, so a few queries run on this thread alone.
  const int before = omp_get_max_threads();
  if (nq < 2 * before) omp_set_num_threads(1);
  try {
    im_->index->search(nq, q, n, d.data(), l.data(), params);
  } catch (...) {
    omp_set_num_threads(before);
    throw;
  }
  omp_set_num_threads(before);
  std::vector<std::vector<int64_t>> out(nq);
  for (int64_t i = 0; i < nq; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (l[i * n + j] >= 0 && l[i * n + j] < im_->index->ntotal) out[i].push_back(l[i * n + j]);
  return out;
}

#else  // no faiss

bool have_faiss() { return false; }
struct AnnIndex::Impl {
  std::string factory, path;
};
AnnIndex::AnnIndex() : im_(std::make_unique<Impl>()) {}
AnnIndex::~AnnIndex() = default;
const std::string& AnnIndex::factory() const { return im_->factory; }
const std::string& AnnIndex::path() const { return im_->path; }
double build_ann(const FeatureSet&, const AnnBuildOptions&, const std::string&) { no_faiss(); }
void extend_ann(const std::string&, const FeatureSet&, const FeatureSet&) { no_faiss(); }
void carry_ann(const std::string&, const FeatureSet&, const FeatureSet&, const std::string&) { no_faiss(); }
std::string ann_factory_of(const std::string& path) {
  try {
    return read_sidecar(path, kAnnMagic, kAnnVersion, kWhat, "").header.value("factory", "");
  } catch (const Error&) {
    return {};
  }
}
std::unique_ptr<AnnIndex> AnnIndex::open(const std::string&, const FeatureSet&, const AnnParams&) { no_faiss(); }
std::vector<std::vector<int64_t>> AnnIndex::candidates(const float*, int64_t, int64_t) const { no_faiss(); }

#endif

}  // namespace clip
