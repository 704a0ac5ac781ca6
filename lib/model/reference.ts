/**
 * A plain float64 Llama/Mixtral forward pass over a GGUF file, written from the model
 * definition (llama.cpp's build_llama graph), for tests: no KV cache, no paging, no native
 * kernels, weights dequantized with the independent TS decoders (ops/quant-reference). It is
 * slow (O(T²) attention, scalar matmuls) and meant for tiny models.
 */
import * as fs from 'node:fs';
import { LlamaConfig, llamaConfig } from './config';
import { GgufFile, readGguf } from './gguf';
import { dequantize, rowBytes } from './weights';

const sqrt = Math.sqrt;
const exp = Math.exp;
const cos = Math.cos;
const sin = Math.sin;
const pow = Math.pow;

export class ReferenceLlama {
  readonly config: LlamaConfig;
  private readonly file: GgufFile;
  private readonly bytes: Buffer;
  private readonly cache = new Map<string, Float64Array>();

  private constructor(file: GgufFile, bytes: Buffer) {
    this.file = file;
    this.bytes = bytes;
    this.config = llamaConfig(file);
  }

  static async open(path: string): Promise<ReferenceLlama> {
    return new ReferenceLlama(await readGguf(path), fs.readFileSync(path));
  }

  /** A tensor's values as float64, row-major [rows, cols] (cols = dims[0]). */
  tensor(name: string): Float64Array {
    let t = this.cache.get(name);
    if (t) return t;
    const info = this.file.tensorMap.get(name);
    if (!info) throw new Error(`missing tensor ${name}`);
    const cols = info.dims[0];
    const rows = info.dims.slice(1).reduce((a, b) => a * b, 1);
    const rb = rowBytes(info.type, cols, name);
    const src = new Uint8Array(this.bytes.buffer, this.bytes.byteOffset + info.offset, rows * rb);
    t = Float64Array.from(dequantize(info.type, src, rows, cols, name));
    this.cache.set(name, t);
    return t;
  }

  /** Logits of every position, [tokens.length][vocab]. */
  forward(tokens: ArrayLike<number>): Float64Array[] {
    const c = this.config;
    const T = tokens.length;
    const D = c.headDim;
    const G = c.heads / c.kvHeads;
    const emb = this.tensor('token_embd.weight');
    let x: Float64Array[] = Array.from({ length: T }, (_, t) =>
      emb.slice(tokens[t] * c.dim, (tokens[t] + 1) * c.dim),
    );
    // rotary tables, "normal" (GGML_ROPE_TYPE_NORM): pairs (2i, 2i+1) of each head
    const rope = (v: Float64Array, heads: number, pos: number) => {
      for (let h = 0; h < heads; h++)
        for (let i = 0; i < c.ropeDim; i += 2) {
          const theta = pos * c.ropeScale * pow(c.ropeBase, -i / c.ropeDim);
          const a = v[h * D + i];
          const b = v[h * D + i + 1];
          v[h * D + i] = a * cos(theta) - b * sin(theta);
          v[h * D + i + 1] = a * sin(theta) + b * cos(theta);
        }
    };
    const ks: Float64Array[][] = [];
    for (let l = 0; l < c.layers; l++) {
      const p = `blk.${l}.`;
      const xn = x.map((r) => rmsNorm(r, this.tensor(p + 'attn_norm.weight'), c.rmsEps));
      const q = xn.map((r) => matvec(this.tensor(p + 'attn_q.weight'), r, c.heads * D));
      const k = xn.map((r) => matvec(this.tensor(p + 'attn_k.weight'), r, c.kvHeads * D));
      const v = xn.map((r) => matvec(this.tensor(p + 'attn_v.weight'), r, c.kvHeads * D));
      for (let t = 0; t < T; t++) {
        rope(q[t], c.heads, t);
        rope(k[t], c.kvHeads, t);
      }
      ks.push(k);
      const att = q.map((qt, t) => {
        const o = new Float64Array(c.heads * D);
        for (let h = 0; h < c.heads; h++) {
          const kh = Math.floor(h / G);
          const s = new Float64Array(t + 1);
          let m = -Infinity;
          for (let j = 0; j <= t; j++) {
            let d = 0;
            for (let i = 0; i < D; i++) d += qt[h * D + i] * k[j][kh * D + i];
            s[j] = d / sqrt(D);
            if (s[j] > m) m = s[j];
          }
          let sum = 0;
          for (let j = 0; j <= t; j++) sum += s[j] = exp(s[j] - m);
          for (let j = 0; j <= t; j++)
            for (let i = 0; i < D; i++) o[h * D + i] += (s[j] / sum) * v[j][kh * D + i];
        }
        return o;
      });
      x = x.map((r, t) => addv(r, matvec(this.tensor(p + 'attn_output.weight'), att[t], c.dim)));
      const hn = x.map((r) => rmsNorm(r, this.tensor(p + 'ffn_norm.weight'), c.rmsEps));
      if (c.experts === 0) {
        x = x.map((r, t) =>
          addv(
            r,
            this.ffn(hn[t], p + 'ffn_gate.weight', p + 'ffn_up.weight', p + 'ffn_down.weight', 0),
          ),
        );
      } else {
        x = x.map((r, t) => {
          const logits = matvec(this.tensor(p + 'ffn_gate_inp.weight'), hn[t], c.experts);
          const m = Math.max(...logits);
          const pr = logits.map((z) => exp(z - m));
          const z = pr.reduce((a, b) => a + b, 0);
          const order = Array.from(pr.keys()).sort((a, b) => pr[b] - pr[a] || a - b);
          const top = order.slice(0, c.expertsUsed);
          const wsum = top.reduce((a, e) => a + pr[e] / z, 0);
          let out: Float64Array = new Float64Array(c.dim);
          for (const e of top) {
            const y = this.ffn(
              hn[t],
              p + 'ffn_gate_exps.weight',
              p + 'ffn_up_exps.weight',
              p + 'ffn_down_exps.weight',
              e,
            );
            const w = pr[e] / z / wsum;
            out = addv(
              out,
              y.map((u) => u * w),
            );
          }
          return addv(r, out);
        });
      }
    }
    const head = this.file.tensorMap.has('output.weight') ? 'output.weight' : 'token_embd.weight';
    return x.map((r) =>
      matvec(this.tensor(head), rmsNorm(r, this.tensor('output_norm.weight'), c.rmsEps), c.vocab),
    );
  }

  private ffn(x: Float64Array, g: string, u: string, d: string, expert: number): Float64Array {
    const c = this.config;
    const F = c.ffn;
    const gw = this.tensor(g).subarray(expert * F * c.dim, (expert + 1) * F * c.dim);
    const uw = this.tensor(u).subarray(expert * F * c.dim, (expert + 1) * F * c.dim);
    const dw = this.tensor(d).subarray(expert * c.dim * F, (expert + 1) * c.dim * F);
    const gv = matvec(gw, x, F);
    const uv = matvec(uw, x, F);
    const h = gv.map((a, i) => (a / (1 + exp(-a))) * uv[i]);
    return matvec(dw, h, c.dim);
  }
}

function rmsNorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const r = 1 / sqrt(ss / x.length + eps);
  return x.map((v, i) => v * r * w[i]);
}

/** y[n] = Σ_k W[n, k] x[k] for W [N, K] row-major. */
function matvec(w: Float64Array, x: Float64Array, n: number): Float64Array {
  const K = x.length;
  const y = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = 0;
    const o = i * K;
    for (let k = 0; k < K; k++) s += w[o + k] * x[k];
    y[i] = s;
  }
  return y;
}

function addv(a: Float64Array, b: Float64Array): Float64Array {
  return a.map((v, i) => v + b[i]);
}
