import * as fs from 'node:fs';
import { parseGguf } from './lib/model/gguf';
const b = new Uint8Array(fs.readFileSync('/tmp/bigv.gguf'));
let best = 1e9;
for (let k = 0; k < 12; k++) { const c0 = process.cpuUsage(); parseGguf(b, b.length); const c = process.cpuUsage(c0); best = Math.min(best, (c.user + c.system) / 1000); }
console.log('best cpu ms', best.toFixed(1));
