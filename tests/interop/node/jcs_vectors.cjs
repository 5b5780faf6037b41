// A JavaScript controller's checksum: npm canonicalize (RFC 8785) + @node-rs/xxhash (XXH3-64)
// must give every vector of tests/data/jcs/vectors.json its canonical form and checksum.
// Usage: node jcs_vectors.cjs VECTORS.json   (modules from ./node_modules, see build.sh deps)
'use strict';
const fs = require('fs');
const path = require('path');
const here = path.join(__dirname, 'node_modules');
let canonicalize, xxh3;
try {
  canonicalize = require(path.join(here, 'canonicalize'));
  ({ xxh3 } = require(path.join(here, '@node-rs/xxhash')));
} catch (e) {
  console.error(`npm modules missing (${e.message.split('\n')[0]}); run ./build.sh deps`);
  process.exit(1);
}
const vectors = JSON.parse(fs.readFileSync(process.argv[2], 'utf8')).vectors;
let passed = 0, failed = 0;
for (const v of vectors) {
  if (v.error) continue;  // I-JSON rejections (duplicate keys, 1e400) are the daemon's, not the library's
  const canonical = canonicalize(JSON.parse(v.input));
  const checksum = xxh3.xxh64(Buffer.from(canonical, 'utf8')).toString(16).padStart(16, '0');
  if (canonical === v.canonical && checksum === v.checksum) {
    ++passed;
  } else {
    ++failed;
    console.error(`FAIL ${v.name}: got ${canonical} ${checksum}, want ${v.canonical} ${v.checksum}`);
  }
}
if (passed === 0) failed++;  // an empty vector file must not pass
console.log(`JS interop: ${passed} vectors match, ${failed} differ`);
process.exit(failed ? 1 : 0);
