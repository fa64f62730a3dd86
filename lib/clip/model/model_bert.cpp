// cn_clip's BertModel (modeling_bert.py, HF BERT 2.x clone without pooler): post-LN layers,
// erf GELU, LayerNorm eps from the config's 1e-12, additive -10000 padding mask.
#include <ATen/core/grad_mode.h>

#include <cmath>

#include "clip/base/error.h"
#include "clip/model/model_parts.h"
#include "clip/model/torch_compat.h"

namespace clip::detail {

namespace {
constexpr double kBertLnEps = 1e-12;  // hard-coded in CLIP.__init__, not part of the JSON
}

at::Tensor bert_activation(const std::string& act, const at::Tensor& x) {
  if (act == "gelu") return at::gelu(x);                 // x * 0.5 * (1 + erf(x / sqrt(2)))
  if (act == "gelu_new") return at::gelu(x, "tanh");
  if (act == "relu") return at::relu(x);
  if (act == "swish") return x * at::sigmoid(x);
  throw ModelError("unsupported text_hidden_act '" + act + "'");
}

BertEmbeddings::BertEmbeddings(const TextConfig& c) : cfg(c) {
  word_embeddings = register_module("word_embeddings", std::make_shared<Embedding>(c.vocab_size, c.hidden_size, 0));
  position_embeddings = register_module("position_embeddings", std::make_shared<Embedding>(c.max_position_embeddings, c.hidden_size));
  token_type_embeddings = register_module("token_type_embeddings", std::make_shared<Embedding>(c.type_vocab_size, c.hidden_size));
  layer_norm = register_module("LayerNorm", std::make_shared<LayerNorm>(c.hidden_size, kBertLnEps, false));
}

at::Tensor BertEmbeddings::forward(const at::Tensor& ids) {
  const int64_t len = ids.size(1);
  if (len > cfg.max_position_embeddings)
    throw UsageError("text of " + std::to_string(len) + " tokens exceeds the text tower's " +
                     std::to_string(cfg.max_position_embeddings) + " position embeddings; use a shorter --context-length");
  auto pos = at::arange(len, ids.options().dtype(at::kLong));
  // token_type_ids are all 0 in cn_clip: row 0 of the table, broadcast.
  auto e = word_embeddings->forward(ids) + position_embeddings->forward(pos).unsqueeze(0) +
           token_type_embeddings->forward(at::zeros({1, 1}, ids.options().dtype(at::kLong)));
  e = layer_norm->forward(e);
  return at::dropout(e, cfg.hidden_dropout, is_training());
}

BertSelfAttention::BertSelfAttention(const TextConfig& c) : heads(c.num_heads), dropout(c.attention_dropout) {
  query = register_module("query", std::make_shared<Linear>(c.hidden_size, c.hidden_size));
  key = register_module("key", std::make_shared<Linear>(c.hidden_size, c.hidden_size));
  value = register_module("value", std::make_shared<Linear>(c.hidden_size, c.hidden_size));
}

at::Tensor BertSelfAttention::forward(const at::Tensor& x, const at::Tensor& mask) {
  const int64_t b = x.size(0), l = x.size(1), h = x.size(2), d = h / heads;
  const double p = is_training() ? dropout : 0.0;
  if (fused_qkv) {
    // One [H, 3H] product for the three projections; its backward gives one input gradient and one
    // packed weight gradient instead of three each (the parameters' gradients are views into it).
    auto w = at::cat({query->weight, key->weight, value->weight}, 0);
    auto bias = at::cat({query->bias, key->bias, value->bias}, 0);
    auto qkv = lp_linear(x, w, bias).view({b, l, 3, heads, d}).unbind(2);  // 3 x [B, L, heads, d]
    auto q = qkv[0].transpose(1, 2), k = qkv[1].transpose(1, 2), v = qkv[2].transpose(1, 2);
    // Encoding (no gradient): the kernel for short padded sequences (compat::attention_masked_inference).
    auto ctx = p == 0.0 && !at::GradMode::is_enabled() ? compat::attention_masked_inference(q, k, v, mask)
                                                        : compat::attention(q, k, v, mask, p);
    return ctx.transpose(1, 2).reshape({b, l, h});
  }
  auto split = [&](const at::Tensor& y) { return y.view({b, l, heads, d}).transpose(1, 2); };
  auto ctx = compat::attention(split(query->forward(x)), split(key->forward(x)), split(value->forward(x)), mask, p);
  return ctx.transpose(1, 2).reshape({b, l, h});
}

BertDenseNorm::BertDenseNorm(int64_t in, int64_t out, const TextConfig& c) : dropout(c.hidden_dropout) {
  dense = register_module("dense", std::make_shared<Linear>(in, out));
  layer_norm = register_module("LayerNorm", std::make_shared<LayerNorm>(out, kBertLnEps, false));
}

at::Tensor BertDenseNorm::forward(const at::Tensor& x, const at::Tensor& residual) {
  auto h = at::dropout(dense->forward(x), dropout, is_training());
  return layer_norm->forward(h + residual);
}

BertAttention::BertAttention(const TextConfig& c) {
  self_attn = register_module("self", std::make_shared<BertSelfAttention>(c));
  output = register_module("output", std::make_shared<BertDenseNorm>(c.hidden_size, c.hidden_size, c));
}

BertIntermediate::BertIntermediate(const TextConfig& c) {
  dense = register_module("dense", std::make_shared<Linear>(c.hidden_size, c.intermediate_size));
}

BertLayer::BertLayer(const TextConfig& c) : act(c.hidden_act) {
  attention = register_module("attention", std::make_shared<BertAttention>(c));
  intermediate = register_module("intermediate", std::make_shared<BertIntermediate>(c));
  output = register_module("output", std::make_shared<BertDenseNorm>(c.intermediate_size, c.hidden_size, c));
}

at::Tensor BertLayer::forward(const at::Tensor& x, const at::Tensor& mask) {
  auto a = attention->output->forward(attention->self_attn->forward(x, mask), x);
  auto i = bert_activation(act, intermediate->dense->forward(a));
  return output->forward(i, a);
}

BertEncoder::BertEncoder(const TextConfig& c) {
  for (int i = 0; i < c.num_layers; ++i) layer.push_back(std::make_shared<BertLayer>(c));
  register_module("layer", layer.holder);
}

BertModel::BertModel(const TextConfig& c) : cfg(c) {
  embeddings = register_module("embeddings", std::make_shared<BertEmbeddings>(c));
  encoder = register_module("encoder", std::make_shared<BertEncoder>(c));
}

at::Tensor BertModel::additive_mask(const at::Tensor& ids) const {
  const auto dtype = embeddings->word_embeddings->weight.scalar_type();
  // [B, 1, 1, L]: 0 where attended, -10000 on padding keys (cn_clip's pad id is 0).
  auto m = ids.ne(0).to(dtype).view({ids.size(0), 1, 1, ids.size(1)});
  return (1.0 - m) * -10000.0;
}

at::Tensor BertModel::forward(const at::Tensor& ids) {
  const auto mask = additive_mask(ids);
  auto h = embeddings->forward(ids);
  for (auto& lay : encoder->layer.items) {
    if (encoder->grad_checkpointing) {
      auto* lp = lay.get();
      h = checkpointed([lp, mask](const at::Tensor& t) { return lp->forward(t, mask); }, h, lay->parameters());
    } else {
      h = lay->forward(h, mask);
    }
  }
  return h;
}

}  // namespace clip::detail
