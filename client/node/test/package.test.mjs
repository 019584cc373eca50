// Packaging: the proto copy, the published file list, and the type declarations.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import * as client from '../index.js';
import { PKG_DIR, REPO_ROOT } from './helpers.mjs';

const run = promisify(execFile);

test('the packaged proto is identical to the repository contract', () => {
  const source = readFileSync(join(REPO_ROOT, 'proto', 'governor', 'v1', 'governor.proto'));
  const copy = readFileSync(client.PROTO_PATH);
  assert.equal(client.PROTO_PATH, join(PKG_DIR, 'proto', 'governor', 'v1', 'governor.proto'));
  assert.ok(copy.equals(source), 'proto/governor/v1/governor.proto differs from ../../proto: run `npm run sync-proto`');
});

test('the package has no install-time script that reaches outside its folder', () => {
  const pkg = JSON.parse(readFileSync(join(PKG_DIR, 'package.json'), 'utf8'));
  for (const hook of ['preinstall', 'install', 'postinstall', 'prepare', 'prepack', 'prepublish']) {
    assert.equal(pkg.scripts?.[hook], undefined, `${hook} script`);
  }
});

test('npm pack ships the code, the types and the proto', async () => {
  const { stdout } = await run('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: PKG_DIR });
  const files = JSON.parse(stdout)[0].files.map((f) => f.path).sort();
  for (const required of ['index.js', 'index.d.ts', 'package.json', 'README.md', 'proto/governor/v1/governor.proto']) {
    assert.ok(files.includes(required), `${required} is in the tarball (got ${files.join(', ')})`);
  }
  assert.ok(!files.some((f) => f.startsWith('test/') || f.startsWith('node_modules/')), `no tests or deps: ${files}`);
});

test('index.d.ts declares every runtime export', () => {
  const dts = readFileSync(join(PKG_DIR, 'index.d.ts'), 'utf8');
  for (const name of Object.keys(client)) {
    if (name === 'default') continue;
    assert.match(dts, new RegExp(`export declare (const|class) ${name}\\b`), `${name} is declared`);
  }
});

test('the typed usage example passes tsc --noEmit', async () => {
  const tsc = join(PKG_DIR, 'node_modules', 'typescript', 'bin', 'tsc');
  try {
    await run(process.execPath, [tsc, '--noEmit', '-p', join(PKG_DIR, 'test', 'types', 'tsconfig.json')], {
      cwd: PKG_DIR,
    });
  } catch (err) {
    assert.fail(`tsc failed:\n${err.stdout}${err.stderr}`);
  }
});
