import { writeGguf } from './lib/model/gguf-writer';
import { readGguf } from './lib/model/gguf';
(async () => {
  const tokens: string[] = [];
  for (let i = 0; i < 150000; i++) tokens.push(`tok_${i}_${'ä'.repeat(i % 7)}`);
  let t0 = performance.now();
  await writeGguf('/tmp/bigv.gguf', { metadata: [{ key: 'tokenizer.ggml.tokens', type: 9, arrayType: 8, value: tokens }], tensors: [] });
  console.log('write', performance.now() - t0);
  for (let k = 0; k < 3; k++) { t0 = performance.now(); await readGguf('/tmp/bigv.gguf'); console.log('read', performance.now() - t0); }
})();
