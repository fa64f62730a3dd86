// Training checkpoints in cn_clip's layout, plus the resume information only our tools read.
#include <ATen/ATen.h>

#include "clip/io/checkpoint.h"
#include "clip/base/error.h"
#include "clip/model/model.h"
#include "clip/train/train.h"
#include "clip/model/tensor_torch.h"
#include "clip/train/train_internal.h"

namespace clip {
void save_training_checkpoint(const std::string& path, ClipModel& model, const AdamW* optimizer, int64_t epoch,
                              int64_t step, const std::string& name, const ResumeState* resume,
                              const std::map<std::string, at::Tensor>* fp32_weights) {
  auto root = PyValue::dict();
  root->set("epoch", PyValue::integer(epoch));
  root->set("step", PyValue::integer(step));
  root->set("name", PyValue::str(name));
  auto sd = PyValue::dict(/*ordered=*/true);
  // Weights are stored as they are trained (float32; cn_clip converts to fp32 for amp/fp32 runs too).
  for (const auto& [key, t] : model_state(model)) {
    const at::Tensor* w = &t;
    if (fp32_weights) {
      auto it = fp32_weights->find(key);
      if (it != fp32_weights->end()) w = &it->second;
    }
    sd->set("module." + key, PyValue::from_tensor(to_tensor_data(*w)));
  }
  root->set("state_dict", sd);
  // The towers' config (head counts are in no tensor shape): our tools rebuild the model from it.
  root->set("model_config", PyValue::str(model_config_json(model->config())));
  if (optimizer) root->set("optimizer", optimizer->state_dict());
  if (resume) {
    auto r = PyValue::dict();
    r->set("format", PyValue::str("clip-cpp-resume"));
    r->set("version", PyValue::integer(1));
    r->set("step", PyValue::integer(resume->step));
    r->set("epoch", PyValue::integer(resume->epoch));
    r->set("batch_in_epoch", PyValue::integer(resume->batch_in_epoch));
    if (resume->cpu_rng.defined()) r->set("cpu_rng_state", PyValue::from_tensor(to_tensor_data(resume->cpu_rng)));
    if (resume->cuda_rng.defined())
      r->set("cuda_rng_state", PyValue::from_tensor(to_tensor_data(resume->cuda_rng)));
    r->set("extra_json", PyValue::str(resume->extra.is_null() ? "{}" : resume->extra.dump()));
    root->set("clip_cpp_resume", r);
  }
  save_torch_zip(path, root);
}

bool read_resume_state(const PyPtr& root, ResumeState& out) {
  if (!root) return false;
  PyPtr r = root->get("clip_cpp_resume");
  if (!r || r->kind != PyValue::Kind::dict) return false;
  auto get_int = [&](const char* k) -> int64_t {
    PyPtr v = r->get(k);
    if (!v || v->kind != PyValue::Kind::integer)
      throw ModelError(std::string("checkpoint: clip_cpp_resume.") + k + " is missing or not an integer");
    return v->i;
  };
  out.step = get_int("step");
  out.epoch = get_int("epoch");
  out.batch_in_epoch = get_int("batch_in_epoch");
  if (PyPtr v = r->get("cpu_rng_state"); v && v->kind == PyValue::Kind::tensor)
    out.cpu_rng = detail::from_tensor_data(v->tensor);
  if (PyPtr v = r->get("cuda_rng_state"); v && v->kind == PyValue::Kind::tensor)
    out.cuda_rng = detail::from_tensor_data(v->tensor);
  if (PyPtr v = r->get("extra_json"); v && v->kind == PyValue::Kind::string) {
    try {
      out.extra = nlohmann::json::parse(v->s);
    } catch (const std::exception& e) {
      throw ModelError(std::string("checkpoint: clip_cpp_resume.extra_json is not JSON: ") + e.what());
    }
  }
  return true;
}

}  // namespace clip
