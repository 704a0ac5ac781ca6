// Makes `npx tachyon` work inside this repository: npm links the bins of dependencies into
// node_modules/.bin, but not the project's own bin, and npx would then look in the registry.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const root = path.join(__dirname, '..');
const binDir = path.join(root, 'node_modules', '.bin');
const link = path.join(binDir, 'tachyon');
fs.mkdirSync(binDir, { recursive: true });
try {
  fs.unlinkSync(link);
} catch {
  /* not there yet */
}
fs.symlinkSync(path.join('..', '..', 'bin', 'tachyon.js'), link);
