/**
 * Tokenizers of GGUF models, behaving like llama.cpp's (src/llama-vocab.cpp):
 *
 * - SPM (`tokenizer.ggml.model = 'llama'`): SentencePiece BPE as llama.cpp runs it. Spaces are
 *   escaped to U+2581 '▁', a '▁' is prefixed to every text fragment that starts the input or
 *   follows a special token (add_space_prefix), the fragment is split into code points, and
 *   adjacent pairs whose concatenation is a vocabulary piece are merged, highest score first
 *   (ties: leftmost). Pieces that are not in the vocabulary fall back to <0xXX> byte tokens.
 * - BPE (`tokenizer.ggml.model = 'gpt2'`): byte-level BPE. The text is split by the
 *   pre-tokenizer named by `tokenizer.ggml.pre` (unicode.ts), each word's UTF-8 bytes are
 *   written in GPT-2's byte alphabet, and adjacent pairs are merged by rank from
 *   `tokenizer.ggml.merges` (lowest rank first, ties leftmost). Words are cached.
 *
 * Special tokens (CONTROL, USER_DEFINED, UNKNOWN types) are cut out of the text first,
 * longest first (tokenizer_st_partition). CONTROL and UNKNOWN ones only with parseSpecial;
 * USER_DEFINED ones always, as llama.cpp and Hugging Face do.
 *
 * detokenize follows llama_detokenize(remove_special, unparse_special): pieces are
 * concatenated as bytes and decoded as UTF-8 at the end (invalid sequences become U+FFFD).
 * When the vocabulary adds a space prefix, ONE leading space of the first token's piece is
 * removed, unless the ids start with BOS: llama.cpp strips it only when the first id is not
 * BOS. So for SPM, detokenize(tokenize(s)) is ' ' + s with BOS and s without (non-empty s; a
 * literal '▁' in s comes back as a space, as in llama.cpp). BPE vocabularies then apply
 * llama.cpp's clean_spaces pass (" ." -> ".", " 's" -> "'s", ...) where the pre-tokenizer asks
 * for it (Llama 3 does), so there detokenize(tokenize(s)) is cleanUpSpaces(s).
 *
 * Checked against llama.cpp (node-llama-cpp 3.22.1, vocab-only loads): tokenize with and
 * without parseSpecial and detokenize with and without unparseSpecial agree on stories260K,
 * synthetic SPM / BPE ('llama-bpe', 'default') vocabularies, the test corpus and random text.
 */
import { TextDecoder } from 'node:util';
import { describe, invalidArg, KernelError } from '../../runtime/errors';
import type { GgufFile, GgufValue } from '../gguf';
import { BigramHeap } from './heap';
import {
  byteLevelEncode,
  CHAR_TO_BYTE,
  PRE_TOKENIZERS,
  preTokenize,
  PreFamily,
  utf8Encode,
  utf8Length,
} from './unicode';

// ---- public types ----------------------------------------------------------------------------

export interface TokenizeOptions {
  /** Add BOS / EOS as the vocabulary asks (add_bos_token / add_eos_token). Default true. */
  addSpecial?: boolean;
  /** Recognise CONTROL / UNKNOWN token texts such as `<|eot_id|>` in the text. Default false. */
  parseSpecial?: boolean;
}

export interface DetokenizeOptions {
  /** llama.cpp's remove_special: drop a leading BOS (when add_bos) and a trailing EOS (when add_eos). Default false. */
  removeSpecial?: boolean;
  /** llama.cpp's unparse_special: render CONTROL / UNKNOWN tokens as their text instead of ''. Default false. */
  unparseSpecial?: boolean;
}

export interface DetokenizeStreamOptions {
  /** Render CONTROL / UNKNOWN tokens as their text instead of ''. Default false. */
  unparseSpecial?: boolean;
}

export interface Tokenizer {
  readonly kind: 'spm' | 'bpe';
  readonly vocabSize: number;
  readonly bos: number | undefined;
  readonly eos: number | undefined;
  readonly eot?: number;
  readonly addBos: boolean;
  readonly addEos: boolean;
  tokenize(text: string, options?: TokenizeOptions): Int32Array;
  detokenize(ids: ArrayLike<number>, options?: DetokenizeOptions): string;
  /** The raw vocabulary piece, e.g. '▁Once', '<0x0A>', 'Ġhello', '<|eot_id|>'. */
  tokenPiece(id: number): string;
  /** EOS, EOT, EOM and the other end-of-generation tokens llama.cpp recognises. */
  isEog(id: number): boolean;
  /** A streaming detokenizer: push() returns only complete text (never half a UTF-8 char). */
  createStream(options?: DetokenizeStreamOptions): DetokenizeStream;
}

export interface DetokenizeStream {
  /** Text that became complete with this token; '' while a character is still incomplete. */
  push(id: number): string;
  /** The rest (incomplete bytes become U+FFFD); the stream then starts over. */
  flush(): string;
}

// ---- token attributes (llama_token_attr) and types (llama_token_type) --------------------------

export const TokenType = {
  UNDEFINED: 0,
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

const A_UNKNOWN = 1 << 0;
const A_UNUSED = 1 << 1;
const A_NORMAL = 1 << 2;
const A_CONTROL = 1 << 3;
const A_USER_DEFINED = 1 << 4;
const A_BYTE = 1 << 5;
const A_LSTRIP = 1 << 7;
const A_RSTRIP = 1 << 8;

const TYPE_TO_ATTR = [0, A_NORMAL, A_UNKNOWN, A_CONTROL, A_USER_DEFINED, A_UNUSED, A_BYTE];

// ---- metadata keys ----------------------------------------------------------------------------

const K = {
  model: 'tokenizer.ggml.model',
  pre: 'tokenizer.ggml.pre',
  tokens: 'tokenizer.ggml.tokens',
  scores: 'tokenizer.ggml.scores',
  tokenType: 'tokenizer.ggml.token_type',
  merges: 'tokenizer.ggml.merges',
  bos: 'tokenizer.ggml.bos_token_id',
  eos: 'tokenizer.ggml.eos_token_id',
  eot: 'tokenizer.ggml.eot_token_id',
  eom: 'tokenizer.ggml.eom_token_id',
  unk: 'tokenizer.ggml.unknown_token_id',
  sep: 'tokenizer.ggml.seperator_token_id', // sic, as llama.cpp spells it
  pad: 'tokenizer.ggml.padding_token_id',
  fimPad: 'tokenizer.ggml.fim_pad_token_id',
  fimRep: 'tokenizer.ggml.fim_rep_token_id',
  fimSep: 'tokenizer.ggml.fim_sep_token_id',
  addBos: 'tokenizer.ggml.add_bos_token',
  addEos: 'tokenizer.ggml.add_eos_token',
  addPrefix: 'tokenizer.ggml.add_space_prefix',
  name: 'general.name',
} as const;

/** Texts by which llama.cpp recognises EOT / EOM / FIM tokens a file does not name. */
const EOT_TEXTS = [
  '<|eot_id|>',
  '<|im_end|>',
  '<|end|>',
  '<end_of_turn>',
  '<|endoftext|>',
  '<|end_of_text|>',
  '<EOT>',
  '_<EOT>',
  '[EOT]',
  '<｜end▁of▁sentence｜>',
  '<end_of_utterance>',
];
const EOM_TEXTS = ['<|eom_id|>'];
const FIM_PAD_TEXTS = ['<|fim_pad|>', '<fim-pad>', '<fim_pad>', '<PAD>', '[PAD]'];
const FIM_REP_TEXTS = ['<|fim_repo|>', '<|repo_name|>', '<fim-repo>', '<REPO>', '<reponame>'];
const FIM_SEP_TEXTS = ['<|file_sep|>'];
/** Texts that end generation (llama.cpp's special_eog_ids list). */
const EOG_TEXTS = [
  '<|eot_id|>',
  '<|im_end|>',
  '<|end|>',
  '<end_of_turn>',
  '<|endoftext|>',
  '<|eom_id|>',
  '<EOT>',
  '_<EOT>',
  '[EOT]',
  '[EOS]',
  '<|end_of_text|>',
  '<end_of_utterance>',
  '<｜end▁of▁sentence｜>',
];

const OP = 'tokenizerFromMetadata';
const EMPTY = new Uint8Array(0);
const SPACE_ESC = '\u2581';
const WORD_CACHE_MAX = 1 << 16;

function formatError(key: string, msg: string): KernelError {
  return new KernelError(msg, { code: 'E_MODEL_FORMAT', op: OP, arg: key, backend: 'js' });
}

// ---- metadata accessors (tolerant of the reader's value representations) ----------------------

type Meta = ReadonlyMap<string, GgufValue>;

function str(meta: Meta, key: string): string | undefined {
  const v = meta.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'string')
    throw formatError(key, `Expected metadata ${key} to be a string but received ${describe(v)}`);
  return v;
}

function bool(meta: Meta, key: string): boolean | undefined {
  const v = meta.get(key);
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean')
    throw formatError(key, `Expected metadata ${key} to be a bool but received ${describe(v)}`);
  return v;
}

function int(meta: Meta, key: string): number | undefined {
  const v = meta.get(key);
  if (v === undefined) return undefined;
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n))
    throw formatError(
      key,
      `Expected metadata ${key} to be an integer token id but received ${describe(v)}`,
    );
  return n;
}

function stringArray(meta: Meta, key: string): string[] | undefined {
  const v = meta.get(key);
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || (v.length > 0 && typeof v[0] !== 'string'))
    throw formatError(
      key,
      `Expected metadata ${key} to be an array of strings but received ${describe(v)}`,
    );
  const a = v as unknown[];
  for (let i = 0; i < a.length; i++)
    if (typeof a[i] !== 'string')
      throw formatError(
        key,
        `Expected metadata ${key} to be an array of strings but element ${i} is ${describe(a[i])}`,
      );
  return a as string[];
}

function numberArray(
  meta: Meta,
  key: string,
  n: number,
  integers: boolean,
): ArrayLike<number> | undefined {
  const v = meta.get(key);
  if (v === undefined) return undefined;
  const ok =
    v instanceof Float32Array ||
    v instanceof Float64Array ||
    v instanceof Int32Array ||
    v instanceof Uint32Array ||
    v instanceof Int16Array ||
    v instanceof Uint16Array ||
    v instanceof Int8Array ||
    v instanceof Uint8Array ||
    (ArrayBuffer.isView(v) &&
      !(v instanceof DataView) &&
      !(v instanceof BigInt64Array) &&
      !(v instanceof BigUint64Array)) ||
    (Array.isArray(v) && v.every((x) => typeof x === 'number'));
  if (!ok)
    throw formatError(
      key,
      `Expected metadata ${key} to be an array of numbers but received ${describe(v)}`,
    );
  const a = v as unknown as ArrayLike<number>;
  if (a.length !== n)
    throw formatError(
      key,
      `Metadata ${key} has ${a.length} entries but tokenizer.ggml.tokens has ${n}`,
    );
  if (integers)
    for (let i = 0; i < n; i++)
      if (!Number.isInteger(a[i]))
        throw formatError(key, `Metadata ${key}[${i}] = ${a[i]} is not an integer`);
  return a;
}

function toWellFormed(s: string): string {
  // Lone surrogates become U+FFFD, exactly what their UTF-8 conversion (and llama.cpp's
  // decoding of invalid UTF-8) makes of them. Most strings have no surrogates at all.
  if (!/[\ud800-\udfff]/.test(s)) return s;
  return s.replace(
    /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g,
    '\ufffd',
  );
}

function isCSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d); // C isspace()
}

/** llama.cpp's clean_spaces passes, on decoded text (they only look at ASCII). */
export function cleanUpSpaces(s: string): string {
  if (s.indexOf(' ') < 0) return s;
  return s
    .replace(/ (?=[?!.,])/g, '')
    .replace(/ ' /g, "'")
    .replace(/ (?='(?:[sm]|re|ve))/g, '');
}

// ---- the tokenizer ----------------------------------------------------------------------------

interface Settings {
  kind: 'spm' | 'bpe';
  texts: string[];
  attrs: Uint16Array;
  scores: Float32Array;
  ids: Map<string, number>;
  bos: number | undefined;
  eos: number | undefined;
  eot: number | undefined;
  eom: number | undefined;
  unk: number | undefined;
  addBos: boolean;
  addEos: boolean;
  addSpacePrefix: boolean;
  cleanSpaces: boolean;
  ignoreMerges: boolean;
  pre: string | undefined;
  family: PreFamily;
  ranks: Map<string, number>;
  eog: Set<number>;
}

export class LlamaTokenizer implements Tokenizer {
  readonly kind: 'spm' | 'bpe';
  readonly vocabSize: number;
  readonly bos: number | undefined;
  readonly eos: number | undefined;
  readonly eot: number | undefined;
  readonly eom: number | undefined;
  readonly unk: number | undefined;
  readonly addBos: boolean;
  readonly addEos: boolean;
  /** SPM: '▁' is prefixed to text fragments, and one leading space is removed on detokenize. */
  readonly addSpacePrefix: boolean;
  /** llama.cpp's clean_spaces (BPE): detokenize removes spaces before punctuation and contractions. */
  readonly cleanSpaces: boolean;
  /** `tokenizer.ggml.pre` (BPE), as given. */
  readonly pre: string | undefined;

  private readonly texts: string[];
  private readonly attrs: Uint16Array;
  private readonly scores: Float32Array;
  private readonly ids: Map<string, number>;
  private readonly ignoreMerges: boolean;
  private readonly family: PreFamily;
  private readonly ranks: Map<string, number>;
  private readonly eog: Set<number>;
  /** Special tokens in partition order (longest UTF-8 text first). */
  private readonly specialOrder: number[];
  /** SPM byte fallback: token of each byte, -1 when the vocabulary has none. */
  private readonly byteTokens: Int32Array;
  /** Piece bytes with special tokens rendered (llama.cpp's cache_token_to_piece), lazily. */
  private readonly pieces: (Uint8Array | undefined)[];
  private readonly wordCache = new Map<string, number[]>();
  private spmPairs: Set<number> | undefined;
  private readonly heap = new BigramHeap();
  // Symbol scratch of the merge loops, grown on demand.
  private symStart = new Int32Array(256);
  private symLen = new Int32Array(256);
  private symPrev = new Int32Array(256);
  private symNext = new Int32Array(256);
  private readonly decoder = new TextDecoder('utf-8', { ignoreBOM: true });

  /** @internal use tokenizerFromMetadata / tokenizerFromGguf. */
  constructor(s: Settings) {
    this.kind = s.kind;
    this.vocabSize = s.texts.length;
    this.texts = s.texts;
    this.attrs = s.attrs;
    this.scores = s.scores;
    this.ids = s.ids;
    this.bos = s.bos;
    this.eos = s.eos;
    this.eot = s.eot;
    this.eom = s.eom;
    this.unk = s.unk;
    this.addBos = s.addBos;
    this.addEos = s.addEos;
    this.addSpacePrefix = s.addSpacePrefix;
    this.cleanSpaces = s.cleanSpaces;
    this.ignoreMerges = s.ignoreMerges;
    this.pre = s.pre;
    this.family = s.family;
    this.ranks = s.ranks;
    this.eog = s.eog;
    this.pieces = new Array(this.vocabSize);

    const special: number[] = [];
    const blen = new Map<number, number>();
    for (let id = 0; id < this.vocabSize; id++)
      if (this.attrs[id] & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN)) {
        special.push(id);
        blen.set(id, utf8Length(this.texts[id]));
      }
    // Longest first (llama.cpp sorts by byte length); equal lengths by id (Array sort is stable).
    special.sort((a, b) => (blen.get(b) as number) - (blen.get(a) as number));
    this.specialOrder = special;

    this.byteTokens = new Int32Array(256).fill(-1);
    if (this.kind === 'spm') {
      for (let b = 0; b < 256; b++) {
        const hex = b.toString(16).toUpperCase().padStart(2, '0');
        let id = this.ids.get(`<0x${hex}>`);
        // llama.cpp falls back to the byte itself as a piece (only ASCII can be one here).
        if (id === undefined && b < 0x80) id = this.ids.get(String.fromCharCode(b));
        if (id !== undefined) this.byteTokens[b] = id;
      }
    }
  }

  // ---- tokenize ----

  tokenize(text: string, options?: TokenizeOptions): Int32Array {
    if (typeof text !== 'string') throw invalidArg('tokenize', 'text', 'a string', text);
    if (options !== undefined && (options === null || typeof options !== 'object'))
      throw invalidArg('tokenize', 'options', 'an object', options);
    const addSpecial = options?.addSpecial ?? true;
    const parseSpecial = options?.parseSpecial ?? false;
    text = toWellFormed(text);
    const frags = text.length > 0 ? this.partition(text, parseSpecial) : [];
    const out: number[] = [];
    if (addSpecial && this.addBos) out.push(this.bos as number); // checked at load
    if (this.kind === 'spm') {
      // A '▁' goes in front of the first fragment and of every fragment after a special token.
      let prevSpecial = true;
      for (const f of frags) {
        if (typeof f === 'number') {
          out.push(f);
          prevSpecial = true;
          continue;
        }
        const s = this.addSpacePrefix && prevSpecial ? ' ' + f : f;
        this.spmFragment(s.replaceAll(' ', SPACE_ESC), out);
        prevSpecial = false;
      }
    } else {
      for (const f of frags) {
        if (typeof f === 'number') out.push(f);
        else this.bpeFragment(f, out);
      }
    }
    if (addSpecial && this.addEos) out.push(this.eos as number);
    return Int32Array.from(out);
  }

  /** Cuts special-token texts out of `text` (tokenizer_st_partition). */
  private partition(text: string, parseSpecial: boolean): (string | number)[] {
    let frags: (string | number)[] = [text];
    for (const id of this.specialOrder) {
      const a = this.attrs[id];
      if (!parseSpecial && a & (A_CONTROL | A_UNKNOWN)) continue;
      const t = this.texts[id];
      if (text.indexOf(t) < 0) continue; // fragments are substrings of text
      const next: (string | number)[] = [];
      for (const f of frags) {
        if (typeof f === 'number') {
          next.push(f);
          continue;
        }
        let pos = 0;
        for (;;) {
          const m = f.indexOf(t, pos);
          if (m < 0) break;
          let leftEnd = m;
          if (a & A_LSTRIP) while (leftEnd > pos && isCSpace(f.charCodeAt(leftEnd - 1))) leftEnd--;
          if (leftEnd > pos) next.push(f.slice(pos, leftEnd));
          next.push(id);
          pos = m + t.length;
          if (a & A_RSTRIP) while (pos < f.length && isCSpace(f.charCodeAt(pos))) pos++;
        }
        if (pos < f.length) next.push(pos === 0 ? f : f.slice(pos));
      }
      frags = next;
    }
    return frags;
  }

  private ensureSymbols(n: number): void {
    if (this.symStart.length >= n) return;
    let cap = this.symStart.length;
    while (cap < n) cap *= 2;
    this.symStart = new Int32Array(cap);
    this.symLen = new Int32Array(cap);
    this.symPrev = new Int32Array(cap);
    this.symNext = new Int32Array(cap);
  }

  /**
   * llm_tokenizer_spm_session::tokenize on escaped text, done chunk by chunk: text is cut
   * between two characters that are adjacent in no vocabulary piece. No merge can ever cross
   * such a cut (every merged pair is a piece), and merges on the two sides never interact, so
   * the result equals one merge loop over the whole text, while chunks (in practice words
   * with their '▁') can be cached like BPE words.
   */
  private spmFragment(text: string, out: number[]): void {
    const pairs = (this.spmPairs ??= this.buildSpmPairs());
    const n = text.length;
    let chunkStart = 0;
    let prev = -1;
    for (let i = 0; i < n;) {
      const c = text.codePointAt(i) as number;
      if (prev >= 0 && !pairs.has(prev * 0x110000 + c)) {
        this.spmChunk(text.slice(chunkStart, i), out);
        chunkStart = i;
      }
      prev = c;
      i += c > 0xffff ? 2 : 1;
    }
    if (chunkStart < n) this.spmChunk(chunkStart === 0 ? text : text.slice(chunkStart), out);
  }

  /** Every pair of adjacent code points inside a vocabulary piece, as cp1 * 0x110000 + cp2. */
  private buildSpmPairs(): Set<number> {
    const pairs = new Set<number>();
    for (const t of this.texts) {
      let prev = -1;
      for (let i = 0; i < t.length;) {
        const c = t.codePointAt(i) as number;
        if (prev >= 0) pairs.add(prev * 0x110000 + c);
        prev = c;
        i += c > 0xffff ? 2 : 1;
      }
    }
    return pairs;
  }

  private spmChunk(chunk: string, out: number[]): void {
    const cache = this.wordCache;
    let ids = cache.get(chunk);
    if (ids === undefined) {
      ids = [];
      this.spmMerge(chunk, ids);
      if (cache.size >= WORD_CACHE_MAX) cache.clear();
      cache.set(chunk, ids);
    }
    for (let i = 0; i < ids.length; i++) out.push(ids[i]);
  }

  /** The SPM merge loop proper. */
  private spmMerge(text: string, out: number[]): void {
    const n = text.length;
    this.ensureSymbols(n);
    const start = this.symStart;
    const len = this.symLen;
    const prev = this.symPrev;
    const next = this.symNext;
    const ids = this.ids;
    const scores = this.scores;
    const heap = this.heap;
    // One symbol per code point (llama.cpp: per UTF-8 character).
    let count = 0;
    for (let i = 0; i < n;) {
      const c = text.charCodeAt(i);
      const w =
        c >= 0xd800 && c <= 0xdbff && i + 1 < n && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00
          ? 2
          : 1;
      start[count] = i;
      len[count] = w;
      prev[count] = count - 1;
      next[count] = count + 1;
      count++;
      i += w;
    }
    if (count === 0) return;
    next[count - 1] = -1;

    heap.clear();
    const tryAdd = (l: number, r: number): void => {
      if (l < 0 || r < 0) return;
      const size = len[l] + len[r];
      const id = ids.get(text.substr(start[l], size));
      if (id === undefined) return;
      heap.push(-scores[id], l, r, size);
    };
    for (let i = 1; i < count; i++) tryAdd(i - 1, i);
    while (heap.length > 0) {
      const l = heap.topLeft();
      const r = heap.topRight();
      const size = heap.topSize();
      heap.pop();
      // Stale entry: one side was merged away or grew since this pair was queued.
      if (len[l] === 0 || len[r] === 0 || len[l] + len[r] !== size) continue;
      len[l] = size;
      len[r] = 0;
      const rn = next[r];
      next[l] = rn;
      if (rn >= 0) prev[rn] = l;
      tryAdd(prev[l], l);
      tryAdd(l, rn);
    }

    for (let i = 0; i !== -1; i = next[i]) {
      const piece = text.substr(start[i], len[i]);
      const id = ids.get(piece);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      // Merged symbols are always vocabulary pieces, so this is one unknown character.
      const bytes = utf8Encode(piece);
      let all = true;
      for (let j = 0; j < bytes.length; j++) if (this.byteTokens[bytes[j]] < 0) all = false;
      if (all) {
        for (let j = 0; j < bytes.length; j++) out.push(this.byteTokens[bytes[j]]);
      } else if (this.unk !== undefined) {
        out.push(this.unk);
      } else {
        throw new KernelError(
          `Cannot tokenize ${JSON.stringify(piece)}: the vocabulary has no byte-fallback tokens for it and no unknown token`,
          { code: 'E_UNSUPPORTED', op: 'tokenize', arg: 'text', backend: 'js' },
        );
      }
    }
  }

  private bpeFragment(text: string, out: number[]): void {
    const cache = this.wordCache;
    for (const word of preTokenize(text, this.family)) {
      let ids = cache.get(word);
      if (ids === undefined) {
        ids = this.bpeWord(byteLevelEncode(word));
        if (cache.size >= WORD_CACHE_MAX) cache.clear();
        cache.set(word, ids);
      }
      for (let i = 0; i < ids.length; i++) out.push(ids[i]);
    }
  }

  /** llm_tokenizer_bpe_session::tokenize for one byte-level encoded word. */
  private bpeWord(word: string): number[] {
    const ids = this.ids;
    const out: number[] = [];
    if (this.ignoreMerges) {
      const id = ids.get(word);
      if (id !== undefined) return [id];
    }
    // Byte-level chars are all below U+0144: one UTF-16 unit per symbol.
    const n = word.length;
    this.ensureSymbols(n);
    const start = this.symStart;
    const len = this.symLen;
    const prev = this.symPrev;
    const next = this.symNext;
    for (let i = 0; i < n; i++) {
      start[i] = i;
      len[i] = 1;
      prev[i] = i - 1;
      next[i] = i + 1;
    }
    next[n - 1] = -1;
    const ranks = this.ranks;
    const heap = this.heap;
    heap.clear();
    const tryAdd = (l: number, r: number): void => {
      if (l < 0 || r < 0) return;
      const rank = ranks.get(word.substr(start[l], len[l]) + ' ' + word.substr(start[r], len[r]));
      if (rank === undefined) return;
      heap.push(rank, l, r, len[l] + len[r]);
    };
    for (let i = 1; i < n; i++) tryAdd(i - 1, i);
    while (heap.length > 0) {
      const l = heap.topLeft();
      const r = heap.topRight();
      const size = heap.topSize();
      heap.pop();
      if (len[l] === 0 || len[r] === 0 || len[l] + len[r] !== size) continue;
      len[l] = size;
      len[r] = 0;
      const rn = next[r];
      next[l] = rn;
      if (rn >= 0) prev[rn] = l;
      tryAdd(prev[l], l);
      tryAdd(l, rn);
    }
    for (let i = 0; i !== -1; i = next[i]) {
      const piece = word.substr(start[i], len[i]);
      const id = ids.get(piece);
      if (id !== undefined) {
        out.push(id);
        continue;
      }
      // llama.cpp then looks up each byte of the piece's UTF-8 as a 1-byte token: only
      // ASCII can be one; anything else is dropped.
      for (let j = 0; j < piece.length; j++) {
        const c = piece.charCodeAt(j);
        if (c < 0x80) {
          const b = ids.get(piece[j]);
          if (b !== undefined) out.push(b);
        }
      }
    }
    return out;
  }

  // ---- detokenize ----

  private checkId(id: unknown, op: string, arg: string): number {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= this.vocabSize)
      throw invalidArg(op, arg, `a token id in [0, ${this.vocabSize})`, id);
    return id;
  }

  /** Bytes of a token's piece as llama_token_to_piece(special = true) gives them. */
  private pieceOf(id: number): Uint8Array {
    let p = this.pieces[id];
    if (p !== undefined) return p;
    const a = this.attrs[id];
    const text = this.texts[id];
    if (a & (A_UNKNOWN | A_CONTROL | A_USER_DEFINED)) p = utf8Encode(text);
    else if (a & A_NORMAL)
      p = this.kind === 'spm' ? utf8Encode(text.replaceAll(SPACE_ESC, ' ')) : byteLevelDecode(text);
    else if (a & A_BYTE) p = Uint8Array.of(parseInt(text.slice(3, 5), 16));
    else p = EMPTY; // UNUSED / UNDEFINED
    this.pieces[id] = p;
    return p;
  }

  /** @internal piece bytes as detokenize renders them. */
  renderPiece(id: number, unparseSpecial: boolean): Uint8Array {
    if (!unparseSpecial && this.attrs[id] & (A_UNKNOWN | A_CONTROL)) return EMPTY;
    return this.pieceOf(id);
  }

  detokenize(ids: ArrayLike<number>, options?: DetokenizeOptions): string {
    if (
      ids === null ||
      typeof ids !== 'object' ||
      typeof (ids as ArrayLike<number>).length !== 'number'
    )
      throw invalidArg('detokenize', 'ids', 'an array of token ids', ids);
    const n = ids.length;
    for (let i = 0; i < n; i++) {
      const id = ids[i];
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= this.vocabSize)
        throw new KernelError(
          `Expected token ids in [0, ${this.vocabSize}) for ids but ids[${i}] is ${describe(id)}`,
          { code: 'E_INVALID_ARG', op: 'detokenize', arg: 'ids', backend: 'js' },
        );
    }
    const removeSpecial = options?.removeSpecial ?? false;
    const unparse = options?.unparseSpecial ?? false;
    let first = 0;
    let end = n;
    let removeSpace = this.addSpacePrefix;
    if (removeSpecial && this.addBos && end > first && ids[first] === this.bos) {
      removeSpace = false;
      first++;
    }
    if (removeSpecial && this.addEos && end > first && ids[end - 1] === this.eos) end--;
    const parts: Uint8Array[] = [];
    let total = 0;
    for (let i = first; i < end; i++) {
      let p = this.renderPiece(ids[i], unparse);
      // The first token loses one leading space (lstrip), whatever it is.
      if (removeSpace && p.length > 0 && p[0] === 0x20) p = p.subarray(1);
      removeSpace = false;
      parts.push(p);
      total += p.length;
    }
    const bytes = new Uint8Array(total);
    let o = 0;
    for (const p of parts) {
      bytes.set(p, o);
      o += p.length;
    }
    const text = this.decoder.decode(bytes);
    return this.cleanSpaces ? cleanUpSpaces(text) : text;
  }

  tokenPiece(id: number): string {
    return this.texts[this.checkId(id, 'tokenPiece', 'id')];
  }

  /** The id of a vocabulary piece (exact text), or undefined. */
  tokenId(piece: string): number | undefined {
    return this.ids.get(piece);
  }

  /** The llama_token_type of a token (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte). */
  tokenType(id: number): number {
    const a = this.attrs[this.checkId(id, 'tokenType', 'id')];
    if (a & A_UNKNOWN) return TokenType.UNKNOWN;
    if (a & A_CONTROL) return TokenType.CONTROL;
    if (a & A_USER_DEFINED) return TokenType.USER_DEFINED;
    if (a & A_UNUSED) return TokenType.UNUSED;
    if (a & A_BYTE) return TokenType.BYTE;
    if (a & A_NORMAL) return TokenType.NORMAL;
    return TokenType.UNDEFINED;
  }

  isEog(id: number): boolean {
    return this.eog.has(id);
  }

  /** All end-of-generation ids, ascending. */
  eogIds(): number[] {
    return [...this.eog].sort((a, b) => a - b);
  }

  createStream(options?: DetokenizeStreamOptions): DetokenizeStream {
    return new TokenStream(this, options?.unparseSpecial ?? false);
  }
}

/** GPT-2 byte-level text back to bytes (llama_decode_text, including its odd unknown-char marker). */
function byteLevelDecode(text: string): Uint8Array {
  const out: number[] = [];
  for (const ch of text) {
    const cp = ch.codePointAt(0) as number;
    const b = cp < CHAR_TO_BYTE.length ? CHAR_TO_BYTE[cp] : -1;
    if (b >= 0) {
      out.push(b);
      continue;
    }
    let marker = '[UNK_BYTE_0x';
    for (const x of utf8Encode(ch)) marker += x.toString(16).padStart(2, '0');
    marker += text + ']';
    for (const x of utf8Encode(marker)) out.push(x);
  }
  return Uint8Array.from(out);
}

/**
 * Streaming detokenizer. Bytes go through a streaming UTF-8 decoder, so a character split
 * over several tokens comes out whole once its last byte arrives, and the concatenation of
 * all pushes and the flush equals detokenize() of all ids (default options). For BPE
 * vocabularies with clean_spaces, text is held back while a pending space could still be
 * removed by what follows: llama.cpp's rules look at most 3 characters past a space, so text
 * is released up to a point whose last 3 characters hold no space.
 */
class TokenStream implements DetokenizeStream {
  private readonly decoder = new TextDecoder('utf-8', { ignoreBOM: true });
  private first = true;
  private held = '';

  constructor(
    private readonly tok: LlamaTokenizer,
    private readonly unparse: boolean,
  ) {}

  push(id: number): string {
    const tok = this.tok;
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= tok.vocabSize)
      throw invalidArg('DetokenizeStream.push', 'id', `a token id in [0, ${tok.vocabSize})`, id);
    let p = tok.renderPiece(id, this.unparse);
    if (this.first) {
      if (tok.addSpacePrefix && p.length > 0 && p[0] === 0x20) p = p.subarray(1);
      this.first = false;
    }
    const text = this.decoder.decode(p, { stream: true });
    if (!tok.cleanSpaces) return text;
    const held = this.held + text;
    const cut = safeCleanCut(held);
    if (cut === 0) {
      this.held = held;
      return '';
    }
    this.held = held.slice(cut);
    return cleanUpSpaces(held.slice(0, cut));
  }

  flush(): string {
    let text = this.decoder.decode();
    if (this.tok.cleanSpaces) {
      text = cleanUpSpaces(this.held + text);
      this.held = '';
    }
    this.first = true;
    return text;
  }
}

/**
 * The largest k such that cleanUpSpaces(s) = cleanUpSpaces(s[0, k)) + cleanUpSpaces(s[k..])
 * whatever follows s: every clean-up pattern starts with a space and spans at most 4
 * characters, so it suffices that s[k-3, k) holds no space (and k is not inside a surrogate pair).
 */
function safeCleanCut(s: string): number {
  let run = 0; // non-space characters ending at k
  let best = 0;
  for (let k = 1; k <= s.length; k++) {
    run = s.charCodeAt(k - 1) === 0x20 ? 0 : run + 1;
    if (run >= 3) {
      const c = s.charCodeAt(k - 1);
      if (!(c >= 0xd800 && c <= 0xdbff)) best = k;
    }
  }
  return best;
}

// ---- construction -----------------------------------------------------------------------------

/** Builds the tokenizer of a GGUF file from its `tokenizer.ggml.*` metadata. */
export function tokenizerFromGguf(f: GgufFile): LlamaTokenizer {
  if (f === null || typeof f !== 'object' || !(f.metadata instanceof Map))
    throw invalidArg('tokenizerFromGguf', 'f', 'a GgufFile', f);
  return tokenizerFromMetadata(f.metadata);
}

/**
 * Builds a tokenizer from GGUF metadata, with llama.cpp's defaults and checks
 * (llama_vocab::impl::load). Throws E_MODEL_FORMAT naming the offending key.
 */
export function tokenizerFromMetadata(meta: ReadonlyMap<string, GgufValue>): LlamaTokenizer {
  if (meta === null || typeof meta !== 'object' || typeof (meta as Meta).get !== 'function')
    throw invalidArg(OP, 'meta', 'a Map of GGUF metadata', meta);

  const model = str(meta, K.model);
  if (model === undefined) throw formatError(K.model, `Missing metadata key ${K.model}`);
  let kind: 'spm' | 'bpe';
  if (model === 'llama') kind = 'spm';
  else if (model === 'gpt2') kind = 'bpe';
  else
    throw formatError(
      K.model,
      `Unsupported tokenizer ${K.model} = '${model}'; supported: 'llama' (SentencePiece) and 'gpt2' (byte-level BPE)`,
    );

  const rawTexts = stringArray(meta, K.tokens);
  if (rawTexts === undefined) throw formatError(K.tokens, `Missing metadata key ${K.tokens}`);
  const n = rawTexts.length;
  if (n === 0) throw formatError(K.tokens, `Metadata ${K.tokens} is empty`);
  const rawScores = numberArray(meta, K.scores, n, false);
  const rawTypes = numberArray(meta, K.tokenType, n, true);

  const texts: string[] = new Array(n);
  const ids = new Map<string, number>();
  const attrs = new Uint16Array(n);
  const scores = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    // llama.cpp renames empty pieces so that every piece has a text.
    const t = rawTexts[i] === '' ? `[EMPTY_${i}]` : rawTexts[i];
    const prevId = ids.get(t);
    if (prevId !== undefined)
      throw formatError(
        K.tokens,
        `Duplicate token in ${K.tokens}: ${JSON.stringify(t)} has ids ${prevId} and ${i}`,
      );
    ids.set(t, i);
    texts[i] = t;
    if (rawScores) scores[i] = rawScores[i];
    const type = rawTypes ? rawTypes[i] : TokenType.NORMAL;
    attrs[i] = TYPE_TO_ATTR[type] ?? 0;
    if (attrs[i] & A_BYTE && !/^<0x[0-9A-Fa-f]{2}>$/.test(t))
      throw formatError(
        K.tokenType,
        `Token ${i} ${JSON.stringify(t)} has type BYTE but is not of the form <0xXX>`,
      );
  }

  // Pre-tokenizer and flags, as llama.cpp sets them per model / pre.
  let pre: string | undefined;
  let family: PreFamily = 'default';
  let addSpacePrefix: boolean;
  let cleanSpaces: boolean;
  let ignoreMerges = false;
  let addBos: boolean;
  let bos: number | undefined;
  let eos: number | undefined;
  let unk: number | undefined;
  const ranks = new Map<string, number>();
  if (kind === 'spm') {
    addSpacePrefix = true;
    cleanSpaces = false;
    addBos = true;
    bos = 1;
    eos = 2;
    unk = 0;
  } else {
    pre = str(meta, K.pre);
    const preName = pre === undefined || pre === '' ? 'default' : pre; // llama.cpp: missing = default
    const info = Object.prototype.hasOwnProperty.call(PRE_TOKENIZERS, preName)
      ? PRE_TOKENIZERS[preName]
      : undefined;
    if (info === undefined)
      throw formatError(
        K.pre,
        `Unsupported pre-tokenizer ${K.pre} = '${pre}'; supported: ${Object.keys(PRE_TOKENIZERS)
          .map((p) => `'${p}'`)
          .join(', ')}`,
      );
    family = info.family;
    ignoreMerges = info.ignoreMerges;
    cleanSpaces = info.cleanSpaces;
    addSpacePrefix = false;
    addBos = info.addBos ?? false;
    bos = 11;
    eos = 11;
    const merges = stringArray(meta, K.merges);
    if (merges === undefined)
      throw formatError(
        K.merges,
        `Missing metadata key ${K.merges} (required by a 'gpt2' tokenizer)`,
      );
    for (let i = 0; i < merges.length; i++) {
      const m = merges[i];
      const sp = m.indexOf(' ', 1);
      if (sp < 0) continue; // llama.cpp records ('', ''), which never matches
      const key = m.slice(0, sp) + ' ' + m.slice(sp + 1);
      if (!ranks.has(key)) ranks.set(key, i); // the first rank wins (emplace)
    }
  }
  addSpacePrefix = bool(meta, K.addPrefix) ?? addSpacePrefix;

  // Special ids: defaults that do not exist are disabled; a stored id out of range is an
  // error for the ids that drive tokenization and generation. 0xFFFFFFFF means "none" and
  // keeps the default, as llama.cpp does.
  const inRange = (id: number | undefined) =>
    id !== undefined && id >= 0 && id < n ? id : undefined;
  bos = inRange(bos);
  eos = inRange(eos);
  unk = inRange(unk);
  const readId = (key: string, dflt: number | undefined, strict: boolean): number | undefined => {
    const v = int(meta, key);
    if (v === undefined || v === 0xffffffff || v === -1) return dflt;
    if (v < 0 || v >= n) {
      if (strict)
        throw formatError(
          key,
          `Metadata ${key} = ${v} is out of range: the vocabulary has ${n} tokens`,
        );
      return dflt;
    }
    return v;
  };
  bos = readId(K.bos, bos, true);
  eos = readId(K.eos, eos, true);
  unk = readId(K.unk, unk, true);
  let eot = readId(K.eot, undefined, true);
  let eom = readId(K.eom, undefined, true);
  readId(K.sep, undefined, false);
  readId(K.pad, undefined, false);
  let fimPad = readId(K.fimPad, undefined, false);
  let fimRep = readId(K.fimRep, undefined, false);
  let fimSep = readId(K.fimSep, undefined, false);

  addBos = bool(meta, K.addBos) ?? addBos;
  const addEos = bool(meta, K.addEos) ?? false;
  if (addBos && bos === undefined)
    throw formatError(K.addBos, `${K.addBos} is true but ${K.bos} is not set`);
  if (addEos && eos === undefined)
    throw formatError(K.addEos, `${K.addEos} is true but ${K.eos} is not set`);

  // Tokens llama.cpp recognises by text become CONTROL (it warns when they were not).
  const byText = (list: string[]): number | undefined => {
    for (const t of list) {
      const id = ids.get(t);
      if (id !== undefined) {
        attrs[id] |= A_CONTROL;
        return id;
      }
    }
    return undefined;
  };
  if (eot === undefined) eot = byText(EOT_TEXTS);
  if (eom === undefined) eom = byText(EOM_TEXTS);
  if (fimPad === undefined) fimPad = byText(FIM_PAD_TEXTS);
  if (fimRep === undefined) fimRep = byText(FIM_REP_TEXTS);
  if (fimSep === undefined) fimSep = byText(FIM_SEP_TEXTS);
  const eog = new Set<number>();
  for (const id of [fimPad, fimRep, fimSep, eos, eot, eom]) if (id !== undefined) eog.add(id);
  for (const t of EOG_TEXTS) {
    const id = ids.get(t);
    if (id !== undefined) {
      eog.add(id);
      attrs[id] |= A_CONTROL;
    }
  }

  const tok = new LlamaTokenizer({
    kind,
    texts,
    attrs,
    scores,
    ids,
    bos,
    eos,
    eot,
    eom,
    unk,
    addBos,
    addEos,
    addSpacePrefix,
    cleanSpaces,
    ignoreMerges,
    pre,
    family,
    ranks,
    eog,
  });

  // Phi-3: special tokens swallow the whitespace after them (set after the special-token list
  // is built, as in llama.cpp).
  const name = str(meta, K.name)?.toLowerCase() ?? '';
  if (name.includes('phi-3') || name.includes('phi3')) {
    for (let id = 0; id < n; id++)
      if (attrs[id] & (A_CONTROL | A_USER_DEFINED | A_UNKNOWN)) attrs[id] |= A_RSTRIP;
    const set = (t: string, on: boolean) => {
      const id = ids.get(t);
      if (id !== undefined) attrs[id] = on ? attrs[id] | A_RSTRIP : attrs[id] & ~A_RSTRIP;
    };
    set('</s>', true);
    for (const t of ['<unk>', '<s>', '<|endoftext|>']) set(t, false);
  }
  return tok;
}
