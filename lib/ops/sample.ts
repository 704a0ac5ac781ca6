/**
 * Batched token sampling: one row of logits per request in, one token per row out.
 *
 * Semantics: lib/ops/sample-core.ts, the same code the per-request Sampler (lib/model/sampler.ts)
 * runs, so `sample(logits, params, [u])` returns exactly the token `Sampler.sample()` returns
 * when its RNG yields u (options without penalties or logit bias; apply those to the logits
 * first). The caller supplies each row's uniform u in [0, 1), normally the request's seeded
 * stream (Sampler.uniform()), so a result is reproducible on every backend.
 *
 * Backends: on `cpu` the core runs in TypeScript on the logits read back in stream order (the
 * one definition of the semantics; a native copy would be a second). On `cuda` / `cuda-emu` the
 * device kernel (native/cuda/kernels/sampling.cuh) samples every row in one launch and only
 * [rows] tokens (and logprobs) come back; it is verified against the core, with the same
 * stages, tie rules and u -> token mapping, its exps in f32 (see that file for the tolerance).
 *
 * The result is host arrays (a decode step needs the tokens on the host anyway: stop strings,
 * detokenization), so `sample()` returns a promise: it resolves once the logits written before
 * the call are sampled. Arguments are validated when it is called (a KernelError is thrown
 * then); a bad row of logits (NaN, +Infinity, every logit -Infinity) rejects the promise with
 * E_INVALID_ARG naming the first such row, and leaves the stream healthy.
 */
import { binding } from '../runtime/runtime';
import { decode, FloatDType } from '../runtime/dtype';
import { invalidArg, KernelError } from '../runtime/errors';
import { Tensor } from '../runtime/tensor';
import { OpOptions, streamOf, tensorArg } from './common';
import {
  draw,
  LogitFail,
  LogitFault,
  logprobOf,
  MAX_VOCAB_SIZE,
  prepareRow,
  RowParams,
  rowParams,
} from './sample-core';

const M_fround = Math.fround;

/** One row's sampling parameters (SamplingOptions' truncation subset, same defaults). */
export interface SampleParams {
  /** Default 1. 0 = greedy (argmax, ties to the lowest token id; the row's u is ignored). */
  temperature?: number;
  /** Keep the k most likely tokens. Default 0 = off; k >= vocab is off. */
  topK?: number;
  /** Nucleus: the smallest most-likely prefix whose mass reaches p. In (0, 1]; default 1 = off. */
  topP?: number;
  /** Drop tokens below minP times the top token's probability. In [0, 1]; default 0 = off. */
  minP?: number;
}

export interface SampleOptions extends OpOptions {
  /** Also return each token's processed logprob (log-softmax of logits / T). Default false. */
  logprobs?: boolean;
}

export interface SampleResult {
  /** The chosen token of each row. */
  tokens: Int32Array;
  /**
   * With `logprobs`: each token's processed logprob, log-softmax of the row's logits / T over
   * the whole vocabulary (before truncation; T = 1 for greedy rows), as Sampler reports it.
   */
  logprobs?: Float32Array;
}

const OP = 'sample';
const PARAM_KEYS = new Set(['temperature', 'topK', 'topP', 'minP']);

/**
 * Samples one token per row of `logits` ([rows, vocab] or [vocab]; f32, f16 or bf16; vocab up to
 * 2^21). `params`: one SampleParams for every row, or an array of `rows`. `uniforms`: each row's
 * u in [0, 1) (ignored for greedy rows). Deterministic: the same inputs give the same tokens.
 */
export function sample(
  logits: Tensor,
  params: SampleParams | readonly SampleParams[],
  uniforms: ArrayLike<number>,
  options: SampleOptions = {},
): Promise<SampleResult> {
  const a = checkLogits(logits, options, OP);
  const rows = a.rows;
  const ps = checkParams(params, rows, a.vocab);
  const us = checkUniforms(uniforms, rows, ps);
  return run(a, ps, us, options.logprobs === true);
}

/**
 * The argmax of each row (ties to the lowest id), with `logprobs` its log-softmax at T = 1:
 * sample() with temperature 0 on every row.
 */
export function argmax(logits: Tensor, options: SampleOptions = {}): Promise<SampleResult> {
  const a = checkLogits(logits, options, 'argmax');
  return run(a, null, null, options.logprobs === true);
}

// ---------------------------------------------------------------------------------------------

interface LogitsArg {
  op: string;
  t: Tensor;
  rows: number;
  vocab: number;
  stream: ReturnType<typeof streamOf>;
}

function checkLogits(logits: Tensor, options: SampleOptions, op: string): LogitsArg {
  const t = tensorArg(logits, op, 'logits');
  if (options === null || typeof options !== 'object')
    throw invalidArg(op, 'options', 'an object', options);
  const stream = streamOf(t, options);
  // A stream computes where its runtime's tensors live (cpu memory, a device): the same check,
  // and the same error, as every native op makes (the cpu path below never reaches native code
  // with the logits, so it is made here for both).
  if (stream.runtime.backend !== t.runtime.backend)
    throw new KernelError(
      `Expected a tensor on backend ${stream.runtime.backend} for logits but it lives on ` +
        `${t.runtime.backend} (copy it with tensor.read() and runtime.tensor())`,
      { code: 'E_BACKEND', op, arg: 'logits', backend: stream.runtime.backend },
    );
  if (t.dtype !== 'f32' && t.dtype !== 'f16' && t.dtype !== 'bf16')
    throw invalidArg(op, 'logits', 'an f32, f16 or bf16 tensor', t.dtype, 'E_DTYPE');
  const s = t.shape;
  if (s.length !== 1 && s.length !== 2)
    throw new KernelError(
      `Expected logits of shape [rows, vocab] or [vocab] but received [${s.join(', ')}]`,
      { code: 'E_SHAPE', op, arg: 'logits', backend: 'js' },
    );
  const vocab = s[s.length - 1];
  const rows = s.length === 2 ? s[0] : 1;
  if (vocab < 1)
    throw new KernelError(`Expected a vocabulary of at least 1 token but logits have ${vocab}`, {
      code: 'E_SHAPE',
      op,
      arg: 'logits',
      backend: 'js',
    });
  if (vocab > MAX_VOCAB_SIZE)
    throw new KernelError(
      `A vocabulary of ${vocab} tokens is above the sampler's limit of ${MAX_VOCAB_SIZE}`,
      { code: 'E_UNSUPPORTED', op, arg: 'logits', backend: 'js' },
    );
  return { op, t, rows, vocab, stream };
}

/** Validates like Sampler's options (and sample_params_check on the device). */
function checkParams(
  params: SampleParams | readonly SampleParams[],
  rows: number,
  vocab: number,
): RowParams[] {
  const list = Array.isArray(params);
  if (list && params.length !== rows)
    throw new KernelError(
      `Expected ${rows} entries (one per row of logits) for params but received ${params.length}`,
      { code: 'E_SHAPE', op: OP, arg: 'params', backend: 'js' },
    );
  const out: RowParams[] = [];
  let shared: RowParams | undefined;
  for (let r = 0; r < rows; r++) {
    if (!list && shared) {
      out.push(shared);
      continue;
    }
    const p = (list ? (params as readonly SampleParams[])[r] : params) as unknown;
    const at = list ? `params[${r}]` : 'params';
    if (p === null || typeof p !== 'object' || Array.isArray(p))
      throw invalidArg(OP, at, 'an object of sampling parameters', p);
    const o = p as Record<string, unknown>;
    for (const k of Object.keys(o))
      if (!PARAM_KEYS.has(k) && o[k] !== undefined)
        throw invalidArg(
          OP,
          `${at}.${k}`,
          'no such parameter (temperature, topK, topP, minP)',
          o[k],
        );
    const num = (
      name: string,
      def: number,
      ok: (x: number) => boolean,
      expected: string,
    ): number => {
      const v = o[name];
      if (v === undefined) return def;
      if (typeof v !== 'number' || !ok(v)) throw invalidArg(OP, `${at}.${name}`, expected, v);
      return v;
    };
    const temperature = num(
      'temperature',
      1,
      (x) => x === 0 || (x > 0 && 1 / x < Infinity && x < Infinity),
      'a finite number >= 0 with a finite reciprocal (0 = greedy)',
    );
    const topK = num('topK', 0, (x) => Number.isInteger(x) && x >= 0, 'an integer >= 0 (0 = off)');
    const topP = num('topP', 1, (x) => x > 0 && x <= 1, 'a number in (0, 1] (1 = off)');
    const minP = num('minP', 0, (x) => x >= 0 && x <= 1, 'a number in [0, 1] (0 = off)');
    const rp = rowParams(vocab, temperature, topK, topP, minP);
    out.push(rp);
    if (!list) shared = rp;
  }
  return out;
}

function checkUniforms(uniforms: ArrayLike<number>, rows: number, ps: RowParams[]): Float64Array {
  if (
    uniforms === null ||
    typeof uniforms !== 'object' ||
    typeof (uniforms as { length?: unknown }).length !== 'number'
  )
    throw invalidArg(OP, 'uniforms', 'an array of numbers in [0, 1), one per row', uniforms);
  if (uniforms.length !== rows)
    throw new KernelError(
      `Expected ${rows} uniforms (one per row of logits) but received ${uniforms.length}`,
      { code: 'E_SHAPE', op: OP, arg: 'uniforms', backend: 'js' },
    );
  const us = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    if (ps[r].temperature === 0) continue; // greedy: u is not used (nor checked)
    const u = uniforms[r];
    if (typeof u !== 'number' || !(u >= 0 && u < 1))
      throw invalidArg(OP, `uniforms[${r}]`, 'a number in [0, 1)', u);
    us[r] = u;
  }
  return us;
}

// ---------------------------------------------------------------------------------------------
// Bad rows of logits: one wording for both backends (the device reports row, kind and index
// through its error word; the cpu path through the core's fail callback).

function rowError(op: string, backend: string, row: number, fault: LogitFault, index: number) {
  const msg =
    fault === 'nan'
      ? `logits[${row}, ${index}] is NaN; logits must be finite or -Infinity`
      : fault === 'posinf'
        ? `logits[${row}, ${index}] is +Infinity; logits must be finite or -Infinity`
        : `every logit of row ${row} is -Infinity (all tokens masked): nothing to sample`;
  return new KernelError(msg, { code: 'E_INVALID_ARG', op, arg: 'logits', backend });
}

// The cpu path's fail callback reads the row being sampled from here (no closure per row).
const cur = { op: OP, backend: 'cpu', row: 0 };
const cpuFail: LogitFail = (fault, index) => {
  throw rowError(cur.op, cur.backend, cur.row, fault, index);
};

const GREEDY = (vocab: number): RowParams => rowParams(vocab, 0, 0, 1, 0);

function run(
  a: LogitsArg,
  ps: RowParams[] | null,
  us: Float64Array | null,
  wantLogprob: boolean,
): Promise<SampleResult> {
  const { rows, vocab, op } = a;
  if (rows === 0)
    return Promise.resolve(
      wantLogprob
        ? { tokens: new Int32Array(0), logprobs: new Float32Array(0) }
        : { tokens: new Int32Array(0) },
    );
  const backend = a.t.runtime.backend;
  if (backend === 'cpu') {
    // Read in stream order now (later writes to logits do not leak in), sample when it lands.
    const read = a.t.read(a.stream);
    return read.then((raw) => {
      const x =
        a.t.dtype === 'f32'
          ? (raw as Float32Array)
          : Float32Array.from(decode(a.t.dtype as FloatDType, raw)); // f16/bf16 -> f32: exact
      const tokens = new Int32Array(rows);
      const lps = wantLogprob ? new Float32Array(rows) : undefined;
      const greedy = ps ? null : GREEDY(vocab);
      cur.op = op;
      cur.backend = backend;
      for (let r = 0; r < rows; r++) {
        cur.row = r;
        const st = prepareRow(
          x.subarray(r * vocab, (r + 1) * vocab),
          ps ? ps[r] : (greedy as RowParams),
          cpuFail,
        );
        const tok = draw(st, us ? us[r] : 0);
        tokens[r] = tok;
        if (lps) lps[r] = M_fround(logprobOf(st, tok));
      }
      return lps ? { tokens, logprobs: lps } : { tokens };
    });
  }
  // Device: one launch for every row. Parameters travel as 5 doubles per row (temperature, topP,
  // minP, u, effective topK); the result is one buffer: the error word (u64: ~0 = none, else
  // row << 32 | kind << 24 | index), tokens i32 [rows], then logprobs f32 [rows].
  let packed: Float64Array | null = null;
  if (ps && us) {
    packed = new Float64Array(rows * 5);
    for (let r = 0; r < rows; r++) {
      const p = ps[r];
      const o = r * 5;
      packed[o] = p.temperature;
      packed[o + 1] = p.topP;
      packed[o + 2] = p.minP;
      packed[o + 3] = us[r];
      packed[o + 4] = p.topK;
    }
  }
  const pending: Promise<ArrayBuffer> = binding().sample(
    a.stream.native,
    a.t.native,
    packed,
    wantLogprob,
  );
  return pending.then((buf) => {
    const w = new Uint32Array(buf, 0, 2);
    if (!(w[0] === 0xffffffff && w[1] === 0xffffffff)) {
      const row = w[1];
      const kind = w[0] >>> 24;
      const index = w[0] & 0xffffff;
      const fault: LogitFault | undefined =
        kind === 1 ? 'nan' : kind === 2 ? 'posinf' : kind === 3 ? 'masked' : undefined;
      if (fault === undefined)
        throw new KernelError(
          `sample: the device rejected row ${row}'s parameters (kind ${kind}, field ${index}) ` +
            `after they were checked on the host`,
          { code: 'E_INTERNAL', op, backend },
        );
      throw rowError(op, backend, row, fault, index);
    }
    const tokens = new Int32Array(buf, 8, rows);
    return wantLogprob
      ? { tokens, logprobs: new Float32Array(buf, 8 + 4 * rows, rows) }
      : { tokens };
  });
}
