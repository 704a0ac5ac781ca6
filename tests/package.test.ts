/** Package shape: entry points, bin, version, scripts the README relies on. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { version } from '../lib/version';

const root = path.join(__dirname, '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));

test('name, bin, entry points and version', () => {
  expect(pkg.name).toBe('tachyon');
  expect(pkg.bin.tachyon).toBe('bin/tachyon.js');
  expect(pkg.exports['.'].require.default).toBe('./dist/cjs/index.js');
  expect(pkg.exports['.'].import.default).toBe('./dist/esm/index.mjs');
  expect(pkg.exports['.'].require.types).toBe('./dist/cjs/index.d.ts');
  expect(version).toBe(pkg.version);
});

test('install builds the addon; README commands exist as scripts', () => {
  expect(pkg.scripts.install).toMatch(/build:native/);
  expect(pkg.scripts['build:native']).toMatch(/cmake-js/);
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  for (const cmd of ['npm install', 'npm test', 'npx tachyon bench', 'npx tachyon doctor'])
    expect(readme).toContain(cmd);
});

test('no dependency needs a download step of its own', () => {
  const deps = Object.keys({ ...pkg.dependencies, ...pkg.devDependencies });
  expect(deps).not.toContain('node-llama-cpp');
  expect(deps).not.toContain('puppeteer');
});
