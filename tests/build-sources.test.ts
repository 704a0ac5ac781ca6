/**
 * One source list, two build systems: CMakeLists.txt and binding.gyp must both take their
 * sources and ISA flags from native/sources.json, and that list must match the files on disk.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';

const root = path.join(__dirname, '..');
const sources = JSON.parse(fs.readFileSync(path.join(root, 'native/sources.json'), 'utf8'));

function walk(dir: string, exts: string[]): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const rel = path.posix.join(dir, e.name);
    if (e.isDirectory()) out.push(...walk(rel, exts));
    else if (exts.some((x) => e.name.endsWith(x))) out.push(rel);
  }
  return out;
}

test('every listed source exists, and every compiled source on disk is listed', () => {
  const listed: string[] = [
    ...sources.core,
    ...sources.cpu_variant,
    ...sources.napi,
    ...sources.cuda,
    ...sources.cuda_emu,
  ];
  for (const f of listed) expect(fs.existsSync(path.join(root, f))).toBe(true);
  // Sources that belong to the addon: native/{cpu,napi,cuda}; tests, references and
  // headers are compiled elsewhere (native/tests drivers).
  const onDisk = [
    ...walk('native/cpu', ['.cpp']).filter((f) => !f.startsWith('native/cpu/ref/')),
    ...walk('native/napi', ['.cpp']),
    ...walk('native/cuda', ['.cu', '.cpp']),
    ...walk('native/cuemu', ['.cpp']),
  ];
  const unlisted = onDisk.filter((f) => !listed.includes(f));
  expect(unlisted).toEqual([]);
});

test('binding.gyp expands to exactly the JSON lists (evaluated the way gyp does)', () => {
  const gypText = fs.readFileSync(path.join(root, 'binding.gyp'), 'utf8');
  // gyp files are Python literals; with comments stripped they parse as JSON.
  const gyp = JSON.parse(gypText.replace(/^\s*#.*$/gm, ''));
  const expand = (s: string): string[] => {
    const m = /^<!@\(node -p "(.*)"\)$/.exec(s);
    if (!m) return [s];
    const out = execFileSync('node', ['-p', m[1].replace(/\\"/g, '"')], {
      cwd: root,
      encoding: 'utf8',
    }).trim();
    return out ? out.split(/\s+/) : [];
  };
  const target = (name: string) =>
    gyp.targets.find((t: { target_name: string }) => t.target_name === name);
  for (const isa of ['scalar', 'avx2', 'avx512']) {
    const t = target(`ty_cpu_${isa}`);
    expect(t.sources.flatMap(expand)).toEqual(sources.cpu_variant);
    expect(t.defines).toEqual([`TY_ISA=${isa}`]);
    expect(t.cflags_cc.flatMap(expand)).toEqual(sources.isa_flags[isa]);
  }
  expect(target('tachyon').sources.flatMap(expand)).toEqual([...sources.core, ...sources.napi]);
});

test('CMakeLists.txt reads the same JSON keys and never builds for "native"', () => {
  const cm = fs.readFileSync(path.join(root, 'CMakeLists.txt'), 'utf8');
  expect(cm).toContain('native/sources.json');
  for (const key of ['core', 'cpu_variant', 'napi', 'cuda', 'cuda_emu'])
    expect(cm).toMatch(new RegExp(`ty_json_list\\(\\w+ ${key}\\)`));
  expect(cm).toMatch(/isa_flags \$\{isa\}/);
  // Default archs 80/89/90; TACHYON_CUDA_ARCHS may narrow them, to numeric sm_80+ values only.
  expect(cm).toMatch(/set\(TY_CUDA_ARCH_LIST 80 89 90\)/);
  expect(cm).toMatch(/set\(CMAKE_CUDA_ARCHITECTURES \$\{TY_CUDA_ARCH_LIST\}\)/);
  expect(cm).toMatch(/NOT a MATCHES "\^\(8\[0-9\]/);
  expect(cm).not.toMatch(/march=native|ARCHITECTURES[ "]*native/);
  // No source file is named directly in CMakeLists.txt: the JSON is the only list.
  expect(cm).not.toMatch(/native\/(cpu|napi|cuda|cuemu)\/[\w/]+\.(cpp|cu)/);
});

test('inline asm appears only in PTX wrapper files', () => {
  // Shipped sources only: the standalone drivers in native/tests may use compiler barriers
  // (an empty asm) to keep a benchmark loop from being optimised away.
  const files = walk('native', ['.cpp', '.h', '.cu', '.cuh', '.hpp']).filter(
    (f) => !/(^|\/)ptx(\/|\.)/.test(f) && !/(^|\/)tests\//.test(f),
  );
  const bad = files.filter((f) =>
    // asm, __asm and __asm__, with or without volatile / __volatile__
    /(\b|__)asm(__)?\s*(volatile\s*|__volatile__\s*)?\(/.test(
      fs.readFileSync(path.join(root, f), 'utf8'),
    ),
  );
  expect(bad).toEqual([]);
});
