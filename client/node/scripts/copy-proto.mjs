// Refreshes this package's copy of the API contract from the repository
// (../../proto/governor/v1/governor.proto): `npm run sync-proto` after the
// proto changed. The copy is checked in, so installing the package never
// needs the repository; test/package.test.mjs fails while the two differ.
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(pkgDir, '..', '..', 'proto', 'governor', 'v1', 'governor.proto');
const target = join(pkgDir, 'proto', 'governor', 'v1', 'governor.proto');

if (!existsSync(source)) {
  console.error(`sync-proto: ${source} not found (run it inside the governor repository)`);
  process.exit(1);
}
mkdirSync(dirname(target), { recursive: true });
copyFileSync(source, target);
console.log(`sync-proto: copied ${source} to ${target}`);
