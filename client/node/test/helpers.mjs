// Test helpers: start the real governor binary, wait for conditions.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const PKG_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..');
export const REPO_ROOT = resolve(PKG_DIR, '..', '..');

/** The governor binary: $GOVERNOR_BIN, else <repo>/target/debug/governor. Throws if missing. */
export function governorBin() {
  const bin = process.env.GOVERNOR_BIN || join(REPO_ROOT, 'target', 'debug', 'governor');
  if (!existsSync(bin)) {
    throw new Error(
      `governor binary not found at ${bin}: build it with \`cargo build -p rate-governor\` ` +
        'or point GOVERNOR_BIN at a built binary',
    );
  }
  return bin;
}

/**
 * Starts `governor --listen 127.0.0.1:0 --config <tmp toml> [...extraArgs]` and
 * resolves once it printed its ready line. Returns { addr, uds, proc, dir, stop }.
 */
export async function startGovernor(toml, { extraArgs = [], readyTimeoutMs = 20_000 } = {}) {
  const bin = governorBin();
  const dir = mkdtempSync(join(tmpdir(), 'governor-node-'));
  const config = join(dir, 'governor.toml');
  writeFileSync(config, toml);
  // Never the default admin port: sidecars run side by side.
  const admin = extraArgs.includes('--admin-listen') ? [] : ['--admin-listen', '127.0.0.1:0'];
  const proc = spawn(bin, ['--listen', '127.0.0.1:0', ...admin, '--config', config, ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  proc.stderr.setEncoding('utf8');
  proc.stderr.on('data', (chunk) => {
    stderr += chunk;
    if (stderr.length > 200_000) stderr = stderr.slice(-100_000);
  });
  const ready = await new Promise((resolveReady, rejectReady) => {
    let stdout = '';
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      rejectReady(new Error(`governor printed no ready line within ${readyTimeoutMs} ms; stderr:\n${stderr}`));
    }, readyTimeoutMs);
    proc.stdout.setEncoding('utf8');
    proc.stdout.on('data', (chunk) => {
      stdout += chunk;
      const line = stdout.split('\n').find((l) => l.startsWith('governor ready '));
      if (line) {
        clearTimeout(timer);
        resolveReady(line);
      }
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      rejectReady(new Error(`governor exited (code ${code}, signal ${signal}) before it was ready; stderr:\n${stderr}`));
    });
  });
  const addr = /grpc=(\S+)/.exec(ready)?.[1];
  if (!addr) throw new Error(`no grpc= in ready line: ${ready}`);
  const uds = /uds=(\S+)/.exec(ready)?.[1];
  const exited = new Promise((r) => {
    if (proc.exitCode !== null || proc.signalCode !== null) r();
    else proc.once('exit', () => r());
  });
  return {
    addr,
    uds,
    proc,
    dir,
    stderr: () => stderr,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const killer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(killer);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Polls `fn` until it returns a truthy value; throws after timeoutMs with the last value. */
export async function waitFor(fn, { timeoutMs = 5000, intervalMs = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last value: ${JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A loopback port on which nothing listens (bound, then closed). */
export async function deadPort() {
  const server = createServer();
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  await new Promise((r) => server.close(r));
  return port;
}

/** A logger that records warnings. */
export function recordingLogger() {
  const warnings = [];
  return { warnings, warn: (msg) => warnings.push(String(msg)) };
}
