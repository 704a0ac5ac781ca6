// `npm run bench -- [suite] [--json FILE]`: the same CLI, run from source with tsx.
import { main } from '../lib/cli/index';
main([process.argv[0], 'tachyon', 'bench', ...process.argv.slice(2)]);
