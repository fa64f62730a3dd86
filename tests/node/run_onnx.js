#!/usr/bin/env node
// Runs an ONNX model in onnxruntime-node (CPU) on raw little-endian inputs, for the test suite and
// as a usage example.
//   node run_onnx.js MODEL.onnx OUT.bin NAME=FILE:DTYPE:D0xD1x...   (DTYPE: float32 | int64)
// Writes the model's first output as raw float32 to OUT.bin and prints
// {"output": name, "dims": [...], "inputs": [...], "outputs": [...]} on stdout.
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require(path.join(__dirname, 'node_modules', 'onnxruntime-node'));

function readInput(spec) {
  const eq = spec.indexOf('=');
  const name = spec.slice(0, eq);
  const [file, dtype, dimStr] = spec.slice(eq + 1).split(':');
  const dims = dimStr.split('x').map(Number);
  const buf = fs.readFileSync(file);
  const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  let data;
  if (dtype === 'float32') data = new Float32Array(ab);
  else if (dtype === 'int64') data = new BigInt64Array(ab);
  else throw new Error(`unsupported dtype ${dtype} for input ${name}`);
  const n = dims.reduce((a, b) => a * b, 1);
  if (data.length !== n) throw new Error(`${file}: ${data.length} elements, shape ${dimStr} needs ${n}`);
  return [name, new ort.Tensor(dtype, data, dims)];
}

async function main() {
  const [model, out, ...specs] = process.argv.slice(2);
  if (!model || !out || specs.length === 0) {
    console.error('usage: run_onnx.js MODEL.onnx OUT.bin NAME=FILE:DTYPE:D0xD1x...');
    process.exit(2);
  }
  const session = await ort.InferenceSession.create(model, { executionProviders: ['cpu'], graphOptimizationLevel: 'all' });
  const feeds = Object.fromEntries(specs.map(readInput));
  const results = await session.run(feeds);
  const name = session.outputNames[0];
  const t = results[name];
  if (t.type !== 'float32') throw new Error(`output ${name} is ${t.type}, expected float32`);
  fs.writeFileSync(out, Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  console.log(JSON.stringify({ output: name, dims: t.dims, inputs: session.inputNames, outputs: session.outputNames }));
}

main().catch((e) => {
  console.error(`run_onnx.js: ${e.message || e}`);
  process.exit(1);
});
