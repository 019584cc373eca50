// Degradable acquires and pressure (issue 10, "Degrade and pressure"): what
// goes on the wire and how the answers read, against an in-test grpc-js
// server with the unary Acquire and the Session stream; then the real binary.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { Governor, PROTO_PATH, Pressure, RejectReason, RejectedError } from '../index.js';
import { deadPort, startGovernor } from './helpers.mjs';

const GRANT = { granted: true, leaseId: 'lease-1', leaseTtl: { seconds: 30, nanos: 0 }, limit: 4, inFlight: 3 };
const grant = (pressure) => ({ ...GRANT, pressure });
const degrade = (pressure, retryAfterMs = 250) => ({
  granted: false,
  reason: 'REJECT_REASON_DEGRADE',
  retryAfter: { seconds: 0, nanos: retryAfterMs * 1e6 },
  limit: 1,
  inFlight: 1,
  pressure,
});
const reject = (reason) => ({ granted: false, reason, pressure: 'PRESSURE_OVERLOADED' });

describe('degrade and pressure against a recording fake', () => {
  let server;
  let target;
  let calls = [];
  let script = [];
  const next = () => script.shift() ?? GRANT;

  before(async () => {
    const definition = protoLoader.loadSync(PROTO_PATH, {
      keepCase: false,
      longs: Number,
      enums: String,
      defaults: true,
      oneofs: true,
    });
    const pkg = grpc.loadPackageDefinition(definition);
    server = new grpc.Server();
    server.addService(pkg.governor.v1.Governor.service, {
      Acquire(call, callback) {
        calls.push({ path: 'unary', request: call.request });
        callback(null, next());
      },
      Release(call, callback) {
        calls.push({ path: 'unary-release', request: call.request });
        callback(null, { released: true });
      },
      Renew(call, callback) {
        callback(null, { renewed: true, leaseTtl: { seconds: 30, nanos: 0 } });
      },
      Session(call) {
        call.on('data', (msg) => {
          if (msg.op === 'acquire') {
            calls.push({ path: 'session', request: msg.acquire });
            call.write({ id: msg.id, acquire: next() });
          } else if (msg.op === 'release') {
            calls.push({ path: 'session-release', request: msg.release });
            if (msg.id) call.write({ id: msg.id, release: { released: true } });
          } else if (msg.op === 'renew') {
            call.write({ id: msg.id, renew: { renewed: true, leaseTtl: { seconds: 30, nanos: 0 } } });
          }
        });
        call.on('end', () => call.end());
        call.on('error', () => {});
      },
    });
    const port = await new Promise((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    target = `127.0.0.1:${port}`;
  });

  after(() => server?.forceShutdown());

  beforeEach(() => {
    calls = [];
    script = [];
  });

  const acquires = () => calls.filter((c) => c.path === 'unary' || c.path === 'session');

  for (const useSession of [false, true]) {
    const path = useSession ? 'session' : 'unary';

    test(`${path}: degradable is sent and the pressure is read`, async () => {
      const gov = new Governor(target, { failOpen: false, useSession });
      try {
        script = [grant('PRESSURE_ELEVATED'), grant('PRESSURE_OVERLOADED'), GRANT, grant(99)];
        const first = await gov.acquire('payments', { degradable: true });
        const second = await gov.withPermit('payments', (p) => p.pressure);
        const old = await gov.acquire('payments', { degradable: false }); // an old sidecar: no pressure field
        const newer = await gov.acquire('payments'); // a level newer than this client
        assert.equal(first.onSession, useSession);
        assert.equal(first.pressure, Pressure.ELEVATED);
        assert.equal(second, Pressure.OVERLOADED);
        assert.equal(old.pressure, Pressure.UNSPECIFIED);
        assert.equal(newer.pressure, Pressure.UNSPECIFIED);
        assert.equal(JSON.parse(JSON.stringify(first)).pressure, 'ELEVATED');
        await Promise.all([first.release(), old.release(), newer.release()]);
      } finally {
        await gov.close();
      }
      assert.deepEqual(
        acquires().map((c) => [c.path, c.request.degradable]),
        [[path, true], [path, false], [path, false], [path, false]],
      );
    });

    test(`${path}: DEGRADE runs the fallback, not fn, and resolves to its result`, async () => {
      const gov = new Governor(target, { failOpen: false, useSession });
      const ran = [];
      try {
        script = [degrade('PRESSURE_SATURATED', 250), degrade('PRESSURE_ELEVATED', 100)];
        const got = await gov.withPermit(
          'payments',
          () => ran.push('fn'),
          {
            fallback: async (rej) => {
              ran.push('fallback');
              return { cached: true, rej };
            },
          },
        );
        assert.equal(got.cached, true);
        assert.ok(got.rej instanceof RejectedError);
        assert.equal(got.rej.reason, RejectReason.DEGRADE);
        assert.equal(got.rej.pressure, Pressure.SATURATED);
        assert.equal(got.rej.retryAfterMs, 250);
        // callWithRetries: the same, and DEGRADE is not retried.
        const retried = await gov.callWithRetries('payments', () => 'fresh', {
          maxAttempts: 3,
          fallback: (rej) => `stale at ${rej.pressure}`,
        });
        assert.equal(retried, 'stale at ELEVATED');
      } finally {
        await gov.close();
      }
      assert.deepEqual(ran, ['fallback']);
      assert.deepEqual(
        acquires().map((c) => [c.path, c.request.degradable]),
        [[path, true], [path, true]],
      );
      assert.equal(calls.filter((c) => c.path.endsWith('release')).length, 0);
    });
  }

  test('an explicit degradable: false wins over the fallback', async () => {
    const gov = new Governor(target, { failOpen: false, useSession: false });
    try {
      assert.equal(await gov.withPermit('payments', () => 'fresh', { degradable: false, fallback: () => 'stale' }), 'fresh');
    } finally {
      await gov.close();
    }
    assert.deepEqual(acquires().map((c) => c.request.degradable), [false]);
  });

  test('every other rejection still rejects with a fallback', async () => {
    const gov = new Governor(target, { failOpen: true, useSession: false });
    const ran = [];
    try {
      const reasons = ['QUEUE_FULL', 'QUEUE_TIMEOUT', 'SHED', 'RETRY_BUDGET_EXHAUSTED', 'SHUTTING_DOWN', 'RATE_LIMITED'];
      for (const reason of reasons) {
        script = [reject(`REJECT_REASON_${reason}`)];
        await assert.rejects(
          gov.withPermit('payments', () => ran.push('fn'), { fallback: () => ran.push('fallback') }),
          (err) => err instanceof RejectedError && err.reason === reason && err.pressure === Pressure.OVERLOADED,
        );
      }
    } finally {
      await gov.close();
    }
    assert.deepEqual(ran, []);
  });

  test('DEGRADE without a fallback rejects with the typed error, at once', async () => {
    const gov = new Governor(target, { failOpen: true, useSession: false });
    const ran = [];
    try {
      script = [degrade('PRESSURE_SATURATED', 500), degrade('PRESSURE_ELEVATED'), degrade('PRESSURE_SATURATED')];
      await assert.rejects(gov.acquire('payments', { degradable: true }), (err) => {
        assert.ok(err instanceof RejectedError);
        assert.equal(err.reason, RejectReason.DEGRADE);
        assert.equal(err.pressure, Pressure.SATURATED);
        assert.equal(err.retryAfterMs, 500);
        assert.match(err.message, /DEGRADE .*pressure SATURATED/);
        return true;
      });
      await assert.rejects(
        gov.withPermit('payments', () => ran.push('fn'), { degradable: true }),
        (err) => err.reason === 'DEGRADE' && err.pressure === 'ELEVATED',
      );
      await assert.rejects(
        gov.callWithRetries('payments', () => ran.push('fn'), { degradable: true, maxAttempts: 3 }),
        (err) => err.reason === 'DEGRADE',
      );
    } finally {
      await gov.close();
    }
    assert.deepEqual(ran, []);
    assert.equal(acquires().length, 3); // not retried
  });

  test('bad degradable and fallback options are TypeErrors naming them', async () => {
    const gov = new Governor(target, { failOpen: false, useSession: false });
    try {
      await assert.rejects(gov.acquire('payments', { degradable: 'yes' }), /degradable must be a boolean/);
      await assert.rejects(gov.withPermit('payments', () => 1, { fallback: 'stale' }), /fallback must be a function/);
      await assert.rejects(
        gov.withPermit('payments', () => 1, { fallback: () => 0, degradable: 1 }),
        /degradable must be a boolean/,
      );
    } finally {
      await gov.close();
    }
    assert.equal(acquires().length, 0);
  });

  test('fail-open is unchanged by a fallback: an unreachable sidecar runs fn', async () => {
    const gov = new Governor(`127.0.0.1:${await deadPort()}`, { failOpen: true, logger: { warn() {} }, acquireTimeoutMs: 2000 });
    try {
      const got = await gov.withPermit('payments', (p) => (p.degraded ? `fn ${p.pressure}` : 'held'), {
        fallback: () => 'fallback',
      });
      assert.equal(got, 'fn UNSPECIFIED');
    } finally {
      await gov.close();
    }
  });
});

describe('degrade and pressure against the real sidecar', () => {
  let sidecar;
  before(async () => {
    sidecar = await startGovernor(`
[server]
listen = "127.0.0.1:0"

[limits]
allow_unknown_dependencies = true

[dependencies.pricing]
max_concurrency = 1
max_queue = 4
max_wait = "5s"
`);
  });
  after(async () => sidecar?.stop());

  for (const useSession of [true, false]) {
    test(`a degradable acquire on a saturated dependency runs the fallback (${useSession ? 'session' : 'unary'})`, async () => {
      const holder = new Governor(sidecar.addr, { failOpen: false });
      const gov = new Governor(sidecar.addr, { failOpen: false, useSession });
      const ran = [];
      try {
        const held = await holder.acquire('pricing');
        assert.equal(held.pressure, Pressure.SATURATED); // max_concurrency = 1, this permit in use
        const got = await gov.withPermit('pricing', () => ran.push('fn'), {
          fallback: (rej) => {
            ran.push('fallback');
            return rej;
          },
        });
        assert.deepEqual(ran, ['fallback']);
        assert.equal(got.reason, RejectReason.DEGRADE);
        assert.equal(got.pressure, Pressure.SATURATED); // a DEGRADE is not an overload
        const status = await gov.admin.getDependency('pricing');
        assert.equal(status.inFlight, 1);
        assert.equal(status.queued, 0); // it never queued
        await held.release();
        // Free again: granted, and still SATURATED at max_concurrency = 1.
        assert.equal(await gov.withPermit('pricing', (p) => p.pressure, { fallback: () => 'fallback' }), 'SATURATED');
      } finally {
        await gov.close();
        await holder.close();
      }
    });
  }
});
