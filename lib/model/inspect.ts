/**
 * A human-readable dump of a GGUF file's header (`tachyon inspect FILE`): version, alignment,
 * metadata (long arrays and strings summarized), and the tensor table.
 */
import { GgufFile, GgufValue, GgufValueType, ggmlTypeName, ggufValueTypeName } from './gguf';

const MAX_ITEMS = 6;
const MAX_STRING = 72;

const NAMED_ESCAPES: Record<number, string> = { 9: '\\t', 10: '\\n', 13: '\\r', 92: '\\\\' };

/** Control characters and backslashes escaped, cut to `max` characters. */
function shortString(s: string, max = MAX_STRING): string {
  let esc = '';
  for (let i = 0; i < s.length && esc.length <= max; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x7f || c === 92)
      esc += NAMED_ESCAPES[c] ?? `\\x${c.toString(16).padStart(2, '0')}`;
    else esc += s[i];
  }
  return esc.length > max ? `${esc.slice(0, max)}… (${s.length} chars)` : esc;
}

/** The shortest decimal that reads back as the same float32 (1e-5, not 0.000009999999747). */
function f32Text(v: number): string {
  if (!Number.isFinite(v) || v === 0) return String(v);
  for (let p = 1; p <= 9; p++) {
    const n = Number(v.toPrecision(p));
    if (Math.fround(n) === v) return String(n);
  }
  return String(v);
}

function item(v: unknown, f32 = false): string {
  if (f32 && typeof v === 'number') return f32Text(v);
  if (typeof v === 'string') return `'${shortString(v, 24)}'`;
  if (typeof v === 'bigint') return `${v}`;
  if (Array.isArray(v) || ArrayBuffer.isView(v))
    return `[${(v as ArrayLike<unknown>).length} items]`;
  return String(v);
}

function formatArray(v: ArrayLike<unknown>): string {
  const n = v.length;
  const shown: string[] = [];
  const f32 = v instanceof Float32Array;
  for (let i = 0; i < Math.min(n, MAX_ITEMS); i++) shown.push(item(v[i], f32));
  return `[${shown.join(', ')}${n > MAX_ITEMS ? `, … ${n - MAX_ITEMS} more` : ''}]`;
}

function typeLabel(f: GgufFile, key: string, v: GgufValue): string {
  const t = f.metadataTypes.get(key);
  if (t === GgufValueType.ARRAY) {
    const et = f.arrayTypes?.get(key);
    const len = (v as ArrayLike<unknown>).length;
    return `array<${et === undefined ? '?' : ggufValueTypeName(et)}>[${len}]`;
  }
  return t === undefined ? typeof v : ggufValueTypeName(t);
}

function valueText(v: GgufValue, type: number | undefined): string {
  if (typeof v === 'string') return shortString(v);
  if (type === GgufValueType.FLOAT32 && typeof v === 'number') return f32Text(v);
  if (Array.isArray(v) || ArrayBuffer.isView(v)) return formatArray(v as ArrayLike<unknown>);
  return String(v);
}

function table(rows: string[][], rightAlign: boolean[]): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  return rows.map((r) =>
    r
      .map((cell, c) =>
        c === r.length - 1 && !rightAlign[c]
          ? cell
          : rightAlign[c]
            ? cell.padStart(widths[c])
            : cell.padEnd(widths[c]),
      )
      .join('  ')
      .trimEnd(),
  );
}

function humanBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = -1;
  do {
    v /= 1024;
    u++;
  } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(v < 10 ? 2 : 1)} ${units[u]}`;
}

/** The header of a GGUF file as text: summary, metadata, tensor table. */
export function formatGgufInfo(f: GgufFile): string {
  const lines: string[] = [];
  let params = 0;
  let dataBytes = 0;
  const byType = new Map<string, number>();
  for (const t of f.tensors) {
    params += t.dims.reduce((a, b) => a * b, 1);
    dataBytes += t.bytes;
    const name = ggmlTypeName(t.type);
    byType.set(name, (byType.get(name) ?? 0) + 1);
  }
  lines.push(
    `${f.path || '(buffer)'}: GGUF v${f.version}, ${humanBytes(f.fileSize)} (${f.fileSize} bytes)`,
  );
  lines.push(
    `alignment ${f.alignment}, data at byte ${f.dataOffset}, ${f.metadata.size} metadata keys, ${f.tensors.length} tensors`,
  );
  lines.push(
    `${params.toLocaleString('en-US')} parameters, ${humanBytes(dataBytes)} of tensor data (${[
      ...byType,
    ]
      .map(([k, n]) => `${n} ${k}`)
      .join(', ')})`,
  );
  lines.push('');
  lines.push('Metadata:');
  const meta = [...f.metadata].map(([k, v]) => [
    '  ' + k,
    typeLabel(f, k, v),
    valueText(v, f.metadataTypes.get(k)),
  ]);
  if (meta.length) lines.push(...table(meta, [false, false, false]));
  lines.push('');
  lines.push('Tensors:');
  const rows = [['  name', 'type', 'dims', 'bytes', 'offset']];
  for (const t of f.tensors)
    rows.push([
      '  ' + t.name,
      ggmlTypeName(t.type),
      t.dims.join(' x '),
      String(t.bytes),
      String(t.offset),
    ]);
  lines.push(...table(rows, [false, false, false, true, true]));
  return lines.join('\n');
}
