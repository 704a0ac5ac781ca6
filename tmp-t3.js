const b = require('./build/Release/tachyon.node');
console.log('start');
try { const ab = b.mapFile(process.argv[2]); console.log(ab.byteLength); } catch (e) { console.log('err', e.message); }
global.gc(); console.log('gc done');
