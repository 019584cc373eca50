// The rows of the behaviour table (docs/any-language.md, "What every client
// does") that involve the sidecar, against the real governor binary.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { Governor, GovernorError, GovernorUnavailableError, RejectedError } from '../index.js';
import { recordingLogger, startGovernor, waitFor } from './helpers.mjs';

test('the default deadline never cuts a long sidecar max_wait short', async () => {
  // 6 s is longer than every old client default (1.5 s, 5 s).
  const sidecar = await startGovernor(`
[dependencies.slow]
max_concurrency = 1
max_queue = 4
max_wait = "6s"
`);
  const gov = new Governor(sidecar.addr, { failOpen: false });
  try {
    const held = await gov.acquire('slow');
    const started = performance.now();
    await assert.rejects(gov.acquire('slow'), (err) => {
      assert.ok(err instanceof RejectedError, String(err));
      assert.equal(err.reason, 'QUEUE_TIMEOUT');
      assert.ok(err.queueWaitMs >= 5900, `queued ${err.queueWaitMs} ms`);
      return true;
    });
    assert.ok(performance.now() - started >= 5900);
    assert.equal(await held.release(), true);
  } finally {
    await gov.close();
    await sidecar.stop();
  }
});

test('the dependency cap (RESOURCE_EXHAUSTED) is an error even when failing open', async () => {
  const sidecar = await startGovernor('[limits]\nmax_dependencies = 1\n');
  const gov = new Governor(sidecar.addr, { logger: recordingLogger() });
  try {
    // Held, so that it cannot be evicted to make room.
    const first = await gov.acquire('first');
    await assert.rejects(gov.acquire('second'), (err) => {
      assert.ok(err instanceof GovernorError && !(err instanceof GovernorUnavailableError), String(err));
      assert.equal(err.code, 'RESOURCE_EXHAUSTED');
      assert.match(err.details, /^dependency:/);
      return true;
    });
    assert.equal(gov.stats.degraded, 0);
    await first.release();
  } finally {
    await gov.close();
    await sidecar.stop();
  }
});

test('a draining sidecar rejects with SHUTTING_DOWN even when failing open', async () => {
  const sidecar = await startGovernor('[defaults]\n');
  const gov = new Governor(sidecar.addr, { logger: recordingLogger() });
  try {
    const held = await gov.acquire('drain'); // keeps the sidecar in its drain grace period
    sidecar.proc.kill('SIGTERM');
    const rejection = await waitFor(
      async () => {
        try {
          const permit = await gov.acquire('drain', { maxWaitMs: 0 });
          assert.equal(permit.degraded, false, 'failed open on a draining sidecar');
          await permit.release();
          await delay(20);
          return null;
        } catch (err) {
          if (err instanceof RejectedError) return err;
          throw err;
        }
      },
      { what: 'a SHUTTING_DOWN rejection' },
    );
    assert.equal(rejection.reason, 'SHUTTING_DOWN');
    assert.equal(gov.stats.degraded, 0);
    assert.equal(await held.release(), true);
  } finally {
    await gov.close();
    await sidecar.stop();
  }
});

test('close() gives held permits back to the sidecar', async () => {
  const sidecar = await startGovernor('[dependencies.held]\nmax_concurrency = 2\n');
  const gov = new Governor(sidecar.addr, { failOpen: false });
  const observer = new Governor(sidecar.addr, { failOpen: false });
  try {
    await gov.acquire('held');
    await gov.acquire('held');
    assert.equal((await observer.admin.getDependency('held')).inFlight, 2);
    await gov.close();
    assert.equal((await observer.admin.getDependency('held')).inFlight, 0);
    assert.equal((await observer.admin.getDependency('held')).expiredTotal, 0);
  } finally {
    await observer.close();
    await sidecar.stop();
  }
});

test('keepalive notices a frozen sidecar during a long queued wait', async () => {
  const sidecar = await startGovernor(`
[dependencies.frozen]
max_concurrency = 1
max_queue = 4
max_wait = "1h"
`);
  const holder = new Governor(sidecar.addr, { failOpen: false });
  // The client's keepalive options, with shorter times so the test is quick.
  const gov = new Governor(sidecar.addr, {
    logger: recordingLogger(),
    channelOptions: { 'grpc.keepalive_time_ms': 200, 'grpc.keepalive_timeout_ms': 300 },
  });
  try {
    const held = await holder.acquire('frozen');
    const waiting = gov.acquire('frozen'); // no maxWaitMs: the deadline is 1 h + 1 s
    await waitFor(async () => (await holder.admin.getDependency('frozen')).queued === 1, { what: 'the acquire to queue' });
    sidecar.proc.kill('SIGSTOP');
    let permit;
    try {
      permit = await Promise.race([
        waiting,
        delay(10_000).then(() => {
          throw new Error('keepalive did not notice the frozen sidecar within 10 s');
        }),
      ]);
    } finally {
      sidecar.proc.kill('SIGCONT');
    }
    assert.equal(permit.degraded, true);
    assert.equal(gov.stats.degraded, 1);
    await held.release();
  } finally {
    await gov.close();
    await holder.close();
    await sidecar.stop();
  }
});
