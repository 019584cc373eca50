// Helpers for the operator tests: start the real governor binary, talk gRPC
// to it, fetch from its admin listener.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The binary under test: $GOVERNOR_BIN, else <repo>/target/debug/governor. */
export function governorBin() {
  const bin = process.env.GOVERNOR_BIN || join(REPO, 'target', 'debug', 'governor');
  if (!existsSync(bin)) {
    throw new Error(`governor binary not found at ${bin}: build it with \`cargo build -p rate-governor\` or set GOVERNOR_BIN`);
  }
  return bin;
}

/**
 * Starts `governor --config <toml> --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0`
 * and resolves with { grpc, admin, stop, stderr } once it printed its ready line.
 */
export async function startGovernor(toml) {
  const dir = mkdtempSync(join(tmpdir(), 'governor-ops-'));
  const config = join(dir, 'governor.toml');
  writeFileSync(config, toml);
  const proc = spawn(
    governorBin(),
    ['--config', config, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (chunk) => { stderr = (stderr + chunk).slice(-100_000); });
  const line = await new Promise((resolveReady, rejectReady) => {
    let stdout = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      rejectReady(new Error(`governor not ready within 20 s; stderr:\n${stderr}`));
    }, 20_000);
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (chunk) => {
      stdout += chunk;
      const ready = stdout.split('\n').find((l) => l.startsWith('governor ready '));
      if (ready) { clearTimeout(timer); resolveReady(ready); }
    });
    proc.on('exit', (code) => {
      clearTimeout(timer);
      rejectReady(new Error(`governor exited (${code}) before it was ready; stderr:\n${stderr}`));
    });
  });
  const field = (key) => line.split(' ').find((w) => w.startsWith(key + '='))?.slice(key.length + 1);
  const stop = async () => {
    if (proc.exitCode === null) {
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  return { grpc: field('grpc'), admin: field('admin'), stop, stderr: () => stderr };
}

const definition = protoLoader.loadSync(join(REPO, 'proto', 'governor', 'v1', 'governor.proto'), {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  includeDirs: [join(REPO, 'proto')],
});
const v1 = grpc.loadPackageDefinition(definition).governor.v1;

/** A promise-returning client of governor.v1.Governor at `addr`. */
export function governorClient(addr) {
  const client = new v1.Governor(addr, grpc.credentials.createInsecure());
  const call = (method) => (request, metadata = new grpc.Metadata()) => new Promise((ok, fail) => {
    client[method](request, metadata, { deadline: Date.now() + 10_000 }, (error, response) => (error ? fail(error) : ok(response)));
  });
  return {
    acquire: call('acquire'),
    release: call('release'),
    close: () => client.close(),
  };
}

/** Polls `check` (async, truthy when done) every 50 ms until `timeoutMs`. */
export async function eventually(check, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await check();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
