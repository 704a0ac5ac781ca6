/**
 * Synthetic vocabularies for generated test models: deterministic functions of (size, seed)
 * that return the `tokenizer.ggml.*` metadata of a real, llama.cpp-loadable tokenizer.
 *
 * Both are trained with BPE on the built-in English + code corpus (corpus.ts) plus seeded
 * pseudo-words (so that any size can be reached and different seeds give different
 * vocabularies). The built-in text is weighted heavily, so the first merges are ordinary
 * English and code pieces (' the', 'ing', '▁and', ...).
 *
 * - syntheticSpmVocab: a SentencePiece-style 'llama' vocabulary: <unk>, <s>, </s>, the 256
 *   byte-fallback tokens <0x00>..<0xFF>, the merged pieces in training order, then the single
 *   characters. Scores are log-probabilities (log of the pair / character frequency); the
 *   merge scores never increase along the training order, so llama.cpp's highest-score-first
 *   merging reproduces the training merges.
 * - syntheticBpeVocab: a Llama 3 style 'gpt2' vocabulary: the 256 byte-level characters, the
 *   merged tokens with their merges, then the special tokens <|begin_of_text|>,
 *   <|end_of_text|>, <|start_header_id|>, <|end_header_id|>, <|eot_id|>.
 *
 * Value types are the ones llama.cpp reads: tokens / merges ARRAY of STRING, scores ARRAY of
 * FLOAT32, token_type ARRAY of INT32, ids UINT32, flags BOOL, model / pre STRING.
 */
import { invalidArg } from '../../runtime/errors';
import { GgufValueType } from '../gguf';
import type { GgufMetaEntry } from '../gguf-writer';
import { TokenType } from './core';
import { BUILTIN_CORPUS } from './corpus';
import { BYTE_LEVEL_ALPHABET, byteLevelEncode, PRE_TOKENIZERS, preTokenize } from './unicode';

const T = GgufValueType;
const M_log = Math.log;
const M_floor = Math.floor;

/** Weight of each occurrence of a built-in corpus word relative to a pseudo-word's. */
const CORPUS_WEIGHT = 40;
const MAX_SIZE = 1 << 20;

export const SPM_MIN_SIZE = 3 + 256 + 8;
export const BPE_SPECIAL_TOKENS = [
  '<|begin_of_text|>',
  '<|end_of_text|>',
  '<|start_header_id|>',
  '<|end_header_id|>',
  '<|eot_id|>',
] as const;
export const BPE_MIN_SIZE = 256 + BPE_SPECIAL_TOKENS.length + 1;

function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ONSETS = [
  '',
  '',
  '',
  'b',
  'c',
  'd',
  'f',
  'g',
  'h',
  'j',
  'k',
  'l',
  'm',
  'n',
  'p',
  'r',
  's',
  't',
  'v',
  'w',
  'z',
  'br',
  'cr',
  'dr',
  'fr',
  'gr',
  'pr',
  'tr',
  'st',
  'sp',
  'sk',
  'sl',
  'sh',
  'ch',
  'th',
  'ph',
  'qu',
  'str',
  'bl',
  'cl',
  'fl',
  'gl',
  'pl',
  'wh',
];
const NUCLEI = [
  'a',
  'e',
  'i',
  'o',
  'u',
  'a',
  'e',
  'o',
  'y',
  'ai',
  'ea',
  'ee',
  'oo',
  'ou',
  'ie',
  'io',
];
const CODAS = [
  '',
  '',
  '',
  'n',
  'r',
  's',
  't',
  'l',
  'm',
  'nd',
  'st',
  'ng',
  'ck',
  'rt',
  'x',
  'sh',
  'th',
];

/** `count` distinct pronounceable pseudo-words from `seed`, most "frequent" first. */
function pseudoWords(seed: number, count: number): string[] {
  const rnd = mulberry32(seed ^ 0x5eed1e55);
  const pick = (a: readonly string[]) => a[M_floor(rnd() * a.length)];
  const seen = new Set<string>();
  const out: string[] = [];
  while (out.length < count) {
    const syllables = 1 + M_floor(rnd() * rnd() * 4.999);
    let w = '';
    for (let s = 0; s < syllables; s++) w += pick(ONSETS) + pick(NUCLEI) + pick(CODAS);
    const r = rnd();
    if (r < 0.08) w = w[0].toUpperCase() + w.slice(1);
    else if (r < 0.1) w += String(M_floor(rnd() * 100));
    if (!seen.has(w)) {
      seen.add(w);
      out.push(w);
    }
  }
  return out;
}

/** Zipf-like frequency of the i-th pseudo-word. */
function pseudoCount(i: number): number {
  return 1 + M_floor(400 / (i + 1));
}

interface Merge {
  a: string;
  b: string;
  out: string;
  count: number;
}

/**
 * Plain BPE training (most frequent adjacent pair first; ties by first-seen symbol ids) with
 * incremental pair counts. Runs until `target` merges have produced strings that `accept`
 * takes (each string once), or no pairs are left.
 */
function trainBpe(
  words: string[][],
  counts: number[],
  target: number,
  accept: (s: string) => boolean,
): { merges: Merge[]; pieces: Merge[] } {
  const symStr: string[] = [];
  const symId = new Map<string, number>();
  const intern = (s: string): number => {
    let id = symId.get(s);
    if (id === undefined) {
      id = symStr.length;
      symStr.push(s);
      symId.set(s, id);
    }
    return id;
  };
  const seqs: number[][] = words.map((w) => w.map(intern));

  // Every distinct adjacent pair gets a dense id; per-pair data lives in arrays indexed by
  // it, and each word keeps the ids of its adjacent pairs, so removing a pair occurrence
  // needs no lookup (the lookups dominated the cost).
  const pairIds = new Map<number, number>();
  const pa: number[] = [];
  const pb: number[] = [];
  const pcount: number[] = [];
  const pwords: number[][] = [];
  const pstamp: number[] = [];
  const pairOf = (a: number, b: number): number => {
    const key = a * 0x200000 + b;
    let id = pairIds.get(key);
    if (id === undefined) {
      id = pa.length;
      pairIds.set(key, id);
      pa.push(a);
      pb.push(b);
      pcount.push(0);
      pwords.push([]);
      pstamp.push(-1);
    }
    return id;
  };
  const pids: number[][] = new Array(seqs.length);
  for (let w = 0; w < seqs.length; w++) {
    const s = seqs[w];
    const ids: number[] = new Array(Math.max(0, s.length - 1));
    for (let i = 0; i + 1 < s.length; i++) {
      const id = pairOf(s[i], s[i + 1]);
      ids[i] = id;
      pcount[id] += counts[w];
      const ws = pwords[id];
      if (ws[ws.length - 1] !== w) ws.push(w);
    }
    pids[w] = ids;
  }

  // Max-heap of (count, pair id) with lazy invalidation; ties: the pair of smaller symbol ids.
  const hc: number[] = [];
  const hp: number[] = [];
  const better = (i: number, j: number) => {
    if (hc[i] !== hc[j]) return hc[i] > hc[j];
    const x = hp[i];
    const y = hp[j];
    return pa[x] < pa[y] || (pa[x] === pa[y] && pb[x] < pb[y]);
  };
  const swap = (i: number, j: number) => {
    let t = hc[i];
    hc[i] = hc[j];
    hc[j] = t;
    t = hp[i];
    hp[i] = hp[j];
    hp[j] = t;
  };
  const push = (c: number, p: number) => {
    let i = hc.length;
    hc.push(c);
    hp.push(p);
    while (i > 0) {
      const q = (i - 1) >> 1;
      if (!better(i, q)) break;
      swap(i, q);
      i = q;
    }
  };
  const pop = () => {
    const last = hc.length - 1;
    swap(0, last);
    hc.pop();
    hp.pop();
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= hc.length) break;
      const r = l + 1;
      const c = r < hc.length && better(r, l) ? r : l;
      if (!better(c, i)) break;
      swap(i, c);
      i = c;
    }
  };
  for (let p = 0; p < pa.length; p++) push(pcount[p], p);

  const merges: Merge[] = [];
  const pieces: Merge[] = [];
  const emitted = new Set<string>();
  const wstamp = new Int32Array(seqs.length).fill(-1);
  const changed: number[] = [];
  let inMerge = new Uint8Array(64);
  while (pieces.length < target && hc.length > 0) {
    const c = hc[0];
    const pid = hp[0];
    pop();
    if (pcount[pid] !== c || c <= 0) continue; // stale
    const a = pa[pid];
    const b = pb[pid];
    const out = symStr[a] + symStr[b];
    const ab = intern(out);
    const m: Merge = { a: symStr[a], b: symStr[b], out, count: c };
    merges.push(m);
    if (!emitted.has(out) && accept(out)) {
      emitted.add(out);
      pieces.push(m);
    }
    const n = merges.length;
    changed.length = 0;
    const touch = (p: number) => {
      if (pstamp[p] !== n) {
        pstamp[p] = n;
        changed.push(p);
      }
    };
    const ws = pwords[pid];
    pwords[pid] = [];
    for (const w of ws) {
      if (wstamp[w] === n) continue;
      wstamp[w] = n;
      const s = seqs[w];
      const sp = pids[w];
      const len = s.length;
      if (inMerge.length < len) inMerge = new Uint8Array(2 * len);
      // Mark the merged positions (left to right, non-overlapping).
      let any = false;
      for (let i = 0; i < len; i++) inMerge[i] = 0;
      for (let i = 0; i + 1 < len; i++)
        if (sp[i] === pid) {
          inMerge[i] = 1;
          inMerge[i + 1] = 2;
          any = true;
          i++;
        }
      if (!any) continue; // stale entry of the word list
      const cnt = counts[w];
      // Only pairs touching a merged position change.
      for (let i = 0; i + 1 < len; i++)
        if (inMerge[i] || inMerge[i + 1]) {
          pcount[sp[i]] -= cnt;
          touch(sp[i]);
        }
      const t: number[] = [];
      const fresh: boolean[] = [];
      for (let i = 0; i < len; i++) {
        if (inMerge[i] === 1) {
          t.push(ab);
          fresh.push(true);
          i++;
        } else {
          t.push(s[i]);
          fresh.push(false);
        }
      }
      const tp: number[] = new Array(Math.max(0, t.length - 1));
      let j = 0; // position in s of t[i]
      for (let i = 0; i + 1 < t.length; i++) {
        if (fresh[i] || fresh[i + 1]) {
          const p = pairOf(t[i], t[i + 1]);
          tp[i] = p;
          pcount[p] += cnt;
          const pw = pwords[p];
          if (pw[pw.length - 1] !== w) pw.push(w);
          touch(p);
        } else tp[i] = sp[j];
        j += fresh[i] ? 2 : 1;
      }
      seqs[w] = t;
      pids[w] = tp;
    }
    for (const p of changed) if (pcount[p] > 0) push(pcount[p], p);
  }
  return { merges, pieces };
}

// Training a 32k vocabulary takes about a second; test suites ask for the same ones often.
const memoCache = new Map<string, GgufMetaEntry[]>();

function memo(key: string, build: () => GgufMetaEntry[]): GgufMetaEntry[] {
  let entries = memoCache.get(key);
  if (entries === undefined) {
    entries = build();
    if (memoCache.size >= 8) memoCache.delete(memoCache.keys().next().value as string);
    memoCache.set(key, entries);
  }
  // Fresh arrays for every caller: entries are plain data that callers may modify.
  return entries.map((e) => ({
    ...e,
    value: Array.isArray(e.value) || ArrayBuffer.isView(e.value) ? e.value.slice() : e.value,
  })) as GgufMetaEntry[];
}

function checkOpts(op: string, opts: { size: number; seed: number }, min: number): void {
  if (opts === null || typeof opts !== 'object') throw invalidArg(op, 'opts', 'an object', opts);
  const { size, seed } = opts;
  if (typeof size !== 'number' || !Number.isInteger(size) || size < min || size > MAX_SIZE)
    throw invalidArg(op, 'size', `an integer in [${min}, ${MAX_SIZE}]`, size);
  if (typeof seed !== 'number' || !Number.isInteger(seed))
    throw invalidArg(op, 'seed', 'an integer', seed);
}

/** Word counts of the built-in corpus split by `split`, plus `extra` pseudo-words. */
function trainingWords(
  split: (text: string) => string[],
  pseudo: string[],
  wrap: (w: string) => string,
): Map<string, number> {
  const counts = new Map<string, number>();
  for (const w of split(BUILTIN_CORPUS)) counts.set(w, (counts.get(w) ?? 0) + CORPUS_WEIGHT);
  for (let i = 0; i < pseudo.length; i++) {
    const w = wrap(pseudo[i]);
    counts.set(w, (counts.get(w) ?? 0) + pseudoCount(i));
  }
  return counts;
}

/**
 * A SentencePiece ('llama') vocabulary of exactly `size` tokens (>= 267), deterministic in
 * (size, seed): <unk> 0, <s> 1, </s> 2, <0x00>..<0xFF> 3..258, merged pieces, characters.
 */
export function syntheticSpmVocab(opts: { size: number; seed: number }): GgufMetaEntry[] {
  checkOpts('syntheticSpmVocab', opts, SPM_MIN_SIZE);
  return memo(`spm:${opts.size}:${opts.seed}`, () => buildSpm(opts.size, opts.seed));
}

function buildSpm(size: number, seed: number): GgufMetaEntry[] {
  const budget = size - 259;
  const special = ['<unk>', '<s>', '</s>'];
  const bytes: string[] = [];
  for (let b = 0; b < 256; b++) bytes.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
  const reserved = new Set<string>([...special, ...bytes]);

  // SentencePiece-like words: whitespace-separated, '▁' in front, and split where the kind of
  // character changes (letters / single digits / other), like split_by_unicode_script and
  // split_digits do, so pieces look like Llama's ('▁time' and ',' rather than '▁time,').
  const splitWords = (text: string) => {
    const out: string[] = [];
    for (const w of text.split(/[\t\n\v\f\r ]+/)) {
      if (w.length === 0) continue;
      const parts = w.match(/\p{L}[\p{L}\p{M}]*|\p{N}|[^\p{L}\p{N}]+/gu) ?? [w];
      out.push('\u2581' + parts[0], ...parts.slice(1));
    }
    return out;
  };
  let want = Math.ceil(budget * 0.7) + 200;
  for (;;) {
    const counts = trainingWords(splitWords, pseudoWords(seed, want), (w) => '\u2581' + w);
    const words: string[][] = [];
    const wc: number[] = [];
    const charCount = new Map<string, number>();
    let total = 0;
    for (const [w, c] of counts) {
      const chars = Array.from(w);
      words.push(chars);
      wc.push(c);
      for (const ch of chars) {
        if ((ch.codePointAt(0) as number) < 0x20) continue;
        charCount.set(ch, (charCount.get(ch) ?? 0) + c);
        total += c;
      }
    }
    // Characters by frequency ('▁' is the most frequent), then by code point.
    const chars = [...charCount.entries()].sort((x, y) => y[1] - x[1] || (x[0] < y[0] ? -1 : 1));
    const nChars = Math.min(chars.length, budget);
    const nMerged = budget - nChars;
    const { pieces } = trainBpe(words, wc, nMerged, (s) => !reserved.has(s) && !charCount.has(s));
    if (pieces.length < nMerged) {
      want *= 2; // not enough distinct pieces in this corpus: train on more pseudo-words
      continue;
    }
    const tokens = [...special, ...bytes];
    const scores = new Float32Array(size);
    const types = new Int32Array(size);
    types[0] = TokenType.UNKNOWN;
    types[1] = TokenType.CONTROL;
    types[2] = TokenType.CONTROL;
    for (let i = 3; i < 259; i++) types[i] = TokenType.BYTE;
    for (const p of pieces) {
      scores[tokens.length] = M_log(p.count / total);
      types[tokens.length] = TokenType.NORMAL;
      tokens.push(p.out);
    }
    for (let i = 0; i < nChars; i++) {
      scores[tokens.length] = M_log(chars[i][1] / total);
      types[tokens.length] = TokenType.NORMAL;
      tokens.push(chars[i][0]);
    }
    return [
      { key: 'tokenizer.ggml.model', type: T.STRING, value: 'llama' },
      { key: 'tokenizer.ggml.tokens', type: T.ARRAY, arrayType: T.STRING, value: tokens },
      { key: 'tokenizer.ggml.scores', type: T.ARRAY, arrayType: T.FLOAT32, value: scores },
      { key: 'tokenizer.ggml.token_type', type: T.ARRAY, arrayType: T.INT32, value: types },
      { key: 'tokenizer.ggml.bos_token_id', type: T.UINT32, value: 1 },
      { key: 'tokenizer.ggml.eos_token_id', type: T.UINT32, value: 2 },
      { key: 'tokenizer.ggml.unknown_token_id', type: T.UINT32, value: 0 },
      { key: 'tokenizer.ggml.add_bos_token', type: T.BOOL, value: true },
      { key: 'tokenizer.ggml.add_eos_token', type: T.BOOL, value: false },
    ];
  }
}

/**
 * A byte-level BPE ('gpt2') vocabulary of exactly `size` tokens (>= 262), deterministic in
 * (size, seed, pre): 256 byte-level characters, merged tokens, then the special tokens
 * (BPE_SPECIAL_TOKENS; bos = <|begin_of_text|>, eos = <|end_of_text|>, eot = <|eot_id|>).
 * `pre` is written as tokenizer.ggml.pre and is the pre-tokenizer the merges are trained
 * under: 'llama-bpe' (Llama 3, the default) or 'default'.
 */
export function syntheticBpeVocab(opts: {
  size: number;
  seed: number;
  pre?: 'llama-bpe' | 'default';
}): GgufMetaEntry[] {
  checkOpts('syntheticBpeVocab', opts, BPE_MIN_SIZE);
  const pre = opts.pre ?? 'llama-bpe';
  if (pre !== 'llama-bpe' && pre !== 'default')
    throw invalidArg('syntheticBpeVocab', 'pre', "'llama-bpe' or 'default'", pre);
  return memo(`bpe:${opts.size}:${opts.seed}:${pre}`, () => buildBpe(opts.size, opts.seed, pre));
}

function buildBpe(size: number, seed: number, pre: 'llama-bpe' | 'default'): GgufMetaEntry[] {
  const family = PRE_TOKENIZERS[pre].family;
  const nMerged = size - 256 - BPE_SPECIAL_TOKENS.length;
  const reserved = new Set<string>([...BYTE_LEVEL_ALPHABET, ...BPE_SPECIAL_TOKENS]);

  let want = Math.ceil(nMerged * 0.7) + 200;
  for (;;) {
    const counts = trainingWords(
      (text) => preTokenize(text, family),
      pseudoWords(seed, want),
      (w) => ' ' + w, // as in running text: the pre-tokenizers keep the space before a word
    );
    const words: string[][] = [];
    const wc: number[] = [];
    for (const [w, c] of counts) {
      words.push(Array.from(byteLevelEncode(w)));
      wc.push(c);
    }
    const { merges, pieces } = trainBpe(words, wc, nMerged, (s) => !reserved.has(s));
    if (pieces.length < nMerged) {
      want *= 2;
      continue;
    }
    const tokens = [...BYTE_LEVEL_ALPHABET, ...pieces.map((p) => p.out), ...BPE_SPECIAL_TOKENS];
    const types = new Int32Array(size).fill(TokenType.NORMAL);
    const first = size - BPE_SPECIAL_TOKENS.length;
    for (let i = first; i < size; i++) types[i] = TokenType.CONTROL;
    // The merges up to the one that produced the last token (later ones would name strings
    // that are not tokens).
    const last = pieces[pieces.length - 1];
    const used = nMerged === 0 ? [] : merges.slice(0, merges.indexOf(last) + 1);
    return [
      { key: 'tokenizer.ggml.model', type: T.STRING, value: 'gpt2' },
      { key: 'tokenizer.ggml.pre', type: T.STRING, value: pre },
      { key: 'tokenizer.ggml.tokens', type: T.ARRAY, arrayType: T.STRING, value: tokens },
      { key: 'tokenizer.ggml.token_type', type: T.ARRAY, arrayType: T.INT32, value: types },
      {
        key: 'tokenizer.ggml.merges',
        type: T.ARRAY,
        arrayType: T.STRING,
        value: used.map((m) => `${m.a} ${m.b}`),
      },
      { key: 'tokenizer.ggml.bos_token_id', type: T.UINT32, value: first },
      { key: 'tokenizer.ggml.eos_token_id', type: T.UINT32, value: first + 1 },
      { key: 'tokenizer.ggml.eot_token_id', type: T.UINT32, value: first + 4 },
      { key: 'tokenizer.ggml.add_bos_token', type: T.BOOL, value: true },
      { key: 'tokenizer.ggml.add_eos_token', type: T.BOOL, value: false },
    ];
  }
}
