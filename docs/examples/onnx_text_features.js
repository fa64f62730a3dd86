#!/usr/bin/env node
// Text features from an exported graph in onnxruntime-node, L2-normalised as clip-index writes them.
//   node docs/examples/onnx_text_features.js PREFIX.txt.fp32.onnx
// (onnxruntime-node: `ONNXRUNTIME_NODE_INSTALL=skip npm install onnxruntime-node`, or NODE_PATH=tests/node/node_modules)
'use strict';
const ort = require('onnxruntime-node');

async function main() {
  const session = await ort.InferenceSession.create(process.argv[2]);
  const L = 52;                                   // context_length (metadata key "context_length")
  const ids = new BigInt64Array(2 * L);           // two texts, zero-padded
  ids.set([101n, 3300n, 102n], 0);                // [CLS] 有 [SEP]
  ids.set([101n, 4500n, 5682n, 102n], L);         // [CLS] 用 色 [SEP]
  const out = await session.run({ text: new ort.Tensor('int64', ids, [2, L]) });
  const f = out.unnorm_text_features;             // float32, dims [2, E]
  const E = f.dims[1];
  for (let i = 0; i < f.dims[0]; ++i) {
    const row = f.data.subarray(i * E, (i + 1) * E);
    const norm = Math.hypot(...row);
    console.log(JSON.stringify({ row: i, dims: f.dims, first4: Array.from(row.subarray(0, 4), (x) => +(x / norm).toFixed(6)) }));
  }
}
main();
