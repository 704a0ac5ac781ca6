/**
 * Tokenizer tests: llama.cpp behaviour on the real stories260K vocabulary, hand-made SPM / BPE
 * vocabularies that pin the merge order, tie-breaking, byte fallback and special tokens,
 * synthetic vocabularies, the streaming detokenizer, errors and speed.
 *
 * Independent references live in this file: a naive SPM and a naive BPE merge loop (best pair
 * first, recomputed every step), the GPT-2 byte table, and ports of llama.cpp's hand-written
 * GPT-2 / Llama 3 pre-tokenizer matchers (unicode_regex_split_custom_*), which the
 * regex-based pre-tokenizers must reproduce exactly.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GgufValue, GgufValueType, readGguf } from '../lib/model/gguf';
import { GgufMetaEntry, writeGguf } from '../lib/model/gguf-writer';
import {
  BPE_SPECIAL_TOKENS,
  cleanUpSpaces,
  LlamaTokenizer,
  preTokenize,
  syntheticBpeVocab,
  syntheticSpmVocab,
  tokenizerFromGguf,
  tokenizerFromMetadata,
} from '../lib/model/tokenizer';
import { expectKernelError } from './helpers';

const MODELS_DIR = process.env.TACHYON_MODELS_DIR ?? path.resolve(__dirname, '../../shared/models');
const STORIES = path.join(MODELS_DIR, 'stories260K.gguf');
const STORIES_REF = path.join(MODELS_DIR, 'stories260K.reference.json');
const haveStories = fs.existsSync(STORIES);
if (!haveStories)
  process.stderr.write(
    `tokenizer.test: SKIPPING the stories260K tests: ${STORIES} not found (set TACHYON_MODELS_DIR)\n`,
  );
const describeStories = haveStories ? describe : describe.skip;

const CORPUS: { name: string; text: string }[] = JSON.parse(
  fs.readFileSync(path.join(__dirname, 'fixtures/tokenizer-corpus.json'), 'utf8'),
).cases;

const M_imul = Math.imul;
const M_floor = Math.floor;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = M_imul(t ^ (t >>> 15), t | 1);
    t ^= t + M_imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const toMeta = (entries: GgufMetaEntry[]) =>
  new Map<string, GgufValue>(entries.map((e) => [e.key, e.value]));

// ---- independent references ------------------------------------------------------------------

const SP = '\u2581';

/** Naive llama.cpp SPM: merge the best adjacent pair (highest score, leftmost) until none. */
function refSpmEscaped(
  tok: LlamaTokenizer,
  scores: ArrayLike<number>,
  text: string,
  out: number[],
): void {
  const syms = Array.from(text);
  for (;;) {
    let best = -1;
    let bestScore = 0;
    for (let i = 0; i + 1 < syms.length; i++) {
      const id = tok.tokenId(syms[i] + syms[i + 1]);
      if (id === undefined) continue;
      if (best < 0 || scores[id] > bestScore) {
        best = i;
        bestScore = scores[id];
      }
    }
    if (best < 0) break;
    syms.splice(best, 2, syms[best] + syms[best + 1]);
  }
  for (const s of syms) {
    const id = tok.tokenId(s);
    if (id !== undefined) out.push(id);
    else
      for (const b of Buffer.from(s, 'utf8')) {
        const bt = tok.tokenId(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
        if (bt === undefined) throw new Error('no byte token');
        out.push(bt);
      }
  }
}

function refSpmTokenize(tok: LlamaTokenizer, scores: ArrayLike<number>, text: string): number[] {
  const out = [tok.bos as number];
  if (text.length > 0) refSpmEscaped(tok, scores, (' ' + text).replaceAll(' ', SP), out);
  return out;
}

/** GPT-2 bytes_to_unicode, written out independently of lib/. */
const REF_B2U: string[] = (() => {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++)
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  const out: string[] = new Array(256);
  bs.forEach((b, i) => (out[b] = String.fromCharCode(cs[i])));
  return out;
})();

/** Naive BPE on one word: merge the lowest-rank adjacent pair (leftmost on ties) until none. */
function refBpeWord(
  tok: LlamaTokenizer,
  ranks: Map<string, number>,
  word: string,
  ignoreMerges: boolean,
): number[] {
  const enc = Array.from(Buffer.from(word, 'utf8'), (b) => REF_B2U[b]).join('');
  if (ignoreMerges && tok.tokenId(enc) !== undefined) return [tok.tokenId(enc) as number];
  const syms = Array.from(enc);
  for (;;) {
    let best = -1;
    let bestRank = 0;
    for (let i = 0; i + 1 < syms.length; i++) {
      const r = ranks.get(syms[i] + ' ' + syms[i + 1]);
      if (r === undefined) continue;
      if (best < 0 || r < bestRank) {
        best = i;
        bestRank = r;
      }
    }
    if (best < 0) break;
    syms.splice(best, 2, syms[best] + syms[best + 1]);
  }
  return syms.map((s) => {
    const id = tok.tokenId(s);
    if (id === undefined) throw new Error(`piece ${s} is not a token`);
    return id;
  });
}

function ranksOf(merges: string[]): Map<string, number> {
  const r = new Map<string, number>();
  merges.forEach((m, i) => {
    if (!r.has(m)) r.set(m, i);
  });
  return r;
}

// Ports of llama.cpp's unicode_regex_split_custom_gpt2 / _llama3 (the C++ control flow, with
// code point classes from JS: \p{L}, \p{N} and llama.cpp's whitespace set).
const WS_SET = new Set([
  0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004,
  0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
]);
interface Flags {
  letter: boolean;
  number: boolean;
  ws: boolean;
  any: boolean;
}
const NO_FLAGS: Flags = { letter: false, number: false, ws: false, any: false };
const flagCache = new Map<number, Flags>();
function flagsOf(cp: number): Flags {
  let f = flagCache.get(cp);
  if (f === undefined) {
    const ch = String.fromCodePoint(cp);
    f = { letter: /\p{L}/u.test(ch), number: /\p{N}/u.test(ch), ws: WS_SET.has(cp), any: true };
    flagCache.set(cp, f);
  }
  return f;
}

function portSplit(text: string, llama3: boolean): string[] {
  const cpts = Array.from(text, (c) => c.codePointAt(0) as number);
  const n = cpts.length;
  const out: string[] = [];
  const OOR = -1;
  const cpt = (p: number) => (p >= 0 && p < n ? cpts[p] : OOR);
  const flags = (p: number) => (p >= 0 && p < n ? flagsOf(cpts[p]) : NO_FLAGS);
  const lower = (c: number) => (c >= 65 && c <= 90 ? c + 32 : c);
  let prevEnd = 0;
  const add = (end: number) => {
    const len = end - prevEnd;
    if (len > 0) out.push(String.fromCodePoint(...cpts.slice(prevEnd, end)));
    prevEnd = end;
    return len;
  };
  const ch = (s: string) => s.charCodeAt(0);
  for (let pos = 0; pos < n;) {
    const c = cpt(pos);
    const f = flags(pos);
    if (c === ch("'") && pos + 1 < n) {
      const cn = llama3 ? lower(cpt(pos + 1)) : cpt(pos + 1);
      if (cn === ch('s') || cn === ch('t') || cn === ch('m') || cn === ch('d')) {
        pos += add(pos + 2);
        continue;
      }
      if (pos + 2 < n) {
        const cnn = llama3 ? lower(cpt(pos + 2)) : cpt(pos + 2);
        if (
          (cn === ch('r') && cnn === ch('e')) ||
          (cn === ch('v') && cnn === ch('e')) ||
          (cn === ch('l') && cnn === ch('l'))
        ) {
          pos += add(pos + 3);
          continue;
        }
      }
    }
    if (llama3) {
      if (!(c === 0x0d || c === 0x0a || f.number)) {
        if (f.letter || flags(pos + 1).letter) {
          pos++;
          while (flags(pos).letter) pos++;
          add(pos);
          continue;
        }
      }
      if (f.number) {
        let ini = pos;
        while (flags(pos).number) {
          if (++pos - ini >= 3) {
            add(pos);
            ini = pos;
          }
        }
        add(pos);
        continue;
      }
      let f2 = c === 0x20 ? flags(pos + 1) : f;
      if (!(f2.ws || f2.letter || f2.number) && f.any) {
        pos += c === 0x20 ? 1 : 0;
        while (!(f2.ws || f2.letter || f2.number) && f2.any) f2 = flags(++pos);
        let c2 = cpt(pos);
        while (c2 === 0x0d || c2 === 0x0a) c2 = cpt(++pos);
        add(pos);
        continue;
      }
      let nws = 0;
      let lastRN = 0;
      while (flags(pos + nws).ws) {
        const c2 = cpt(pos + nws);
        if (c2 === 0x0d || c2 === 0x0a) lastRN = pos + nws + 1;
        nws++;
      }
      if (lastRN > 0) {
        pos = lastRN;
        add(pos);
        continue;
      }
      if (nws > 1 && cpt(pos + nws) !== OOR) {
        pos += nws - 1;
        add(pos);
        continue;
      }
      if (nws > 0) {
        pos += nws;
        add(pos);
        continue;
      }
      add(++pos);
    } else {
      let f2 = c === 0x20 ? flags(pos + 1) : f;
      if (f2.letter) {
        pos += c === 0x20 ? 1 : 0;
        while (f2.letter) f2 = flags(++pos);
        add(pos);
        continue;
      }
      if (f2.number) {
        pos += c === 0x20 ? 1 : 0;
        while (f2.number) f2 = flags(++pos);
        add(pos);
        continue;
      }
      if (!(f2.ws || f2.letter || f2.number) && f2.any) {
        pos += c === 0x20 ? 1 : 0;
        while (!(f2.ws || f2.letter || f2.number) && f2.any) f2 = flags(++pos);
        add(pos);
        continue;
      }
      let nws = 0;
      while (flags(pos + nws).ws) nws++;
      if (nws > 1 && cpt(pos + nws) !== OOR) {
        pos += nws - 1;
        add(pos);
        continue;
      }
      if (nws > 0) {
        pos += nws;
        add(pos);
        continue;
      }
      add(++pos);
    }
  }
  return out;
}

// Characters chosen to hit every branch: letters (incl. non-Latin, with a combining mark),
// numbers (Nd, Nl, other-script digits), llama.cpp whitespace vs JS-only whitespace (U+FEFF),
// contractions in both cases, punctuation, symbols, emoji, an unassigned code point.
const SPLIT_ALPHABET = [
  'a',
  'Z',
  'é',
  'ß',
  '中',
  'ж',
  's',
  't',
  'r',
  'e',
  'v',
  'l',
  'd',
  'm',
  'S',
  'T',
  'R',
  'E',
  'L',
  'D',
  '1',
  '7',
  '٣',
  'Ⅳ',
  '²',
  ' ',
  ' ',
  ' ',
  '  ',
  '\t',
  '\n',
  '\r',
  '\r\n',
  '\u00a0',
  '\u0085',
  '\u3000',
  '\u2009',
  '\u200b',
  '\ufeff',
  "'",
  "'",
  '.',
  ',',
  '!',
  '?',
  '-',
  '(',
  '$',
  '+',
  '<',
  '|',
  '~',
  '\u0301',
  '\u200d',
  '🦙',
  '👍🏽',
  '\u0378',
  '_',
];

function randomText(r: () => number, maxLen: number, alphabet: readonly string[]): string {
  const n = M_floor(r() * (maxLen + 1));
  let s = '';
  for (let i = 0; i < n; i++) s += alphabet[M_floor(r() * alphabet.length)];
  return s;
}

// ---- hand-made vocabularies ----------------------------------------------------------------

/** A tiny SPM vocabulary: <unk> <s> </s>, optional byte tokens, then the given pieces. */
function spmMeta(
  pieces: [string, number][],
  opts: { bytes?: boolean; extra?: Record<string, GgufValue>; types?: Record<string, number> } = {},
): Map<string, GgufValue> {
  const tokens = ['<unk>', '<s>', '</s>'];
  const scores = [0, 0, 0];
  const types = [2, 3, 3];
  if (opts.bytes ?? true)
    for (let b = 0; b < 256; b++) {
      tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
      scores.push(0);
      types.push(6);
    }
  for (const [p, s] of pieces) {
    tokens.push(p);
    scores.push(s);
    types.push(opts.types?.[p] ?? 1);
  }
  const m = new Map<string, GgufValue>([
    ['tokenizer.ggml.model', 'llama'],
    ['tokenizer.ggml.tokens', tokens],
    ['tokenizer.ggml.scores', Float32Array.from(scores)],
    ['tokenizer.ggml.token_type', Int32Array.from(types)],
    ['tokenizer.ggml.bos_token_id', 1],
    ['tokenizer.ggml.eos_token_id', 2],
    ['tokenizer.ggml.unknown_token_id', 0],
  ]);
  for (const [k, v] of Object.entries(opts.extra ?? {})) m.set(k, v);
  return m;
}

/** SPM round trips turn a literal U+2581 into a space. */
const unesc = (s: string) => s.replaceAll(SP, ' ');

function pieces(tok: LlamaTokenizer, ids: ArrayLike<number>): string[] {
  return Array.from(ids, (id) => tok.tokenPiece(id));
}

// ---- tests --------------------------------------------------------------------------------

describe('pre-tokenizers', () => {
  test('regex splitters equal ports of llama.cpp custom GPT-2 / Llama 3 matchers', () => {
    const r = rng(7);
    let n = 0;
    for (let i = 0; i < 2000; i++) {
      const s = randomText(r, 24, SPLIT_ALPHABET);
      expect(preTokenize(s, 'gpt2')).toEqual(portSplit(s, false));
      expect(preTokenize(s, 'llama3')).toEqual(portSplit(s, true));
      n++;
    }
    for (const { text } of CORPUS) {
      expect(preTokenize(text, 'gpt2')).toEqual(portSplit(text, false));
      expect(preTokenize(text, 'llama3')).toEqual(portSplit(text, true));
    }
    expect(n).toBe(2000);
  });

  test('known splits', () => {
    expect(preTokenize("Hello World 123456 don't  go\n\n", 'llama3')).toEqual([
      'Hello',
      ' World',
      ' ',
      '123',
      '456',
      ' don',
      "'t",
      ' ',
      ' go',
      '\n\n',
    ]);
    expect(preTokenize("Hello World 123456 DON'T  go\n\n", 'gpt2')).toEqual([
      'Hello',
      ' World',
      ' 123456',
      ' DON',
      "'",
      'T',
      ' ',
      ' go',
      '\n\n',
    ]);
    // llama.cpp's whitespace is not JS's \s: U+FEFF is not whitespace, U+0085 is.
    expect(preTokenize('a\ufeffb', 'llama3')).toEqual(['a', '\ufeffb']);
    expect(preTokenize('a\u0085\u0085b', 'llama3')).toEqual(['a', '\u0085', '\u0085b']);
    // 'default' = punctuation runs, then GPT-2, then digit runs, then 3-digit groups.
    expect(preTokenize('x+=12345,y', 'default')).toEqual(['x', '+=', '123', '45', ',', 'y']);
    expect(preTokenize('', 'llama3')).toEqual([]);
  });

  test('every split concatenates back to the text', () => {
    const r = rng(11);
    for (let i = 0; i < 500; i++) {
      const s = randomText(r, 30, SPLIT_ALPHABET);
      for (const f of ['default', 'gpt2', 'llama3', 'qwen2', 'starcoder'] as const)
        expect(preTokenize(s, f).join('')).toBe(s);
    }
  });
});

describe('SPM (hand-made vocabulary)', () => {
  test('highest score merges first; ties go to the leftmost pair', () => {
    // '▁abc': candidates '▁a', 'ab', 'bc'. 'bc' scores highest, so 'ab' can never form.
    let t = tokenizerFromMetadata(
      spmMeta([
        [SP, -1],
        ['a', -1],
        ['b', -1],
        ['c', -1],
        [SP + 'a', -3],
        ['ab', -2],
        ['bc', -1.5],
      ]),
    );
    expect(pieces(t, t.tokenize('abc'))).toEqual(['<s>', SP + 'a', 'bc']);
    // Equal scores: the leftmost pair wins ('ab', so 'bc' cannot form).
    t = tokenizerFromMetadata(
      spmMeta([
        [SP, -1],
        ['a', -1],
        ['b', -1],
        ['c', -1],
        ['ab', -2],
        ['bc', -2],
      ]),
    );
    expect(pieces(t, t.tokenize('abc'))).toEqual(['<s>', SP, 'ab', 'c']);
    expect(pieces(t, t.tokenize('abcbc'))).toEqual(['<s>', SP, 'ab', 'c', 'bc']);
    // 'ab' first by score, then 'abc' through the merged symbol.
    t = tokenizerFromMetadata(
      spmMeta([
        [SP, -1],
        ['a', -1],
        ['b', -1],
        ['c', -1],
        ['ab', -0.5],
        ['bc', -1],
        ['abc', -2],
      ]),
    );
    expect(pieces(t, t.tokenize('abc'))).toEqual(['<s>', SP, 'abc']);
  });

  test('byte fallback, unknown token, BOS/EOS flags, space prefix', () => {
    const base: [string, number][] = [
      [SP, -1],
      ['a', -1],
      [SP + 'a', -1],
    ];
    let t = tokenizerFromMetadata(spmMeta(base));
    // '€' is not a piece: its UTF-8 bytes E2 82 AC become <0xE2> <0x82> <0xAC>.
    expect(pieces(t, t.tokenize('a€', { addSpecial: false }))).toEqual([
      SP + 'a',
      '<0xE2>',
      '<0x82>',
      '<0xAC>',
    ]);
    expect(t.detokenize(t.tokenize('a€'))).toBe(' a€');
    // Without byte tokens, an unknown character is <unk>.
    t = tokenizerFromMetadata(spmMeta(base, { bytes: false }));
    expect(pieces(t, t.tokenize('a€a'))).toEqual(['<s>', SP + 'a', '<unk>', 'a']);
    // add_eos_token / add_bos_token / add_space_prefix.
    t = tokenizerFromMetadata(
      spmMeta(base, {
        extra: {
          'tokenizer.ggml.add_eos_token': true,
          'tokenizer.ggml.add_bos_token': false,
          'tokenizer.ggml.add_space_prefix': false,
        },
      }),
    );
    expect(t.addBos).toBe(false);
    expect(pieces(t, t.tokenize('a a'))).toEqual(['a', SP + 'a', '</s>']);
    expect(pieces(t, t.tokenize('a a', { addSpecial: false }))).toEqual(['a', SP + 'a']);
    // Without a space prefix detokenize strips nothing.
    expect(t.detokenize(t.tokenize(' a'))).toBe(' a');
    // The empty string: only BOS (llama.cpp / SentencePiece behaviour).
    t = tokenizerFromMetadata(spmMeta(base));
    expect(Array.from(t.tokenize(''))).toEqual([1]);
    expect(Array.from(t.tokenize('', { addSpecial: false }))).toEqual([]);
  });

  test('special tokens: CONTROL only with parseSpecial, USER_DEFINED always, longest first', () => {
    const t = tokenizerFromMetadata(
      spmMeta(
        [
          [SP, -1],
          ['a', -1],
          [SP + 'a', -1],
          ['<ctl>', 0],
          ['<u>', 0],
          ['<u>x', 0],
        ],
        { types: { '<ctl>': 3, '<u>': 4, '<u>x': 4 } },
      ),
    );
    const ctl = t.tokenId('<ctl>') as number;
    const u = t.tokenId('<u>') as number;
    const ux = t.tokenId('<u>x') as number;
    // Not parsed: '<ctl>' is plain text (bytes); '<u>' is user-defined and always matched.
    expect(Array.from(t.tokenize('a<ctl>a', { addSpecial: false })).includes(ctl)).toBe(false);
    expect(Array.from(t.tokenize('a<u>a', { addSpecial: false }))).toEqual([
      t.tokenId(SP + 'a'),
      u,
      t.tokenId(SP + 'a'), // a fragment after a special token gets the '▁' prefix too
    ]);
    // Parsed: <ctl> and <s> are recognised; the longer '<u>x' wins over '<u>'.
    expect(pieces(t, t.tokenize('<s>a<ctl><u>xa', { parseSpecial: true }))).toEqual([
      '<s>',
      '<s>',
      SP + 'a',
      '<ctl>',
      '<u>x',
      SP + 'a',
    ]);
    expect(ux).toBeGreaterThan(0);
    // Detokenize: CONTROL renders '' unless unparseSpecial; USER_DEFINED renders its text.
    const ids = t.tokenize('<s>a<ctl><u>a', { parseSpecial: true });
    expect(t.detokenize(ids)).toBe(' a<u> a');
    expect(t.detokenize(ids, { unparseSpecial: true })).toBe('<s><s> a<ctl><u> a');
  });

  test('the leading-space rule of llama_detokenize', () => {
    const t = tokenizerFromMetadata(
      spmMeta([
        [SP, -1],
        ['a', -1],
        [SP + 'a', -1],
      ]),
    );
    const a = t.tokenId(SP + 'a') as number;
    // One leading space is stripped from the first token unless the ids start with BOS.
    expect(t.detokenize([a, a])).toBe('a a');
    expect(t.detokenize([1, a, a])).toBe(' a a');
    expect(t.detokenize([1, a, a], { removeSpecial: true })).toBe(' a a');
    expect(t.detokenize([t.tokenId(SP) as number, t.tokenId(SP) as number, a])).toBe('  a');
    expect(t.detokenize([1, a, 2], { unparseSpecial: true })).toBe('<s> a</s>');
    expect(t.detokenize([1, a, 2], { unparseSpecial: true, removeSpecial: true })).toBe(' a</s>');
  });
});

describeStories('stories260K (llama.cpp reference)', () => {
  let tok: LlamaTokenizer;
  let scores: Float32Array;
  beforeAll(async () => {
    const f = await readGguf(STORIES);
    tok = tokenizerFromGguf(f);
    scores = f.metadata.get('tokenizer.ggml.scores') as Float32Array;
  });

  test('metadata and the README prompt', () => {
    expect(tok.kind).toBe('spm');
    expect(tok.vocabSize).toBe(512);
    expect([tok.bos, tok.eos, tok.unk, tok.addBos, tok.addEos]).toEqual([1, 2, 0, true, false]);
    expect(Array.from(tok.tokenize('Once upon a time'))).toEqual([1, 403, 407, 261, 378]);
    expect(tok.tokenPiece(403)).toBe(SP + 'Once');
  });

  test('detokenize matches node-llama-cpp (llama_detokenize) output', () => {
    const ref = JSON.parse(fs.readFileSync(STORIES_REF, 'utf8'));
    expect(Array.from(tok.tokenize(ref.prompt))).toEqual(ref.prompt_tokens);
    expect(tok.detokenize(ref.generated_tokens)).toBe(ref.generated_text);
    // Single tokens without BOS lose their leading space: '▁there' -> 'there'.
    ref.generated_tokens.forEach((id: number, i: number) =>
      expect(tok.detokenize([id])).toBe(ref.token_pieces[i]),
    );
    expect(tok.detokenize([...ref.prompt_tokens, ...ref.generated_tokens])).toBe(
      ' ' + ref.full_text,
    );
  });

  test('corpus: equals the naive SPM reference; exact round trips', () => {
    for (const { name, text } of CORPUS) {
      const ids = tok.tokenize(text);
      expect([name, Array.from(ids)]).toEqual([name, refSpmTokenize(tok, scores, text)]);
      // With BOS the first piece keeps its '▁' as a space; without BOS it is stripped. A
      // literal '▁' in the text is indistinguishable from an escaped space and comes back as one.
      expect([name, tok.detokenize(ids)]).toEqual([name, text === '' ? '' : ' ' + unesc(text)]);
      expect([name, tok.detokenize(tok.tokenize(text, { addSpecial: false }))]).toEqual([
        name,
        unesc(text),
      ]);
    }
  });

  test('random text: equals the naive reference and round-trips', () => {
    const r = rng(3);
    const alphabet = [
      ...'abcdefghijklmnopqrstuvwxyz',
      'The ',
      ' the',
      ' ',
      '  ',
      '\n',
      '.',
      ',',
      'é',
      '€',
      '🦙',
      '中',
      "'s",
    ];
    for (let i = 0; i < 300; i++) {
      const s = randomText(r, 60, alphabet);
      const ids = tok.tokenize(s);
      expect(Array.from(ids)).toEqual(refSpmTokenize(tok, scores, s));
      expect(tok.detokenize(tok.tokenize(s, { addSpecial: false }))).toBe(s);
    }
  });

  test('stream: split UTF-8 characters come out whole', () => {
    const st = tok.createStream();
    const ids = ['<0xE2>', '<0x82>', '<0xAC>'].map((p) => tok.tokenId(p) as number);
    expect(ids.map((id) => st.push(id))).toEqual(['', '', '€']);
    expect(st.flush()).toBe('');
    // A dangling lead byte becomes U+FFFD at flush, as in a full detokenize.
    expect(st.push(ids[0])).toBe('');
    expect(st.flush()).toBe('\ufffd');
    expect(tok.detokenize([ids[0]])).toBe('\ufffd');
    // The first token of a stream loses its leading space, like detokenize without BOS.
    const once = tok.tokenId(SP + 'Once') as number;
    expect(st.push(once)).toBe('Once');
    expect(st.push(once)).toBe(' Once');
    st.flush();
    expect([st.push(1), st.push(once)]).toEqual(['', ' Once']);
    expect(st.flush()).toBe('');
  });

  test('isEog and id validation', () => {
    expect(tok.isEog(2)).toBe(true);
    expect(tok.isEog(1)).toBe(false);
    expect(tok.isEog(403)).toBe(false);
    expect(tok.eogIds()).toEqual([2]);
    expectKernelError(() => tok.detokenize([1, 512]), 'E_INVALID_ARG', 'ids');
    expectKernelError(() => tok.detokenize([-1]), 'E_INVALID_ARG', 'ids');
    expectKernelError(() => tok.detokenize([1.5]), 'E_INVALID_ARG', 'ids');
    expectKernelError(() => tok.tokenPiece(512), 'E_INVALID_ARG', 'id');
    expectKernelError(() => tok.createStream().push(9999), 'E_INVALID_ARG', 'id');
    expectKernelError(() => tok.tokenize(42 as unknown as string), 'E_INVALID_ARG', 'text');
  });
});

describe('synthetic SPM vocabulary', () => {
  const entries = syntheticSpmVocab({ size: 2048, seed: 5 });
  const meta = toMeta(entries);
  const tok = tokenizerFromMetadata(meta);
  const scores = meta.get('tokenizer.ggml.scores') as Float32Array;

  test('shape, GGUF value types, token types, determinism', () => {
    const types = Object.fromEntries(entries.map((e) => [e.key, [e.type, e.arrayType]]));
    const T = GgufValueType;
    expect(types).toEqual({
      'tokenizer.ggml.model': [T.STRING, undefined],
      'tokenizer.ggml.tokens': [T.ARRAY, T.STRING],
      'tokenizer.ggml.scores': [T.ARRAY, T.FLOAT32],
      'tokenizer.ggml.token_type': [T.ARRAY, T.INT32],
      'tokenizer.ggml.bos_token_id': [T.UINT32, undefined],
      'tokenizer.ggml.eos_token_id': [T.UINT32, undefined],
      'tokenizer.ggml.unknown_token_id': [T.UINT32, undefined],
      'tokenizer.ggml.add_bos_token': [T.BOOL, undefined],
      'tokenizer.ggml.add_eos_token': [T.BOOL, undefined],
    });
    const tokens = meta.get('tokenizer.ggml.tokens') as string[];
    const tt = meta.get('tokenizer.ggml.token_type') as Int32Array;
    expect(tokens.length).toBe(2048);
    expect(new Set(tokens).size).toBe(2048);
    expect(tokens.slice(0, 4)).toEqual(['<unk>', '<s>', '</s>', '<0x00>']);
    expect(tokens[258]).toBe('<0xFF>');
    expect([tt[0], tt[1], tt[2], tt[3], tt[258], tt[259], tt[2047]]).toEqual([2, 3, 3, 6, 6, 1, 1]);
    expect(tokens.includes(SP)).toBe(true);
    expect(tokens.includes(SP + 'the')).toBe(true);
    // Log-probabilities, never increasing along the merged pieces.
    for (let i = 259; i < 2048; i++) expect(scores[i]).toBeLessThan(0);
    const merged = tokens.findIndex((p, i) => i >= 259 && Array.from(p).length === 1);
    for (let i = 260; i < merged; i++) expect(scores[i]).toBeLessThanOrEqual(scores[i - 1]);
    expect(syntheticSpmVocab({ size: 2048, seed: 5 })).toEqual(entries);
    const other = toMeta(syntheticSpmVocab({ size: 2048, seed: 6 })).get('tokenizer.ggml.tokens');
    expect(other).not.toEqual(tokens);
    expect(
      toMeta(syntheticSpmVocab({ size: 600, seed: 5 })).get('tokenizer.ggml.tokens'),
    ).toHaveLength(600);
  });

  test('tokenizes like the naive reference and round-trips the corpus', () => {
    for (const { name, text } of CORPUS) {
      const ids = tok.tokenize(text);
      expect([name, Array.from(ids)]).toEqual([name, refSpmTokenize(tok, scores, text)]);
      expect([name, tok.detokenize(ids)]).toEqual([name, text === '' ? '' : ' ' + unesc(text)]);
    }
    // Real pieces: ordinary English comes out in words.
    expect(pieces(tok, tok.tokenize('the little girl', { addSpecial: false }))).toEqual([
      SP + 'the',
      SP + 'little',
      SP + 'girl',
    ]);
  });

  test('bad options', () => {
    expectKernelError(() => syntheticSpmVocab({ size: 100, seed: 1 }), 'E_INVALID_ARG', 'size');
    expectKernelError(() => syntheticSpmVocab({ size: 1000, seed: 0.5 }), 'E_INVALID_ARG', 'seed');
  });
});

describe('synthetic BPE vocabulary (Llama 3 style)', () => {
  const entries = syntheticBpeVocab({ size: 3000, seed: 9 });
  const meta = toMeta(entries);
  const tok = tokenizerFromMetadata(meta);
  const merges = meta.get('tokenizer.ggml.merges') as string[];
  const ranks = ranksOf(merges);
  const refTokenize = (
    t: LlamaTokenizer,
    text: string,
    ignoreMerges: boolean,
    family: 'llama3' | 'default',
  ) => [
    t.bos as number,
    ...preTokenize(text, family).flatMap((w) => refBpeWord(t, ranks, w, ignoreMerges)),
  ];

  test('shape, GGUF value types, merges, special tokens', () => {
    const T = GgufValueType;
    const types = Object.fromEntries(entries.map((e) => [e.key, [e.type, e.arrayType]]));
    expect(types['tokenizer.ggml.model']).toEqual([T.STRING, undefined]);
    expect(types['tokenizer.ggml.pre']).toEqual([T.STRING, undefined]);
    expect(types['tokenizer.ggml.tokens']).toEqual([T.ARRAY, T.STRING]);
    expect(types['tokenizer.ggml.token_type']).toEqual([T.ARRAY, T.INT32]);
    expect(types['tokenizer.ggml.merges']).toEqual([T.ARRAY, T.STRING]);
    expect(types['tokenizer.ggml.bos_token_id']).toEqual([T.UINT32, undefined]);
    expect(types['tokenizer.ggml.add_bos_token']).toEqual([T.BOOL, undefined]);
    expect(meta.get('tokenizer.ggml.pre')).toBe('llama-bpe');
    const tokens = meta.get('tokenizer.ggml.tokens') as string[];
    expect(tokens.length).toBe(3000);
    expect(new Set(tokens).size).toBe(3000);
    expect(tokens.slice(0, 256)).toEqual(
      [...REF_B2U].sort((x, y) => x.charCodeAt(0) - y.charCodeAt(0)),
    );
    expect(tokens.slice(-5)).toEqual([...BPE_SPECIAL_TOKENS]);
    const set = new Set(tokens);
    for (const m of merges) {
      const [a, b] = m.split(' ');
      expect(set.has(a) && set.has(b) && set.has(a + b)).toBe(true);
    }
    expect(tokens.includes('Ġthe')).toBe(true);
    expect(tok.bos).toBe(tok.tokenId('<|begin_of_text|>'));
    expect(tok.eos).toBe(tok.tokenId('<|end_of_text|>'));
    expect(tok.eot).toBe(tok.tokenId('<|eot_id|>'));
    expect(tok.isEog(tok.tokenId('<|eot_id|>') as number)).toBe(true);
    expect(tok.isEog(tok.tokenId('<|end_of_text|>') as number)).toBe(true);
    expect(tok.isEog(tok.tokenId('<|begin_of_text|>') as number)).toBe(false);
    expect(tok.isEog(tok.tokenId('Ġthe') as number)).toBe(false);
    expect(syntheticBpeVocab({ size: 3000, seed: 9 })).toEqual(entries);
  });

  test('tokenizes like the naive reference; round trips modulo clean_spaces', () => {
    expect(tok.cleanSpaces).toBe(true);
    for (const { name, text } of CORPUS) {
      const ids = tok.tokenize(text);
      expect([name, Array.from(ids)]).toEqual([name, refTokenize(tok, text, true, 'llama3')]);
      expect([name, tok.detokenize(ids)]).toEqual([name, cleanUpSpaces(text)]);
    }
    expect(cleanUpSpaces("a ' b , c 's d 're e 'll")).toBe("a'b, c's d're e 'll");
    expect(pieces(tok, tok.tokenize('the little girl', { addSpecial: false }))).toEqual([
      'the',
      'Ġlittle',
      'Ġgirl',
    ]);
  });

  test("'default' pre-tokenizer variant", () => {
    const m = toMeta(syntheticBpeVocab({ size: 1500, seed: 9, pre: 'default' }));
    const t = tokenizerFromMetadata(m);
    const rk = ranksOf(m.get('tokenizer.ggml.merges') as string[]);
    expect(m.get('tokenizer.ggml.pre')).toBe('default');
    for (const { name, text } of CORPUS) {
      const want = [
        t.bos as number,
        ...preTokenize(text, 'default').flatMap((w) => refBpeWord(t, rk, w, false)),
      ];
      expect([name, Array.from(t.tokenize(text))]).toEqual([name, want]);
      expect([name, t.detokenize(t.tokenize(text))]).toEqual([name, cleanUpSpaces(text)]);
    }
  });

  test('special tokens in text', () => {
    const text = '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>';
    const parsed = tok.tokenize(text, { parseSpecial: true, addSpecial: false });
    const id = (p: string) => tok.tokenId(p) as number;
    const plainIds = (t: string) => Array.from(tok.tokenize(t, { addSpecial: false }));
    expect(Array.from(parsed)).toEqual([
      id('<|begin_of_text|>'),
      id('<|start_header_id|>'),
      ...plainIds('user'),
      id('<|end_header_id|>'),
      ...plainIds('\n\nHi'),
      id('<|eot_id|>'),
    ]);
    expect(parsed[0]).toBe(tok.bos);
    expect(parsed[parsed.length - 1]).toBe(tok.eot);
    expect(tok.detokenize(parsed)).toBe('user\n\nHi');
    expect(tok.detokenize(parsed, { unparseSpecial: true })).toBe(text);
    // Not parsed: the same text is ordinary characters.
    const plain = tok.tokenize(text, { addSpecial: false });
    expect(Array.from(plain).some((id) => tok.isEog(id) || id === tok.bos)).toBe(false);
    expect(tok.detokenize(plain)).toBe(text);
  });

  test('unknown pre-tokenizer and other metadata errors', () => {
    const bad = new Map(meta);
    bad.set('tokenizer.ggml.pre', 'gpt2');
    const e = expectKernelError(
      () => tokenizerFromMetadata(bad),
      'E_MODEL_FORMAT',
      'tokenizer.ggml.pre',
    );
    expect(e.message).toMatch(/'llama-bpe'/);
    expect(e.message).toMatch(/'gpt-2'/);
    const noMerges = new Map(meta);
    noMerges.delete('tokenizer.ggml.merges');
    expectKernelError(
      () => tokenizerFromMetadata(noMerges),
      'E_MODEL_FORMAT',
      'tokenizer.ggml.merges',
    );
  });
});

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

describe('streaming detokenizer', () => {
  const vocabs: [string, () => LlamaTokenizer][] = [
    [
      'synthetic SPM',
      () => tokenizerFromMetadata(toMeta(syntheticSpmVocab({ size: 2048, seed: 5 }))),
    ],
    [
      'synthetic BPE (clean_spaces)',
      () => tokenizerFromMetadata(toMeta(syntheticBpeVocab({ size: 3000, seed: 9 }))),
    ],
  ];
  for (const [name, make] of vocabs) {
    test(`${name}: concatenated pushes + flush == detokenize (property)`, () => {
      const tok = make();
      const r = rng(99);
      const bytes = Array.from({ length: 256 }, (_, b) =>
        tok.kind === 'spm'
          ? (tok.tokenId(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`) as number)
          : (tok.tokenId(REF_B2U[b]) as number),
      );
      const sources: (() => number[])[] = [
        // arbitrary ids
        () => Array.from({ length: M_floor(r() * 40) }, () => M_floor(r() * tok.vocabSize)),
        // tokenizations of corpus strings, with and without BOS
        () =>
          Array.from(
            tok.tokenize(CORPUS[M_floor(r() * CORPUS.length)].text, { addSpecial: r() < 0.5 }),
          ),
        // raw bytes of multi-byte characters, valid and truncated
        () =>
          Array.from(Buffer.from('€🦙é中 ok ' + "it 's", 'utf8'))
            .filter(() => r() < 0.9)
            .map((b) => bytes[b]),
        // one token per character, around the patterns clean_spaces rewrites
        () =>
          Array.from(
            randomText(r, 8, [" 're", " 've", " 's", " 'm", " ' ", ' .', ' ?', 'x', ' ', "'", 'r']),
            (c) =>
              tok.kind === 'spm'
                ? bytes[c.charCodeAt(0)]
                : (tok.tokenId(REF_B2U[c.charCodeAt(0)]) as number),
          ),
        // spaces and punctuation that clean_spaces rewrites
        () =>
          Array.from(
            tok.tokenize(randomText(r, 20, [' ', "'", 's', 're', '.', ',', '?', ' a', 'b']), {
              addSpecial: false,
            }),
          ),
      ];
      for (let iter = 0; iter < 400; iter++) {
        let ids: number[] = [];
        const parts = 1 + M_floor(r() * 3);
        for (let p = 0; p < parts; p++) ids = ids.concat(sources[M_floor(r() * sources.length)]());
        const st = tok.createStream();
        let got = '';
        let split = false;
        for (const id of ids) {
          const piece = st.push(id);
          // Never half a character: no lone surrogates in any chunk.
          if (LONE_SURROGATE.test(piece)) split = true;
          got += piece;
        }
        expect(split).toBe(false);
        got += st.flush();
        expect(got).toBe(tok.detokenize(ids));
        // The stream starts over after flush.
        let again = '';
        for (const id of ids) again += st.push(id);
        expect(again + st.flush()).toBe(got);
      }
    });
  }
});

describe('metadata errors', () => {
  const base = () =>
    spmMeta([
      [SP, -1],
      ['a', -1],
    ]);
  test('missing / inconsistent keys name the key', () => {
    let m = base();
    m.delete('tokenizer.ggml.tokens');
    expectKernelError(() => tokenizerFromMetadata(m), 'E_MODEL_FORMAT', 'tokenizer.ggml.tokens');
    m = base();
    m.delete('tokenizer.ggml.model');
    expectKernelError(() => tokenizerFromMetadata(m), 'E_MODEL_FORMAT', 'tokenizer.ggml.model');
    m = base();
    m.set('tokenizer.ggml.model', 'bert');
    expectKernelError(() => tokenizerFromMetadata(m), 'E_MODEL_FORMAT', 'tokenizer.ggml.model');
    m = base();
    m.set('tokenizer.ggml.scores', new Float32Array(3));
    expectKernelError(() => tokenizerFromMetadata(m), 'E_MODEL_FORMAT', 'tokenizer.ggml.scores');
    m = base();
    m.set('tokenizer.ggml.token_type', new Int32Array(5));
    expectKernelError(
      () => tokenizerFromMetadata(m),
      'E_MODEL_FORMAT',
      'tokenizer.ggml.token_type',
    );
    m = base();
    m.set('tokenizer.ggml.bos_token_id', 100000);
    expectKernelError(
      () => tokenizerFromMetadata(m),
      'E_MODEL_FORMAT',
      'tokenizer.ggml.bos_token_id',
    );
    m = base();
    m.set('tokenizer.ggml.eos_token_id', 'x');
    expectKernelError(
      () => tokenizerFromMetadata(m),
      'E_MODEL_FORMAT',
      'tokenizer.ggml.eos_token_id',
    );
    m = base();
    m.set('tokenizer.ggml.tokens', ['<unk>', '<s>', '</s>', 'a', 'a']);
    m.delete('tokenizer.ggml.scores');
    m.delete('tokenizer.ggml.token_type');
    expectKernelError(() => tokenizerFromMetadata(m), 'E_MODEL_FORMAT', 'tokenizer.ggml.tokens');
    m = base();
    m.set('tokenizer.ggml.tokens', 'abc');
    expectKernelError(() => tokenizerFromMetadata(m), 'E_MODEL_FORMAT', 'tokenizer.ggml.tokens');
    expectKernelError(() => tokenizerFromMetadata(null as never), 'E_INVALID_ARG', 'meta');
  });

  test("0xFFFFFFFF means 'no id' and keeps the default (as llama.cpp)", () => {
    const m = base();
    m.set('tokenizer.ggml.padding_token_id', 0xffffffff);
    m.set('tokenizer.ggml.bos_token_id', 0xffffffff);
    expect(tokenizerFromMetadata(m).bos).toBe(1);
    // add_bos_token with no BOS at all is an error.
    const m2 = new Map<string, GgufValue>([
      ['tokenizer.ggml.model', 'llama'],
      ['tokenizer.ggml.tokens', ['x']],
    ]);
    expectKernelError(
      () => tokenizerFromMetadata(m2),
      'E_MODEL_FORMAT',
      'tokenizer.ggml.add_bos_token',
    );
    m2.set('tokenizer.ggml.add_bos_token', false);
    const t = tokenizerFromMetadata(m2);
    expect([t.bos, t.eos, t.unk]).toEqual([undefined, undefined, 0]);
  });
});

describe('GGUF round trip', () => {
  test('synthetic vocabularies written with writeGguf load back identically', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tachyon-tok-'));
    try {
      for (const entries of [
        syntheticSpmVocab({ size: 2048, seed: 5 }),
        syntheticBpeVocab({ size: 3000, seed: 9 }),
      ]) {
        const file = path.join(dir, 'v.gguf');
        await writeGguf(file, {
          metadata: [
            { key: 'general.architecture', type: GgufValueType.STRING, value: 'llama' },
            ...entries,
          ],
          tensors: [],
        });
        const f = await readGguf(file);
        for (const e of entries) {
          expect([e.key, f.metadataTypes.get(e.key)]).toEqual([e.key, e.type]);
          if (e.arrayType !== undefined)
            expect([e.key, f.arrayTypes?.get(e.key)]).toEqual([e.key, e.arrayType]);
        }
        const a = tokenizerFromGguf(f);
        const b = tokenizerFromMetadata(toMeta(entries));
        for (const { text } of CORPUS)
          expect(Array.from(a.tokenize(text))).toEqual(Array.from(b.tokenize(text)));
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('speed', () => {
  test('100 KB of English with 32k vocabularies', () => {
    let text = '';
    const sentences = CORPUS.filter((c) =>
      ['sentence', 'contractions', 'story', 'plain'].includes(c.name),
    ).map((c) => c.text);
    const r = rng(1);
    while (text.length < 100_000)
      text += sentences[M_floor(r() * sentences.length)] + (r() < 0.2 ? '\n' : ' ');
    text = text.slice(0, 100_000);
    const figures: string[] = [];
    for (const [name, entries] of [
      ['SPM', syntheticSpmVocab({ size: 32000, seed: 1 })],
      ['BPE', syntheticBpeVocab({ size: 32000, seed: 1 })],
    ] as const) {
      const tok = tokenizerFromMetadata(toMeta(entries));
      let best = Infinity;
      let n = 0;
      for (let rep = 0; rep < 3; rep++) {
        // A fresh tokenizer each time: no word cache carried over between repetitions.
        const t = rep === 0 ? tok : tokenizerFromMetadata(toMeta(entries));
        const t0 = performance.now();
        n = t.tokenize(text).length;
        best = Math.min(best, performance.now() - t0);
      }
      figures.push(`${name} 32k: ${best.toFixed(1)} ms for 100 KB (${n} tokens)`);
      expect(best).toBeLessThan(200);
      expect(tok.detokenize(tok.tokenize(text, { addSpecial: false }))).toBe(
        tok.cleanSpaces ? cleanUpSpaces(text) : text,
      );
    }
    process.stderr.write(`tokenizer speed: ${figures.join('; ')}\n`);
  });
});
