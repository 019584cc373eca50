// Copies the API contract (../../proto/governor/v1/governor.proto) into this
// package, because `npm publish` only ships the package folder. Run by the
// `prepare` and `pretest` scripts. Outside the repository (for example when
// the package was installed from a tarball) the source is absent and the
// packaged copy is kept as it is.
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkgDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const source = join(pkgDir, '..', '..', 'proto', 'governor', 'v1', 'governor.proto');
const target = join(pkgDir, 'proto', 'governor', 'v1', 'governor.proto');

if (existsSync(source)) {
  mkdirSync(dirname(target), { recursive: true });
  copyFileSync(source, target);
} else if (!existsSync(target)) {
  console.error(`copy-proto: neither ${source} nor ${target} exists`);
  process.exit(1);
}
