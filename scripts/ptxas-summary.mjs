#!/usr/bin/env node
// Summarises an `nvcc -Xptxas -v` log (CI's build/ptxas-report.txt): one line per kernel and
// arch with registers, shared memory, stack frame and spills, names demangled (c++filt when
// present). Exits 1 when any kernel spills, so a spill is either fixed or explained with an
// entry in ALLOWED_SPILLS below (and in docs/PERFORMANCE.md).
// Usage: node scripts/ptxas-summary.mjs build/ptxas-report.txt [--json out.json]
import { readFileSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

const ALLOWED_SPILLS = []; // substrings of demangled kernel names; none today

const [file, ...rest] = process.argv.slice(2);
if (!file) {
  console.error('usage: ptxas-summary.mjs REPORT [--json OUT]');
  process.exit(2);
}
const text = readFileSync(file, 'utf8');
const rows = [];
let cur = null;
for (const line of text.split('\n')) {
  let m = /Compiling entry function '([^']+)' for '(sm_\d+)'/.exec(line);
  if (m) {
    cur = { mangled: m[1], arch: m[2], regs: 0, smem: 0, stack: 0, spillStores: 0, spillLoads: 0 };
    rows.push(cur);
    continue;
  }
  if (!cur) continue;
  m = /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/.exec(line);
  if (m) [cur.stack, cur.spillStores, cur.spillLoads] = m.slice(1).map(Number);
  m = /Used (\d+) registers/.exec(line);
  if (m) cur.regs = Number(m[1]);
  m = /(\d+) bytes smem/.exec(line);
  if (m) cur.smem = Number(m[1]);
}
let names = rows.map((r) => r.mangled);
try {
  names = execFileSync('c++filt', { input: names.join('\n'), encoding: 'utf8' })
    .trim()
    .split('\n');
} catch {
  /* no c++filt: keep mangled names */
}
rows.forEach((r, i) => (r.kernel = names[i] ?? r.mangled));
const short = (k) => (k.length > 110 ? k.slice(0, 107) + '...' : k);
console.log(`${rows.length} kernel builds`);
console.log('arch   regs  smem(B)  stack  spill(st/ld)  kernel');
for (const r of rows)
  console.log(
    `${r.arch.padEnd(6)} ${String(r.regs).padStart(4)} ${String(r.smem).padStart(8)} ${String(r.stack).padStart(6)}  ${`${r.spillStores}/${r.spillLoads}`.padStart(11)}  ${short(r.kernel)}`,
  );
const spills = rows.filter(
  (r) => r.spillStores + r.spillLoads > 0 && !ALLOWED_SPILLS.some((a) => r.kernel.includes(a)),
);
const j = rest.indexOf('--json');
if (j >= 0 && rest[j + 1])
  writeFileSync(rest[j + 1], JSON.stringify({ version: 1, rows }, null, 1));
if (rows.length === 0) {
  console.error('no kernels found in the report');
  process.exit(1);
}
const maxRegs = Math.max(...rows.map((r) => r.regs));
console.log(`max registers ${maxRegs}; kernels that spill: ${spills.length}`);
if (spills.length) {
  for (const r of spills)
    console.error(
      `SPILL: ${r.arch} ${r.kernel}: ${r.spillStores} B stores, ${r.spillLoads} B loads`,
    );
  process.exit(1);
}
