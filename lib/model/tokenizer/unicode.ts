/**
 * Unicode helpers for the tokenizers: UTF-8 encoding, GPT-2's byte-level alphabet and the BPE
 * pre-tokenizers (regex splitters) of llama.cpp.
 *
 * llama.cpp (src/unicode.cpp) classifies code points with tables generated from Python's
 * `regex` module: \p{L}, \p{N}, \p{P} are the Unicode general categories (JS's `u` flag gives
 * the same), and "whitespace" is the set below, which is NOT JS's \s (JS adds U+FEFF and lacks
 * U+0085). Every pre-tokenizer pattern therefore spells whitespace as WS instead of \s.
 *
 * llama.cpp splits with a list of patterns applied in turn: each pattern splits every piece
 * produced so far, and the text between matches survives as pieces of its own
 * (unicode_regex_split_stl). The GPT-2 and Llama 3 patterns run through hand-written matchers
 * there (unicode_regex_split_custom_*); the JS patterns below are written to match those
 * exactly, including the parts of the GPT-2 matcher that its pattern string leaves out (a
 * trailing `\s+`). tests/tokenizer.test.ts checks this against a port of the C++ matchers.
 */

// ---- UTF-8 ----------------------------------------------------------------------------------

/**
 * UTF-8 bytes of a string; lone surrogates become U+FFFD (EF BF BD), as a JS string's UTF-8
 * conversion does everywhere else (N-API, Buffer, TextEncoder).
 */
export function utf8Encode(s: string): Uint8Array {
  return Buffer.from(s, 'utf8');
}

/** Byte length of a string's UTF-8 encoding. */
export function utf8Length(s: string): number {
  return Buffer.byteLength(s, 'utf8');
}

// ---- GPT-2 byte-level alphabet ------------------------------------------------------------------

/**
 * bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes map to
 * U+0100.. in byte order. BYTE_TO_CHAR[b] is the 1-char string for byte b; CHAR_TO_BYTE maps a
 * char code (< 0x144) back to its byte, -1 where the char is not in the alphabet.
 */
export const BYTE_TO_CHAR: readonly string[] = (() => {
  const out: string[] = new Array(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable =
      (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    out[b] = String.fromCharCode(printable ? b : 256 + n++);
  }
  return out;
})();

export const CHAR_TO_BYTE: Int16Array = (() => {
  const out = new Int16Array(0x144).fill(-1);
  for (let b = 0; b < 256; b++) out[BYTE_TO_CHAR[b].charCodeAt(0)] = b;
  return out;
})();

/**
 * The 256 byte-level chars in GPT-2's vocabulary order (the printable runs '!'..'~',
 * '¡'..'¬', '®'..'ÿ', then the remapped bytes U+0100..U+0143): the first 256 tokens of
 * GPT-2 / Llama 3 style vocabularies.
 */
export const BYTE_LEVEL_ALPHABET: readonly string[] = (() => {
  const out: string[] = [];
  for (let c = 0; c < 0x144; c++) if (CHAR_TO_BYTE[c] >= 0) out.push(String.fromCharCode(c));
  return out;
})();

/** A string's UTF-8 bytes written in the byte-level alphabet (what BPE merges operate on). */
export function byteLevelEncode(s: string): string {
  let out = '';
  const n = s.length;
  for (let i = 0; i < n; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      out += BYTE_TO_CHAR[c];
      continue;
    }
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < n) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      } else c = 0xfffd;
    } else if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd; // lone surrogate
    if (c < 0x800) {
      out += BYTE_TO_CHAR[0xc0 | (c >> 6)] + BYTE_TO_CHAR[0x80 | (c & 0x3f)];
    } else if (c < 0x10000) {
      out +=
        BYTE_TO_CHAR[0xe0 | (c >> 12)] +
        BYTE_TO_CHAR[0x80 | ((c >> 6) & 0x3f)] +
        BYTE_TO_CHAR[0x80 | (c & 0x3f)];
    } else {
      out +=
        BYTE_TO_CHAR[0xf0 | (c >> 18)] +
        BYTE_TO_CHAR[0x80 | ((c >> 12) & 0x3f)] +
        BYTE_TO_CHAR[0x80 | ((c >> 6) & 0x3f)] +
        BYTE_TO_CHAR[0x80 | (c & 0x3f)];
    }
  }
  return out;
}

// ---- pre-tokenizers -------------------------------------------------------------------------

/** llama.cpp's whitespace set (Python regex \s), as a character-class body. */
export const WS =
  '\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';

const S = `[${WS}]`; // \s
const NS = `[^${WS}]`; // \S
const CONTRACTIONS_CI = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";

/** GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
const GPT2 = `'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^${WS}\\p{L}\\p{N}]+|${S}+(?!${NS})|${S}+`;

/** Llama 3 (also DBRX, Smaug). */
const LLAMA3 =
  `${CONTRACTIONS_CI}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^${WS}\\p{L}\\p{N}]+[\\r\\n]*` +
  `|${S}*[\\r\\n]+|${S}+(?!${NS})|${S}+`;

/** Qwen 2 (also StableLM 2, Megrez): Llama 3 with single digits. */
const QWEN2 =
  `${CONTRACTIONS_CI}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^${WS}\\p{L}\\p{N}]+[\\r\\n]*` +
  `|${S}*[\\r\\n]+|${S}+(?!${NS})|${S}+`;

/** The patterns llama.cpp applies, in order, for each pre-tokenizer family. */
const PRE_PATTERNS = {
  llama3: [LLAMA3],
  gpt2: [GPT2],
  qwen2: [QWEN2],
  starcoder: ['\\p{N}', GPT2],
  default: ['[\\p{P}\\$\\+<=>\\^~\\|]+', GPT2, '\\p{N}+', '[0-9][0-9][0-9]'],
} as const;

export type PreFamily = keyof typeof PRE_PATTERNS;

export interface PreTokenizerInfo {
  family: PreFamily;
  /** llama.cpp's ignore_merges: a word that is a whole token is not split into merges. */
  ignoreMerges: boolean;
  /** llama.cpp's clean_spaces (clean_up_tokenization_spaces) applied by detokenize. */
  cleanSpaces: boolean;
  /** Pre-tokenizers that force add_bos on (before tokenizer.ggml.add_bos_token is read). */
  addBos?: boolean;
}

/**
 * The `tokenizer.ggml.pre` names supported here, with llama.cpp's settings for each
 * (llama_vocab::impl::load). A missing pre means 'default' (llama.cpp warns about it).
 */
export const PRE_TOKENIZERS: Readonly<Record<string, PreTokenizerInfo>> = (() => {
  const t: Record<string, PreTokenizerInfo> = {};
  const add = (names: string[], info: PreTokenizerInfo) => {
    for (const n of names) t[n] = info;
  };
  add(['default'], { family: 'default', ignoreMerges: false, cleanSpaces: true });
  add(['llama3', 'llama-v3', 'llama-bpe', 'falcon3', 'falcon-h1', 'pixtral', 'midm-2.0', 'lfm2'], {
    family: 'llama3',
    ignoreMerges: true,
    cleanSpaces: true,
    addBos: true,
  });
  add(['dbrx', 'smaug-bpe'], { family: 'llama3', ignoreMerges: false, cleanSpaces: true });
  add(
    [
      'gpt-2',
      'phi-2',
      'jina-es',
      'jina-de',
      'gigachat',
      'jina-v2-es',
      'jina-v2-de',
      'mpt',
      'olmo',
      'jais',
      'exaone4',
    ],
    { family: 'gpt2', ignoreMerges: false, cleanSpaces: true },
  );
  add(['qwen2', 'deepseek-r1-qwen'], { family: 'qwen2', ignoreMerges: false, cleanSpaces: false });
  add(['stablelm2', 'megrez'], { family: 'qwen2', ignoreMerges: false, cleanSpaces: true });
  add(['starcoder', 'refact', 'codeshell', 'exaone', 'minerva-7b'], {
    family: 'starcoder',
    ignoreMerges: false,
    cleanSpaces: true,
  });
  add(['command-r', 'smollm'], { family: 'starcoder', ignoreMerges: false, cleanSpaces: false });
  return t;
})();

const compiled = new Map<PreFamily, RegExp[]>();

function patternsOf(family: PreFamily): RegExp[] {
  let r = compiled.get(family);
  if (!r) {
    r = PRE_PATTERNS[family].map((p) => new RegExp(p, 'gu'));
    compiled.set(family, r);
  }
  return r;
}

/**
 * Splits text into pre-tokenizer words the way llama.cpp's unicode_regex_split does (before
 * its byte-level encoding): every pattern in turn re-splits each piece, keeping unmatched
 * stretches as pieces. The concatenation of the result is always `text`.
 */
export function preTokenize(text: string, family: PreFamily): string[] {
  let pieces = [text];
  for (const re of patternsOf(family)) {
    const next: string[] = [];
    for (const piece of pieces) {
      let last = 0;
      re.lastIndex = 0;
      for (let m = re.exec(piece); m !== null; m = re.exec(piece)) {
        const s = m.index;
        const len = m[0].length;
        if (len === 0) {
          // None of the patterns can match empty, but never loop if one did.
          re.lastIndex = s + 1;
          continue;
        }
        if (s > last) next.push(piece.slice(last, s));
        next.push(m[0]);
        last = s + len;
      }
      if (last < piece.length) next.push(piece.slice(last));
    }
    pieces = next;
  }
  return pieces;
}
