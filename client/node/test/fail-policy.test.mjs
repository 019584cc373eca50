// The sidecar-unreachable policy, against a loopback port where nothing listens.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import { Governor, GovernorError, GovernorUnavailableError } from '../index.js';
import { deadPort, recordingLogger } from './helpers.mjs';

let target;
before(async () => {
  target = `127.0.0.1:${await deadPort()}`;
});

test('fail-open is the default: the callback runs with a degraded permit, warned once per interval', async () => {
  const logger = recordingLogger();
  const gov = new Governor(target, { logger });
  try {
    assert.equal(gov.failOpen, true);
    const seen = [];
    for (let i = 0; i < 3; i += 1) {
      const value = await gov.withPermit('payments', async (permit) => {
        seen.push({ degraded: permit.degraded, leaseId: permit.leaseId });
        return i * 2;
      });
      assert.equal(value, i * 2);
    }
    assert.deepEqual(seen, Array(3).fill({ degraded: true, leaseId: '' }));
    assert.equal(gov.stats.degraded, 3);
    assert.equal(gov.stats.unavailable, 3);
    assert.equal(gov.stats.acquired, 0);
    assert.equal(logger.warnings.length, 1, `warnings: ${JSON.stringify(logger.warnings)}`);
    assert.match(logger.warnings[0], /unavailable/);
    assert.match(logger.warnings[0], new RegExp(target.replace(/\./g, '\\.')));
    const permit = await gov.acquire('payments');
    assert.equal(permit.degraded, true);
    assert.equal(await permit.release('FAILURE'), false, 'a degraded permit has nothing to release');
  } finally {
    gov.close();
  }
});

test('fail-open warns again once the interval has passed', async () => {
  const logger = recordingLogger();
  const gov = new Governor(target, { logger, warnIntervalMs: 0 });
  try {
    await gov.withPermit('payments', () => {});
    await gov.withPermit('payments', () => {});
    assert.equal(logger.warnings.length, 2);
  } finally {
    gov.close();
  }
});

test('a failing callback under a degraded permit still rethrows', async () => {
  const gov = new Governor(target, { logger: recordingLogger() });
  try {
    const boom = new Error('boom');
    await assert.rejects(gov.withPermit('payments', () => { throw boom; }), (err) => err === boom);
  } finally {
    gov.close();
  }
});

test('fail-closed throws GovernorUnavailableError and never runs the callback', async () => {
  const logger = recordingLogger();
  const gov = new Governor(target, { failOpen: false, logger });
  try {
    let ran = false;
    await assert.rejects(
      gov.withPermit('payments', () => {
        ran = true;
      }),
      (err) => {
        assert.ok(err instanceof GovernorUnavailableError);
        assert.ok(err instanceof GovernorError);
        assert.equal(err.code, 'UNAVAILABLE');
        return true;
      },
    );
    assert.equal(ran, false);
    assert.equal(gov.stats.unavailable, 1);
    assert.equal(gov.stats.degraded, 0);
    assert.equal(logger.warnings.length, 0);
  } finally {
    gov.close();
  }
});

test('the policy can be overridden per call', async () => {
  const gov = new Governor(target, { failOpen: true, logger: recordingLogger() });
  try {
    await assert.rejects(gov.acquire('payments', { failOpen: false }), GovernorUnavailableError);
    const closedClient = new Governor(target, { failOpen: false, logger: recordingLogger() });
    try {
      assert.equal((await closedClient.acquire('payments', { failOpen: true })).degraded, true);
    } finally {
      closedClient.close();
    }
  } finally {
    gov.close();
  }
});

test('health() of an unreachable sidecar is GovernorUnavailableError', async () => {
  const gov = new Governor(target);
  try {
    await assert.rejects(gov.health(), GovernorUnavailableError);
  } finally {
    gov.close();
  }
});

test('a closed client refuses new work', async () => {
  const gov = new Governor(target);
  gov.close();
  await assert.rejects(gov.acquire('payments'), (err) => err instanceof GovernorError && err.code === 'CLOSED');
  await assert.rejects(gov.withPermit('payments', () => {}), { code: 'CLOSED' });
});

test('bad arguments are TypeErrors', async () => {
  const gov = new Governor(target, { logger: recordingLogger() });
  try {
    const permit = await gov.acquire('payments');
    await assert.rejects(permit.release('OK'), TypeError);
    await assert.rejects(permit.release('SUCCESS', -1), TypeError);
    assert.equal(permit.released, false, 'a rejected release leaves the permit held');
    assert.equal(await permit.release('SUCCESS', 3), false);
    assert.equal(permit.released, true);
    await assert.rejects(gov.acquire('payments', { priority: 'URGENT' }), TypeError);
    await assert.rejects(gov.acquire('payments', { attempt: -1 }), TypeError);
    await assert.rejects(gov.acquire('payments', { maxWaitMs: -5 }), TypeError);
    await assert.rejects(gov.withPermit('payments', 'not a function'), TypeError);
  } finally {
    gov.close();
  }
});
