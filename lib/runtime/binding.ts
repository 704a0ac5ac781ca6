/**
 * Loads the native addon. Only lib/runtime touches the raw binding.
 * On failure the error lists the likely fixes as exact commands (as sharp does).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KernelError } from './errors';

/* eslint-disable @typescript-eslint/no-explicit-any */
export type NativeBinding = any;

/**
 * The addon's mapFile(path): the whole file mmapped read-only (MAP_PRIVATE) as an external
 * ArrayBuffer that munmaps when collected; throws E_IO. Used by lib/runtime/mmap.ts.
 */
export type NativeMapFile = (path: string) => ArrayBuffer;

let cached: NativeBinding | undefined;
let cachedPath: string | undefined;

/** Where the loaded addon came from. */
export function loadedBindingPath(): string | undefined {
  return cachedPath;
}

/** The package root: the nearest folder above this file with tachyon's package.json. */
export function packageRoot(): string {
  let dir = __dirname;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if (JSON.parse(fs.readFileSync(pj, 'utf8')).name === 'tachyon') return dir;
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) return process.cwd();
    dir = up;
  }
}

export function bindingCandidates(): string[] {
  const root = packageRoot();
  const env = process.env.TACHYON_BINDING;
  const list = [
    path.join(root, 'build', 'Release', 'tachyon.node'),
    path.join(root, 'build', 'Debug', 'tachyon.node'),
  ];
  return env ? [path.resolve(env)] : list;
}

export function loadBinding(): NativeBinding {
  if (cached) return cached;
  const tried: string[] = [];
  for (const file of bindingCandidates()) {
    if (!fs.existsSync(file)) {
      tried.push(`${file} (missing)`);
      continue;
    }
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const b = require(file);
      cached = b;
      cachedPath = file;
      return b;
    } catch (e) {
      tried.push(`${file} (${(e as Error).message})`);
    }
  }
  throw new KernelError(
    [
      'Could not load the Tachyon native addon.',
      `Tried:\n  ${tried.join('\n  ')}`,
      'Possible solutions:',
      '- Build it: npm run build:native',
      '- Build without CUDA: TACHYON_CUDA=off npm run build:native',
      '- Reinstall: rm -rf node_modules build && npm install',
      '- Point at a prebuilt binary: TACHYON_BINDING=/path/to/tachyon.node',
    ].join('\n'),
    { code: 'E_BACKEND', op: 'loadBinding', backend: 'cpu' },
  );
}
