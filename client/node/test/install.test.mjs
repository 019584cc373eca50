// The package installed the ways npm installs packages, into a scratch
// project, then used against the real sidecar: from a folder
// (`npm install /path/to/client/node`) and from a git repository
// (`npm install git+file://...`). Except for the link to this very folder,
// each starts from the files git tracks here, so a file the package needs but
// that is not committed fails the test.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { PKG_DIR, startGovernor } from './helpers.mjs';

const run = promisify(execFile);
const NPM = ['--no-audit', '--no-fund', '--loglevel=error', '--prefer-offline'];

let sidecar;
let scratch;
before(async () => {
  sidecar = await startGovernor('[dependencies.installed]\nmax_concurrency = 2\n');
  scratch = mkdtempSync(join(tmpdir(), 'governor-node-install-'));
});
after(async () => {
  await sidecar?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** A copy of the package's tracked files (as a fresh checkout has them), without node_modules. */
async function checkout(into) {
  const { stdout } = await run('git', ['ls-files', '-z', '--', '.'], { cwd: PKG_DIR });
  const files = stdout.split('\0').filter(Boolean);
  assert.ok(files.includes('proto/governor/v1/governor.proto'), 'the proto copy is committed');
  for (const file of files) {
    mkdirSync(dirname(join(into, file)), { recursive: true });
    copyFileSync(join(PKG_DIR, file), join(into, file));
  }
  return into;
}

const USE = `
import { Governor } from '@governor/client';
const gov = new Governor(process.argv[2], { failOpen: false });
const value = await gov.withPermit('installed', async (permit) => {
  if (permit.degraded || !permit.leaseId) throw new Error('no real permit');
  return 'ran';
});
const status = await gov.admin.getDependency('installed');
await gov.close();
console.log(value, status.grantedTotal);
`;

async function consumer(name, spec, flags = []) {
  const dir = join(scratch, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: `consumer-${name}`, private: true, type: 'module' }));
  writeFileSync(join(dir, 'use.mjs'), USE);
  try {
    await run('npm', ['install', ...NPM, ...flags, spec], { cwd: dir });
  } catch (err) {
    assert.fail(`npm install ${flags.join(' ')} ${spec} failed:\n${err.stdout}${err.stderr}`);
  }
  const { stdout } = await run(process.execPath, ['use.mjs', sidecar.addr], { cwd: dir });
  return stdout.trim();
}

// npm links a folder outside the project instead of installing it, and then
// installs none of its dependencies (npm's documented behaviour), so each way
// to install from a folder is checked as npm does it.
test('npm install /path/to/client/node: a link to this folder, whose dependencies test.sh installed', async () => {
  assert.match(await consumer('folder-link', PKG_DIR), /^ran \d+$/);
});

test('npm install --install-links /path/to/a/fresh/checkout: installed like a tarball, with its dependencies', async () => {
  const folder = await checkout(join(scratch, 'folder-src'));
  assert.match(await consumer('folder-copy', folder, ['--install-links']), /^ran \d+$/);
});

test('npm install ./vendored/folder inside the project: its dependencies are installed too', async () => {
  const dir = join(scratch, 'vendored');
  await checkout(join(dir, 'vendor', 'governor-client'));
  assert.match(await consumer('vendored', './vendor/governor-client'), /^ran \d+$/);
});

test('npm install git+file:// of a repository holding the package', async () => {
  const repo = await checkout(join(scratch, 'git-src'));
  const git = (...args) =>
    run('git', ['-c', 'user.name=test', '-c', 'user.email=test@example.invalid', ...args], { cwd: repo });
  await git('init', '-q');
  await git('add', '-A');
  await git('commit', '-q', '-m', 'package');
  const out = await consumer('git', `git+file://${repo}`);
  assert.match(out, /^ran \d+$/);
});
