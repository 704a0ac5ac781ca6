// Writes the ESM entry point as a thin wrapper over the CommonJS build, so that ESM and
// CJS users share one module instance (one KernelError class, one binding).
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const root = path.join(__dirname, '..');
const cjs = require(path.join(root, 'dist/cjs/index.js'));
const names = Object.keys(cjs).filter((n) => n !== 'default' && n !== '__esModule');
fs.mkdirSync(path.join(root, 'dist/esm'), { recursive: true });
fs.writeFileSync(
  path.join(root, 'dist/esm/index.mjs'),
  `import cjs from '../cjs/index.js';\nexport const { ${names.join(', ')} } = cjs;\nexport default cjs;\n`,
);
fs.writeFileSync(path.join(root, 'dist/esm/index.d.mts'), `export * from '../cjs/index.js';\n`);
