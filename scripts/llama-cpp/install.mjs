#!/usr/bin/env node
// On-demand install of the llama.cpp oracle: node-llama-cpp (pinned) plus ONLY this
// platform's prebuilt CPU binaries, into the git-ignored folder .cache/node-llama-cpp/.
//
// Why not a devDependency: node-llama-cpp lists every GPU variant (CUDA, Vulkan, ...) as
// optional dependencies, ~725 MB. Installing with --omit=optional and naming the one CPU
// package we need keeps it to ~85 MB. Why --ignore-scripts: its postinstall probes for a GPU
// and, when a prebuilt binary does not fit, downloads llama.cpp from GitHub and builds it;
// we only ever load the prebuilt binary (getLlama({ gpu: false, build: 'never' })), which the
// final check below proves, and nothing besides the npm registry is contacted.
//
// Idempotent: a second run only re-checks that the binary loads. Options:
//   --force        reinstall even if the pinned version is already there
//   --dir <path>   install somewhere else (default: $TACHYON_LLAMA_CPP_DIR or .cache/node-llama-cpp)
//   --quiet        print only the folder
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

// The version that produced the references in $TACHYON_MODELS_DIR (see docs/llama-cpp.md).
// Keep in sync with NODE_LLAMA_CPP_VERSION in lib/bench/llama-cpp.ts.
const VERSION = '3.22.1';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const args = process.argv.slice(2);
const force = args.includes('--force');
const quiet = args.includes('--quiet');
const dirArg = args.indexOf('--dir');
const dir = path.resolve(
  dirArg >= 0 && args[dirArg + 1]
    ? args[dirArg + 1]
    : process.env.TACHYON_LLAMA_CPP_DIR || path.join(root, '.cache', 'node-llama-cpp'),
);
const log = (...m) => {
  if (!quiet) console.error('[llama-cpp install]', ...m);
};

/** The @node-llama-cpp/* package with the CPU build for this machine. */
function platformPackage() {
  const { platform, arch } = process;
  const map = {
    'linux-x64': 'linux-x64',
    'linux-arm64': 'linux-arm64',
    'linux-arm': 'linux-armv7l',
    'linux-riscv64': 'linux-riscv64',
    'darwin-arm64': 'mac-arm64-metal', // the Metal build also runs on the CPU with gpu: false
    'darwin-x64': 'mac-x64',
    'win32-x64': 'win-x64',
    'win32-arm64': 'win-arm64',
  };
  const name = map[`${platform}-${arch}`];
  if (!name) {
    console.error(`node-llama-cpp ${VERSION} ships no prebuilt binary for ${platform}-${arch}`);
    process.exit(1);
  }
  return `@node-llama-cpp/${name}`;
}

function installedVersion(pkg) {
  try {
    const pj = path.join(dir, 'node_modules', ...pkg.split('/'), 'package.json');
    return JSON.parse(fs.readFileSync(pj, 'utf8')).version;
  } catch {
    return undefined;
  }
}

const binPkg = platformPackage();
const have = installedVersion('node-llama-cpp') === VERSION && installedVersion(binPkg) === VERSION;

if (have && !force) {
  log(`node-llama-cpp ${VERSION} already installed`);
} else {
  fs.mkdirSync(dir, { recursive: true });
  const manifest = {
    name: 'tachyon-llama-cpp-oracle',
    private: true,
    description: 'llama.cpp oracle for Tachyon tests and benchmarks (installed on demand)',
    dependencies: { 'node-llama-cpp': VERSION, [binPkg]: VERSION },
  };
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(manifest, null, 2) + '\n');
  log(`installing node-llama-cpp ${VERSION} + ${binPkg} into ${dir} ...`);
  const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
  const r = spawnSync(
    npm,
    [
      'install',
      '--omit=optional',
      '--ignore-scripts',
      '--no-audit',
      '--no-fund',
      '--loglevel=error',
    ],
    { cwd: dir, stdio: ['ignore', quiet ? 'ignore' : 'inherit', 'inherit'], shell: false },
  );
  if (r.status !== 0) {
    console.error(`npm install failed in ${dir} (exit ${r.status ?? r.signal})`);
    process.exit(1);
  }
}

// Prove the prebuilt binary loads without any download or build, and report what it is.
const entry = path.join(dir, 'node_modules', 'node-llama-cpp', 'dist', 'index.js');
try {
  const nlc = await import(pathToFileURL(entry).href);
  const llama = await nlc.getLlama({
    gpu: false,
    build: 'never',
    usePrebuiltBinaries: true,
    skipDownload: true,
    progressLogs: false,
    logLevel: nlc.LlamaLogLevel.error,
  });
  log(
    `OK: llama.cpp ${llama.llamaCppRelease.release} (${llama.buildType}, gpu ${llama.gpu}),`,
    llama.systemInfo.trim(),
  );
  await llama.dispose();
} catch (e) {
  console.error(`node-llama-cpp was installed in ${dir} but does not load:`, e);
  process.exit(1);
}
console.log(dir);
