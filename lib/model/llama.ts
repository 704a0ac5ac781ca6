/**
 * The Llama forward pass (Llama 2/3, Mistral, TinyLlama; Mixtral with experts) over the
 * paged KV cache, as a burst of stream-ordered ops per step (DESIGN.md section 2).
 *
 * Per layer: rmsNorm → Q, K, V projections → RoPE (in place) → kvAppend → fused paged
 * attention → output projection added into the residual → rmsNorm → SwiGLU FFN (one fused
 * gate/up pass for integer weights) or MoE (routing in TypeScript, grouped matmuls, combine)
 * added into the residual. The step's page table comes from lib/kv; one attention plan
 * serves every layer.
 *
 * Head dims that are not a multiple of 16 (the attention kernel's unit) run padded: Q, K and
 * V projections get zero rows and the output projection zero columns, so the padded lanes
 * hold zeros and change no dot product (tiny models such as stories260K, head dim 8).
 */
import { KernelError } from '../runtime/errors';
import { Runtime, Stream } from '../runtime/runtime';
import { Tensor } from '../runtime/tensor';
import { PageTable } from '../kv/page-table';
import { embedding } from '../ops/embedding';
import { siluMul } from '../ops/elementwise';
import { cast } from '../ops/cast';
import { matmul } from '../ops/matmul';
import { rmsNorm } from '../ops/norm';
import { rope } from '../ops/rope';
import {
  expertPermutation,
  fuseGateUp,
  isQuantized,
  qmatmul,
  qmatmulGrouped,
  QuantizedTensor,
} from '../ops/quant';
import {
  attention,
  createKvCache,
  KvCache,
  KvDType,
  kvAppend,
  kvCopyBlocks,
  planAttention,
} from '../ops/attention';
import { moeCombine, RoutingPolicy, softmaxTopK } from '../ops/moe';
import { LlamaConfig } from './config';
import { dequantize, Matrix, rowBytes, WeightLoader } from './weights';

interface DenseFfn {
  kind: 'dense';
  gate: Matrix;
  up: Matrix;
  down: Matrix;
}
interface FusedFfn {
  kind: 'fused';
  gateUp: QuantizedTensor;
  down: Matrix;
}
interface MoeFfn {
  kind: 'moe';
  router: Tensor;
  /** Quantized experts: fused gate/up and down per expert (grouped matmuls). */
  gateUp?: QuantizedTensor[];
  /** Dense (or unfusable) experts, run one by one over their gathered rows. */
  gate?: Matrix[];
  up?: Matrix[];
  down: Matrix[];
}
interface Layer {
  attnNorm: Tensor;
  wq: Matrix;
  wk: Matrix;
  wv: Matrix;
  wo: Matrix;
  ffnNorm: Tensor;
  ffn: DenseFfn | FusedFfn | MoeFfn;
}

/** What one forward step computes. */
export interface ForwardStep {
  /** Token id of every query row, in page-table row order. */
  tokens: Int32Array;
  /** The step's page table (lib/kv buildPageTable). */
  table: PageTable;
  /** Rows that need logits (e.g. each sequence's last row). Default: every row. */
  logitRows?: Int32Array;
  /** KV pool the table indexes (createCache()). Default: the model's own pool. */
  cache?: KvCache;
  /**
   * Compute every row exactly as it would be computed in any other batch: no split-KV (whose
   * partition depends on the batch, and whose merge changes the summation order). The engine
   * sets it so a request's tokens never depend on its batch-mates. Default false.
   */
  batchInvariant?: boolean;
}

export interface LlamaOptions {
  kvDtype?: KvDType;
  /** Token slots in the KV pool (all sequences together). */
  kvTokens: number;
  blockSize?: number;
  routing?: RoutingPolicy;
  stream?: Stream;
}

/** Activations of one step size, reused across layers and steps (stream order keeps them safe). */
interface Workspace {
  T: number;
  x: Tensor;
  xn: Tensor;
  q: Tensor;
  q3: Tensor;
  k: Tensor;
  k3: Tensor;
  v: Tensor;
  v3: Tensor;
  att: Tensor;
  att3: Tensor;
  h: Tensor;
  u: Tensor | undefined;
  all: Tensor[];
}

const ceil16 = (n: number) => Math.ceil(n / 16) * 16;

export class LlamaModel {
  readonly config: LlamaConfig;
  readonly rt: Runtime;
  readonly cache: KvCache;
  readonly blockSize: number;
  /** Head dim as stored in the KV cache (headDim rounded up to 16). */
  readonly paddedHeadDim: number;
  readonly routing: RoutingPolicy;
  private readonly loader: WeightLoader;
  private readonly embd: ReturnType<WeightLoader['info']>;
  private readonly embdRowBytes: number;
  private readonly layers: Layer[] = [];
  private readonly outNorm: Tensor;
  private readonly output: Matrix;
  private readonly stream: Stream;
  private workspaces: Workspace[] = [];
  private disposed = false;
  /** Serialises forward(): the MoE path awaits mid-step and the workspaces are shared. */
  private lock: Promise<void> = Promise.resolve();

  constructor(
    loader: WeightLoader,
    config: LlamaConfig,
    options: LlamaOptions,
    onLayer?: (i: number) => void,
  ) {
    this.loader = loader;
    this.config = config;
    this.rt = loader.rt;
    this.stream = options.stream ?? this.rt.defaultStream;
    this.routing = options.routing ?? softmaxTopK({ normalize: true });
    const c = config;
    const D = c.headDim;
    const Dp = ceil16(D);
    this.paddedHeadDim = Dp;
    this.blockSize = options.blockSize ?? 16;
    this.embd = loader.info('token_embd.weight', [c.dim, c.vocab]);
    this.embdRowBytes = rowBytes(this.embd.type, c.dim, 'token_embd.weight');
    try {
      for (let i = 0; i < c.layers; i++) {
        this.layers.push(this.loadLayer(i, Dp));
        onLayer?.(i);
      }
      this.outNorm = loader.vector('output_norm.weight', c.dim);
      this.output = loader.matrix(
        c.tiedOutput ? 'token_embd.weight' : 'output.weight',
        c.vocab,
        c.dim,
        {
          requant: true,
        },
      );
      this.cache = this.createCache(
        Math.ceil(options.kvTokens / this.blockSize),
        options.kvDtype ?? 'f16',
      );
    } catch (e) {
      this.disposeWeights();
      throw e;
    }
  }

  /** A KV pool of `blocks` blocks shaped for this model (an engine's own pool). */
  createCache(blocks: number, dtype: KvDType = 'f16'): KvCache {
    const c = this.config;
    return createKvCache(this.rt, {
      layers: c.layers,
      blocks,
      kvHeads: c.kvHeads,
      blockSize: this.blockSize,
      headDim: this.paddedHeadDim,
      dtype,
    });
  }

  /** Bytes one KV block takes in every layer (codes and scales) at `dtype`. */
  kvBlockBytes(dtype: KvDType): number {
    const c = this.config;
    const perElem = dtype === 'f32' ? 4 : dtype === 'f16' || dtype === 'bf16' ? 2 : 1;
    const scale = dtype === 'int8' ? 4 / this.paddedHeadDim : 0;
    return c.layers * 2 * c.kvHeads * this.blockSize * this.paddedHeadDim * (perElem + scale);
  }

  private loadLayer(i: number, Dp: number): Layer {
    const c = this.config;
    const L = this.loader;
    const p = `blk.${i}.`;
    const D = c.headDim;
    const proj = (name: string, heads: number): Matrix =>
      Dp === D
        ? L.matrix(p + name, heads * D, c.dim, { requant: true })
        : this.paddedRows(p + name, heads, D, Dp);
    const layer: Layer = {
      attnNorm: L.vector(p + 'attn_norm.weight', c.dim),
      wq: proj('attn_q.weight', c.heads),
      wk: proj('attn_k.weight', c.kvHeads),
      wv: proj('attn_v.weight', c.kvHeads),
      wo:
        Dp === D
          ? L.matrix(p + 'attn_output.weight', c.dim, c.heads * D, { requant: true })
          : this.paddedCols(p + 'attn_output.weight', c.heads, D, Dp),
      ffnNorm: L.vector(p + 'ffn_norm.weight', c.dim),
      ffn: c.experts > 0 ? this.loadMoe(p) : this.loadFfn(p),
    };
    return layer;
  }

  private loadFfn(p: string): DenseFfn | FusedFfn {
    const c = this.config;
    const L = this.loader;
    const gate = L.matrix(p + 'ffn_gate.weight', c.ffn, c.dim, { requant: true });
    const up = L.matrix(p + 'ffn_up.weight', c.ffn, c.dim, { requant: true });
    const down = L.matrix(p + 'ffn_down.weight', c.dim, c.ffn, { requant: true });
    if (fusable(gate, up)) {
      const gateUp = fuseGateUp(gate, up as QuantizedTensor, { stream: this.stream });
      gate.dispose();
      up.dispose();
      return { kind: 'fused', gateUp, down };
    }
    return { kind: 'dense', gate, up, down };
  }

  private loadMoe(p: string): MoeFfn {
    const c = this.config;
    const L = this.loader;
    const E = c.experts;
    const rInfo = L.info(p + 'ffn_gate_inp.weight', [c.dim, E]);
    const routerW = this.rt.tensor(L.dequantRows(rInfo, 0, E, c.dim), [E, c.dim]);
    const gate: Matrix[] = [];
    const up: Matrix[] = [];
    const down: Matrix[] = [];
    for (let e = 0; e < E; e++) {
      const o = { expert: e, experts: E, requant: true };
      gate.push(L.matrix(p + 'ffn_gate_exps.weight', c.ffn, c.dim, o));
      up.push(L.matrix(p + 'ffn_up_exps.weight', c.ffn, c.dim, o));
      down.push(L.matrix(p + 'ffn_down_exps.weight', c.dim, c.ffn, o));
    }
    const grouped =
      gate.every((g, e) => fusable(g, up[e])) &&
      down.every((d) => isQuantized(d) && !d.format.kind.startsWith('fp8')) &&
      sameFormat(gate) &&
      sameFormat(down);
    if (!grouped) return { kind: 'moe', router: routerW, gate, up, down };
    const gateUp = gate.map((g, e) => fuseGateUp(g as QuantizedTensor, up[e] as QuantizedTensor));
    gate.forEach((g) => g.dispose());
    up.forEach((u) => u.dispose());
    return { kind: 'moe', router: routerW, gateUp, down };
  }

  /** [heads·D, dim] projection as dense f32 [heads·Dp, dim] with zero rows after each head's D. */
  private paddedRows(name: string, heads: number, D: number, Dp: number): Tensor {
    const c = this.config;
    const t = this.loader.info(name, [c.dim, heads * D]);
    const src = this.loader.dequantRows(t, 0, heads * D, c.dim);
    const dst = new Float32Array(heads * Dp * c.dim);
    for (let h = 0; h < heads; h++)
      dst.set(src.subarray(h * D * c.dim, (h + 1) * D * c.dim), h * Dp * c.dim);
    return this.rt.tensor(dst, [heads * Dp, c.dim]);
  }

  /** [dim, heads·D] output projection as dense f32 [dim, heads·Dp] with zero columns. */
  private paddedCols(name: string, heads: number, D: number, Dp: number): Tensor {
    const c = this.config;
    const t = this.loader.info(name, [heads * D, c.dim]);
    const src = this.loader.dequantRows(t, 0, c.dim, heads * D);
    const dst = new Float32Array(c.dim * heads * Dp);
    for (let r = 0; r < c.dim; r++)
      for (let h = 0; h < heads; h++)
        dst.set(
          src.subarray(r * heads * D + h * D, r * heads * D + (h + 1) * D),
          r * heads * Dp + h * Dp,
        );
    return this.rt.tensor(dst, [c.dim, heads * Dp]);
  }

  /** f32 embedding rows of `tokens` (dequantized from the mapping), [T·dim]. */
  embedTokens(tokens: Int32Array): Float32Array {
    const c = this.config;
    const out = new Float32Array(tokens.length * c.dim);
    const rb = this.embdRowBytes;
    for (let i = 0; i < tokens.length; i++) {
      const id = tokens[i];
      if (!(id >= 0 && id < c.vocab))
        throw new KernelError(`Expected token ids in [0, ${c.vocab}) but tokens[${i}] is ${id}`, {
          code: 'E_INVALID_ARG',
          op: 'forward',
          arg: 'tokens',
        });
      const bytes = this.loader.bytes(this.embd, id * rb, rb);
      out.set(dequantize(this.embd.type, bytes, 1, c.dim, 'token_embd.weight'), i * c.dim);
    }
    return out;
  }

  private workspace(T: number): Workspace {
    let ws = this.workspaces.find((w) => w.T === T);
    if (ws) return ws;
    const c = this.config;
    const rt = this.rt;
    const Dp = this.paddedHeadDim;
    const all: Tensor[] = [];
    const mk = (shape: number[]) => {
      const t = rt.empty(shape, 'f32');
      all.push(t);
      return t;
    };
    const view = (t: Tensor, shape: number[]) => {
      const v = t.view(shape);
      all.push(v);
      return v;
    };
    const q = mk([T, c.heads * Dp]);
    const k = mk([T, c.kvHeads * Dp]);
    const v = mk([T, c.kvHeads * Dp]);
    const att = mk([T, c.heads * Dp]);
    const dense = this.layers.some((l) => l.ffn.kind === 'dense');
    ws = {
      T,
      x: mk([T, c.dim]),
      xn: mk([T, c.dim]),
      q,
      q3: view(q, [T, c.heads, Dp]),
      k,
      k3: view(k, [T, c.kvHeads, Dp]),
      v,
      v3: view(v, [T, c.kvHeads, Dp]),
      att,
      att3: view(att, [T, c.heads, Dp]),
      h: mk([T, c.ffn]),
      u: dense ? mk([T, c.ffn]) : undefined,
      all,
    };
    // Keep the decode size (T = 1..small) and the latest prefill size.
    if (this.workspaces.length >= 3) {
      const old = this.workspaces.splice(1, 1)[0];
      old.all.forEach((t) => t.dispose());
    }
    this.workspaces.push(ws);
    return ws;
  }

  /**
   * Runs one step: appends the rows' K/V to the cache and returns f32 logits
   * [logitRows.length, vocab] (enqueued on the model's stream; read it to wait).
   */
  async forward(step: ForwardStep): Promise<Tensor> {
    const prev = this.lock;
    let done!: () => void;
    this.lock = new Promise<void>((r) => (done = r));
    try {
      await prev;
      return await this.forwardLocked(step);
    } finally {
      done();
    }
  }

  private async forwardLocked(step: ForwardStep): Promise<Tensor> {
    if (this.disposed)
      throw new KernelError('The model has been disposed', { code: 'E_DISPOSED', op: 'forward' });
    const c = this.config;
    const rt = this.rt;
    const s = { stream: this.stream };
    const { tokens, table } = step;
    const cache = step.cache ?? this.cache;
    if (cache.disposed || cache.layers !== c.layers || cache.headDim !== this.paddedHeadDim)
      throw new KernelError('The KV cache is disposed or not shaped for this model', {
        code: cache.disposed ? 'E_DISPOSED' : 'E_SHAPE',
        op: 'forward',
        arg: 'cache',
      });
    const T = tokens.length;
    if (T === 0 || T !== table.numTokens)
      throw new KernelError(
        `Expected ${table.numTokens} tokens (the page table's rows) but received ${T}`,
        { code: 'E_SHAPE', op: 'forward', arg: 'tokens' },
      );
    const ws = this.workspace(T);
    ws.x.write(this.embedTokens(tokens), this.stream);
    const pos = rt.tensor(table.positions, [T], { dtype: 'i32' });
    const slots = rt.tensor(table.slotMapping, [T], { dtype: 'i32' });
    const temps: Tensor[] = [pos, slots];
    try {
      if (table.copies.length > 0) kvCopyBlocks(cache, table.copies, s);
      const plan = planAttention(cache, table, {
        qHeads: c.heads,
        splitTokens: step.batchInvariant ? 1 << 30 : undefined,
      });
      const ropeOpts = {
        ...s,
        rotaryDim: c.ropeDim,
        freqBase: c.ropeBase,
        freqScale: c.ropeScale,
      };
      const smScale = 1 / Math.sqrt(c.headDim);
      const st = this.stream;
      for (let l = 0; l < c.layers; l++) {
        const L = this.layers[l];
        rmsNorm(ws.x, { ...s, weight: L.attnNorm, eps: c.rmsEps, out: ws.xn });
        mm(ws.xn, L.wq, ws.q, false, st, temps);
        mm(ws.xn, L.wk, ws.k, false, st, temps);
        mm(ws.xn, L.wv, ws.v, false, st, temps);
        rope(ws.q3, pos, ropeOpts);
        rope(ws.k3, pos, ropeOpts);
        kvAppend(cache, l, ws.k3, ws.v3, slots, s);
        attention(plan, cache, l, ws.q3, { ...s, out: ws.att3, smScale });
        mm(ws.att, L.wo, ws.x, true, st, temps);
        rmsNorm(ws.x, { ...s, weight: L.ffnNorm, eps: c.rmsEps, out: ws.xn });
        const f = L.ffn;
        if (f.kind === 'fused') {
          mm(ws.xn, f.gateUp, ws.h, false, st, temps);
          mm(ws.h, f.down, ws.x, true, st, temps);
        } else if (f.kind === 'dense') {
          mm(ws.xn, f.gate, ws.h, false, st, temps);
          mm(ws.xn, f.up, ws.u!, false, st, temps);
          siluMul(ws.h, ws.u!, { ...s, out: ws.h });
          mm(ws.h, f.down, ws.x, true, st, temps);
        } else {
          await this.moe(f, ws, temps, l);
        }
      }
      let xl = ws.x;
      const rows = step.logitRows;
      if (rows && !(rows.length === T && rows.every((r, i) => r === i))) {
        const ids = rt.tensor(rows, [rows.length], { dtype: 'i32' });
        temps.push(ids);
        xl = embedding(ws.x, ids, s); // a row gather
        temps.push(xl);
      }
      const xo = rmsNorm(xl, { ...s, weight: this.outNorm, eps: c.rmsEps });
      temps.push(xo);
      const logits = rt.empty([xo.shape[0], c.vocab], 'f32');
      try {
        mm(xo, this.output, logits, false, this.stream, temps);
      } catch (e) {
        logits.dispose();
        throw e;
      }
      return logits;
    } finally {
      for (const t of temps) t.dispose(); // queued ops keep what they use alive
    }
  }

  private async moe(f: MoeFfn, ws: Workspace, temps: Tensor[], layer: number): Promise<void> {
    const c = this.config;
    const rt = this.rt;
    const s = { stream: this.stream };
    const T = ws.T;
    const k = c.expertsUsed;
    const E = c.experts;
    // Routing runs in TypeScript: the router logits come back to JS (one sync per layer).
    const logitsT = matmul(ws.xn, f.router, s);
    let logits: Float32Array;
    try {
      logits = (await logitsT.read(this.stream)) as Float32Array;
    } finally {
      logitsT.dispose();
    }
    const { experts, weights } = this.routing.route(logits, T, E, k, { layer });
    const perm = expertPermutation(experts, k, E);
    if (perm.rows.length === 0) return; // every assignment dropped (capacity): nothing to add
    const rows = rt.tensor(perm.rows, [perm.rows.length], { dtype: 'i32' });
    const offsets = rt.tensor(perm.offsets, [E + 1], { dtype: 'i32' });
    temps.push(rows, offsets);
    if (f.gateUp) {
      const R = perm.rows.length; // kept assignments (capacity may drop some)
      const ident = rt.tensor(
        Int32Array.from({ length: R }, (_, i) => i),
        [R],
        { dtype: 'i32' },
      );
      temps.push(ident);
      const h = qmatmulGrouped(ws.xn, f.gateUp, rows, offsets, { ...s, outDtype: 'f32' });
      temps.push(h);
      const y = qmatmulGrouped(h, f.down as QuantizedTensor[], ident, offsets, {
        ...s,
        outDtype: 'f32',
      });
      temps.push(y);
      moeCombine(y, perm.slot, weights, k, ws.x, { ...s, accumulate: true });
      return;
    }
    // Dense experts: gather each expert's rows, run its FFN, combine its share.
    for (let e = 0; e < E; e++) {
      const n = perm.offsets[e + 1] - perm.offsets[e];
      if (n === 0) continue;
      const ids = rt.tensor(perm.rows.slice(perm.offsets[e], perm.offsets[e + 1]), [n], {
        dtype: 'i32',
      });
      const xe = embedding(ws.xn, ids, s);
      const g = rt.empty([n, c.ffn], 'f32');
      const u = rt.empty([n, c.ffn], 'f32');
      const y = rt.empty([n, c.dim], 'f32');
      temps.push(ids, xe, g, u, y);
      mm(xe, f.gate![e], g, false, this.stream, temps);
      mm(xe, f.up![e], u, false, this.stream, temps);
      siluMul(g, u, { ...s, out: g });
      mm(g, f.down[e], y, false, this.stream, temps);
      // this expert's assignments: weight where chosen, else 0 (slot 0 is then harmless)
      const slot = new Int32Array(T * k);
      const w = new Float32Array(T * k);
      for (let i = 0; i < T * k; i++)
        if (experts[i] === e) {
          slot[i] = perm.slot[i] - perm.offsets[e];
          w[i] = weights[i];
        }
      moeCombine(y, slot, w, k, ws.x, { ...s, accumulate: true });
    }
  }

  private disposeWeights(): void {
    for (const L of this.layers) {
      const f = L.ffn;
      const ms: (Matrix | undefined)[] = [L.attnNorm, L.wq, L.wk, L.wv, L.wo, L.ffnNorm];
      if (f.kind === 'dense') ms.push(f.gate, f.up, f.down);
      else if (f.kind === 'fused') ms.push(f.gateUp, f.down);
      else ms.push(f.router, ...(f.gateUp ?? []), ...(f.gate ?? []), ...(f.up ?? []), ...f.down);
      for (const m of ms) m?.dispose();
    }
    this.layers.length = 0;
    (this.outNorm as Tensor | undefined)?.dispose();
    (this.output as Matrix | undefined)?.dispose();
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.disposeWeights();
    for (const w of this.workspaces) w.all.forEach((t) => t.dispose());
    this.workspaces = [];
    this.cache?.dispose();
  }
}

/**
 * out (+)= a · Wᵀ. Accumulation is fused into the matmul (residual for quantized weights,
 * beta for dense). Dense f16/bf16 weights take activations of their own dtype, as ggml's
 * vec_dot does: `a` is cast first (into a temporary pushed on `temps`).
 */
function mm(
  a: Tensor,
  w: Matrix,
  out: Tensor,
  accumulate: boolean,
  stream: Stream,
  temps: Tensor[],
): void {
  if (isQuantized(w)) {
    qmatmul(a, w, accumulate ? { stream, residual: out, out } : { stream, out });
    return;
  }
  if (w.dtype !== a.dtype) {
    a = cast(a, w.dtype as 'f16' | 'bf16', { stream });
    temps.push(a);
  }
  matmul(a, w, accumulate ? { stream, out, beta: 1 } : { stream, out });
}

function fusable(g: Matrix, u: Matrix): g is QuantizedTensor {
  return (
    isQuantized(g) &&
    isQuantized(u) &&
    !g.format.kind.startsWith('fp8') &&
    JSON.stringify(g.format) === JSON.stringify(u.format)
  );
}

function sameFormat(ms: Matrix[]): boolean {
  const f0 = isQuantized(ms[0]) ? JSON.stringify(ms[0].format) : 'dense';
  return ms.every((m) => (isQuantized(m) ? JSON.stringify(m.format) : 'dense') === f0);
}
