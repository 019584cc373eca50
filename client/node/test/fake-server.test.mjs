// Client behaviour that the real sidecar cannot show from the outside — what
// exactly goes on the wire (trace metadata, outcomes, latencies, deadlines,
// attempt numbers, admin fields) — checked with a tiny in-test grpc-js server that
// implements governor.v1.Governor and GovernorAdmin from the packaged proto and
// records calls.
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { context, propagation, trace, TraceFlags } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { TraceState, W3CTraceContextPropagator } from '@opentelemetry/core';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  DEFAULT_CHANNEL_OPTIONS,
  DegradeAt,
  FairBy,
  Governor,
  GovernorError,
  GovernorUnavailableError,
  PROTO_PATH,
  Pressure,
  RejectReason,
  RejectedError,
} from '../index.js';
import { recordingLogger, waitFor } from './helpers.mjs';

const TRACE_ID = '0af7651916cd43dd8448eb211c80319c';
const SPAN_ID = 'b7ad6b7169203331';
const TRACEPARENT = `00-${TRACE_ID}-${SPAN_ID}-01`;
const W3C_TRACEPARENT = /^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

const GRANT = { granted: true, leaseId: 'lease-1', leaseTtl: { seconds: 30, nanos: 0 }, limit: 4, inFlight: 1 };

let server;
let target;
let calls = [];
let acquireScript = [];
let renewReply = null;
let adminReply = null;

function deadlineToMs(deadline) {
  return deadline instanceof Date ? deadline.getTime() : Number(deadline);
}

function record(method, call) {
  const entry = {
    method,
    request: call.request,
    metadata: call.metadata.getMap(),
    deadlineMs: deadlineToMs(call.getDeadline()),
    receivedAt: Date.now(),
  };
  calls.push(entry);
  return entry;
}

before(async () => {
  const definition = protoLoader.loadSync(PROTO_PATH, { keepCase: false, longs: Number, enums: String, defaults: true });
  const pkg = grpc.loadPackageDefinition(definition);
  server = new grpc.Server();
  server.addService(pkg.governor.v1.Governor.service, {
    Acquire(call, callback) {
      record('Acquire', call);
      const next = acquireScript.shift() ?? GRANT;
      if (next === 'hang') return; // never answers: the client's deadline must fire
      if (typeof next.code === 'number') {
        callback({ code: next.code, details: 'dependency: forced by the fake' });
        return;
      }
      callback(null, next);
    },
    Release(call, callback) {
      record('Release', call);
      callback(null, { released: true });
    },
    Renew(call, callback) {
      record('Renew', call);
      callback(null, renewReply ?? { renewed: true, leaseTtl: { seconds: 0, nanos: 150e6 } });
    },
  });
  const status = (name) => ({ name, ...(adminReply ?? {}) });
  server.addService(pkg.governor.v1.GovernorAdmin.service, {
    GetDependency(call, callback) {
      record('GetDependency', call);
      callback(null, status(call.request.name));
    },
    ListDependencies(call, callback) {
      record('ListDependencies', call);
      callback(null, { dependencies: [status('a'), status('b')] });
    },
    UpdateDependency(call, callback) {
      record('UpdateDependency', call);
      callback(null, status(call.request.name));
    },
  });
  const port = await new Promise((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  target = `127.0.0.1:${port}`;
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
});

after(() => {
  server?.forceShutdown();
  context.disable();
  propagation.disable();
});

beforeEach(() => {
  calls = [];
  acquireScript = [];
  renewReply = null;
  adminReply = null;
});

const only = (method) => calls.filter((c) => c.method === method);

/** A function that runs a full garbage collection (node's gc, exposed at run time). */
function vmGc() {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc');
}

describe('trace context propagation', () => {
  test('the active span context reaches Acquire, Renew and Release as W3C traceparent/tracestate', async () => {
    acquireScript = [{ ...GRANT, leaseTtl: { seconds: 0, nanos: 150e6 } }];
    const gov = new Governor(target, { failOpen: false });
    try {
      const spanContext = {
        traceId: TRACE_ID,
        spanId: SPAN_ID,
        traceFlags: TraceFlags.SAMPLED,
        traceState: new TraceState('vendor=opaque'),
      };
      const ctx = trace.setSpanContext(context.active(), spanContext);
      await context.with(ctx, () =>
        gov.withPermit('payments', () => waitFor(() => only('Renew').length >= 1, { what: 'a Renew call' })),
      );
    } finally {
      gov.close();
    }
    for (const method of ['Acquire', 'Renew', 'Release']) {
      const [call] = only(method);
      assert.ok(call, `${method} was called`);
      assert.match(String(call.metadata.traceparent), W3C_TRACEPARENT, `${method} traceparent`);
      assert.equal(call.metadata.traceparent, TRACEPARENT, `${method} traceparent`);
      assert.equal(call.metadata.tracestate, 'vendor=opaque', `${method} tracestate`);
    }
  });

  test('no active span means no traceparent', async () => {
    const gov = new Governor(target, { failOpen: false });
    try {
      await gov.withPermit('payments', () => {});
    } finally {
      gov.close();
    }
    assert.equal(only('Acquire').length, 1);
    assert.equal(only('Acquire')[0].metadata.traceparent, undefined);
  });

  test('propagateTrace: false sends no trace metadata', async () => {
    const gov = new Governor(target, { failOpen: false, propagateTrace: false });
    try {
      const ctx = trace.setSpanContext(context.active(), { traceId: TRACE_ID, spanId: SPAN_ID, traceFlags: 1 });
      await context.with(ctx, () => gov.withPermit('payments', () => {}));
    } finally {
      gov.close();
    }
    assert.equal(only('Acquire')[0].metadata.traceparent, undefined);
  });
});

describe('release outcome and latency', () => {
  let gov;
  before(() => {
    gov = new Governor(target, { failOpen: false });
  });
  after(() => gov.close());

  test('SUCCESS with the measured latency when the callback resolves', async () => {
    const value = await gov.withPermit('payments', async () => {
      await delay(120);
      return 'done';
    });
    assert.equal(value, 'done');
    const [release] = only('Release');
    assert.equal(release.request.leaseId, 'lease-1');
    assert.equal(release.request.outcome, 'OUTCOME_SUCCESS');
    const latencyMs = release.request.latency.seconds * 1000 + release.request.latency.nanos / 1e6;
    assert.ok(latencyMs >= 115 && latencyMs < 2000, `latency ${latencyMs} ms`);
  });

  const cases = [
    ['FAILURE when the callback throws', () => new Error('nope'), undefined, 'OUTCOME_FAILURE'],
    [
      'TIMEOUT for an error named TimeoutError',
      () => Object.assign(new Error('too slow'), { name: 'TimeoutError' }),
      undefined,
      'OUTCOME_TIMEOUT',
    ],
    ['CANCELLED when the AbortSignal aborted', () => new Error('gave up'), 'abort', 'OUTCOME_CANCELLED'],
    ['TIMEOUT when an AbortSignal.timeout fired', () => new Error('gave up'), 'timeout', 'OUTCOME_TIMEOUT'],
  ];
  for (const [name, makeError, signalKind, expected] of cases) {
    test(`${name}, rethrowing the error`, async () => {
      const controller = new AbortController();
      const signal = signalKind === 'timeout' ? AbortSignal.timeout(200) : signalKind ? controller.signal : undefined;
      const error = makeError();
      await assert.rejects(
        gov.withPermit(
          'payments',
          async () => {
            if (signalKind === 'abort') controller.abort();
            if (signalKind === 'timeout') await new Promise((r) => signal.addEventListener('abort', r, { once: true }));
            throw error;
          },
          { signal },
        ),
        (err) => err === error,
      );
      const releases = only('Release');
      assert.equal(releases.length, 1);
      assert.equal(releases[0].request.outcome, expected);
    });
  }
});

describe('deadlines', () => {
  test('Acquire carries maxWait and a deadline of maxWait plus the margin', async () => {
    const gov = new Governor(target, { failOpen: false, deadlineMarginMs: 400 });
    try {
      const sentAt = Date.now();
      await (await gov.acquire('payments', { maxWaitMs: 300, priority: 'CRITICAL', tenant: 'team-a', attempt: 2 })).release();
      const [acquire] = only('Acquire');
      assert.deepEqual(acquire.request.maxWait, { seconds: 0, nanos: 300e6 });
      assert.equal(acquire.request.priority, 'PRIORITY_CRITICAL');
      assert.equal(acquire.request.tenant, 'team-a');
      assert.equal(acquire.request.attempt, 2);
      const budget = acquire.deadlineMs - sentAt;
      // The server dates the deadline from when it received the call, so allow for the trip.
      assert.ok(budget >= 650 && budget < 1100, `deadline ${budget} ms after the call (expected ~700)`);
    } finally {
      gov.close();
    }
  });

  test('without maxWaitMs the deadline is 1 h + 1 s, beyond any max_wait the sidecar accepts', async () => {
    const gov = new Governor(target, { failOpen: false });
    try {
      const sentAt = Date.now();
      await (await gov.acquire('payments')).release();
      const [acquire] = only('Acquire');
      assert.equal(acquire.request.maxWait, null);
      assert.equal(acquire.request.priority, 'PRIORITY_UNSPECIFIED');
      const budget = acquire.deadlineMs - sentAt;
      assert.ok(budget > 3_600_900 && budget <= 3_601_100, `deadline ${budget} ms after the call (expected 3601000)`);
    } finally {
      await gov.close();
    }
  });

  test('a hung sidecar is GovernorUnavailableError DEADLINE_EXCEEDED when failing closed', async () => {
    acquireScript = ['hang'];
    const gov = new Governor(target, { failOpen: false, deadlineMarginMs: 100 });
    try {
      const started = performance.now();
      await assert.rejects(gov.acquire('payments', { maxWaitMs: 100 }), (err) => {
        assert.ok(err instanceof GovernorUnavailableError);
        assert.equal(err.code, 'DEADLINE_EXCEEDED');
        return true;
      });
      const took = performance.now() - started;
      assert.ok(took >= 150 && took < 2000, `gave up after ${took} ms`);
    } finally {
      gov.close();
    }
  });

  test('a hung sidecar yields a degraded permit when failing open', async () => {
    acquireScript = ['hang'];
    const logger = recordingLogger();
    const gov = new Governor(target, { deadlineMarginMs: 100, logger });
    try {
      const permit = await gov.acquire('payments', { maxWaitMs: 100 });
      assert.equal(permit.degraded, true);
      assert.equal(logger.warnings.length, 1);
      assert.match(logger.warnings[0], /DEADLINE_EXCEEDED/);
    } finally {
      gov.close();
    }
  });
});

// The table of docs/any-language.md ("What every client does").
const NO_ANSWER = ['UNAVAILABLE', 'DEADLINE_EXCEEDED', 'CANCELLED', 'UNKNOWN', 'INTERNAL', 'DATA_LOSS'];
const ANSWERS = [
  'INVALID_ARGUMENT',
  'NOT_FOUND',
  'RESOURCE_EXHAUSTED',
  'UNIMPLEMENTED',
  'PERMISSION_DENIED',
  'UNAUTHENTICATED',
  'FAILED_PRECONDITION',
  'OUT_OF_RANGE',
  'ALREADY_EXISTS',
  'ABORTED',
];
const REASONS = ['QUEUE_FULL', 'QUEUE_TIMEOUT', 'RETRY_BUDGET_EXHAUSTED', 'SHED', 'SHUTTING_DOWN', 'RATE_LIMITED'];

describe('the behaviour table', () => {
  test('codes without an answer fail open (or throw GovernorUnavailableError), every other code throws', async () => {
    const open = new Governor(target, { logger: recordingLogger() });
    const closed = new Governor(target, { failOpen: false });
    try {
      for (const [n, name] of NO_ANSWER.entries()) {
        acquireScript = [{ code: grpc.status[name] }, { code: grpc.status[name] }];
        const permit = await open.acquire('payments');
        assert.equal(permit.degraded, true, name);
        assert.equal(open.stats.degraded, n + 1);
        await assert.rejects(closed.acquire('payments'), (err) => {
          assert.ok(err instanceof GovernorUnavailableError, `${name}: ${err}`);
          assert.equal(err.code, name);
          return true;
        });
      }
      for (const name of ANSWERS) {
        for (const gov of [open, closed]) {
          acquireScript = [{ code: grpc.status[name] }];
          await assert.rejects(gov.acquire('payments'), (err) => {
            assert.ok(err instanceof GovernorError && !(err instanceof GovernorUnavailableError), `${name}: ${err}`);
            assert.equal(err.code, name);
            assert.equal(err.details, 'dependency: forced by the fake');
            return true;
          });
        }
      }
      assert.equal(open.stats.degraded, NO_ANSWER.length);
      assert.equal(closed.stats.degraded, 0);
    } finally {
      await open.close();
      await closed.close();
    }
  });

  test('every rejection, SHUTTING_DOWN included, throws RejectedError under fail-open', async () => {
    const gov = new Governor(target);
    try {
      for (const reason of REASONS) {
        acquireScript = [{ granted: false, reason: `REJECT_REASON_${reason}`, retryAfter: { seconds: 1, nanos: 0 } }];
        await assert.rejects(gov.acquire('payments'), (err) => {
          assert.ok(err instanceof RejectedError, `${reason}: ${err}`);
          assert.equal(err.reason, reason);
          assert.equal(RejectReason[reason], reason);
          assert.equal(err.retryAfterMs, 1000);
          return true;
        });
      }
      assert.equal(gov.stats.degraded, 0);
    } finally {
      await gov.close();
    }
  });

  test('Renew has min(TTL / 3, callTimeoutMs) and Release callTimeoutMs', async () => {
    acquireScript = [{ ...GRANT, leaseTtl: { seconds: 0, nanos: 300e6 } }];
    renewReply = { renewed: true, leaseTtl: { seconds: 0, nanos: 300e6 } };
    const gov = new Governor(target, { failOpen: false });
    try {
      await gov.withPermit('payments', () => waitFor(() => only('Renew').length >= 1, { what: 'a Renew call' }));
    } finally {
      await gov.close();
    }
    const [renew] = only('Renew');
    const [release] = only('Release');
    const renewBudget = renew.deadlineMs - renew.receivedAt;
    const releaseBudget = release.deadlineMs - release.receivedAt;
    assert.ok(renewBudget > 50 && renewBudget <= 100, `Renew deadline ${renewBudget} ms (expected 100)`);
    assert.ok(releaseBudget > 1900 && releaseBudget <= 2000, `Release deadline ${releaseBudget} ms (expected 2000)`);
  });

  test('channels ping every 10 s and drop a connection whose ping is not answered in 5 s', () => {
    assert.equal(DEFAULT_CHANNEL_OPTIONS['grpc.keepalive_time_ms'], 10_000);
    assert.equal(DEFAULT_CHANNEL_OPTIONS['grpc.keepalive_timeout_ms'], 5_000);
  });

  test('close() releases held permits as UNSPECIFIED', async () => {
    const gov = new Governor(target, { failOpen: false });
    const permit = await gov.acquire('payments');
    assert.equal(gov.stats.held, 1);
    await gov.close();
    assert.deepEqual(
      only('Release').map((c) => [c.request.leaseId, c.request.outcome, c.request.latency]),
      [[permit.leaseId, 'OUTCOME_UNSPECIFIED', null]],
    );
    assert.equal(await permit.release('SUCCESS'), false, 'already released by close()');
    assert.equal(only('Release').length, 1);
  });

  test('a permit garbage-collected while held is released as UNSPECIFIED', async () => {
    const gc = vmGc();
    acquireScript = [{ ...GRANT, leaseId: 'dropped-lease' }];
    const gov = new Governor(target, { failOpen: false, logger: recordingLogger() });
    try {
      // Acquired in a frame of its own, so nothing here keeps the permit alive.
      await (async () => {
        const permit = await gov.acquire('payments');
        assert.equal(permit.leaseId, 'dropped-lease');
      })();
      await waitFor(
        async () => {
          gc();
          await delay(10);
          return only('Release').length === 1;
        },
        { what: 'the release of the collected permit' },
      );
      assert.deepEqual(
        only('Release').map((c) => [c.request.leaseId, c.request.outcome]),
        [['dropped-lease', 'OUTCOME_UNSPECIFIED']],
      );
      assert.equal(gov.stats.orphansReleased, 1);
      assert.equal(gov.stats.held, 0);
    } finally {
      await gov.close();
    }
  });
});

describe('retries and leases', () => {
  for (const reason of ['QUEUE_FULL', 'RATE_LIMITED']) {
    test(`callWithRetries honours retryAfterMs of ${reason} and numbers the attempts`, async () => {
      acquireScript = [
        GRANT,
        {
          granted: false,
          reason: `REJECT_REASON_${reason}`,
          retryAfter: { seconds: 0, nanos: 250e6 },
          limit: 4,
          inFlight: 4,
        },
        GRANT,
      ];
      const gov = new Governor(target, { failOpen: false });
      try {
        let tries = 0;
        const result = await gov.callWithRetries(
          'payments',
          () => {
            tries += 1;
            if (tries === 1) throw new Error('first try fails downstream');
            return 'second try worked';
          },
          { maxAttempts: 3, backoffMs: 1 },
        );
        assert.equal(result, 'second try worked');
      } finally {
        gov.close();
      }
      const acquires = only('Acquire');
      assert.deepEqual(
        acquires.map((c) => c.request.attempt),
        [0, 1, 2],
      );
      const gap = acquires[2].receivedAt - acquires[1].receivedAt;
      assert.ok(gap >= 240, `waited ${gap} ms after a rejection with retry_after 250ms`);
      assert.deepEqual(
        only('Release').map((c) => c.request.outcome),
        ['OUTCOME_FAILURE', 'OUTCOME_SUCCESS'],
      );
    });
  }

  test('callWithRetries gives up after maxAttempts with the last error', async () => {
    const rejection = { granted: false, reason: 'REJECT_REASON_SHED', retryAfter: { seconds: 0, nanos: 1e6 } };
    acquireScript = [rejection, rejection, rejection];
    const gov = new Governor(target, { failOpen: false });
    try {
      await assert.rejects(
        gov.callWithRetries('payments', () => assert.fail('must not run'), { maxAttempts: 3, backoffMs: 1 }),
        (err) => err instanceof RejectedError && err.reason === 'SHED',
      );
    } finally {
      gov.close();
    }
    assert.equal(only('Acquire').length, 3);
  });

  test('a lease the governor no longer knows is reported as lost and renewal stops', async () => {
    acquireScript = [{ ...GRANT, leaseTtl: { seconds: 0, nanos: 150e6 } }];
    renewReply = { renewed: false };
    const logger = recordingLogger();
    const gov = new Governor(target, { failOpen: false, logger });
    try {
      const permit = await gov.acquire('payments');
      await waitFor(() => permit.leaseLost, { what: 'the lease to be reported lost' });
      assert.equal(gov.stats.leasesLost, 1);
      assert.equal(gov.stats.held, 0);
      assert.match(logger.warnings.join('\n'), /lost/);
      const renewsAtLoss = only('Renew').length;
      await delay(200);
      assert.equal(only('Renew').length, renewsAtLoss, 'no renewal after the lease was lost');
      assert.equal(await permit.release(), true);
    } finally {
      gov.close();
    }
  });
});

describe('admin: pressure, elevatedAt, degradeAt and rate', () => {
  const STATUS = {
    maxConcurrency: 8,
    limit: 8,
    inFlight: 5,
    pressure: 'PRESSURE_ELEVATED',
    elevatedAt: 0.6,
    degradeAt: 'DEGRADE_AT_ELEVATED',
    rate: { perSecond: 12.5, burst: 3 },
    tenantRate: { perSecond: 2, burst: 1 },
    ratedTenants: 4,
    delayed: 1,
  };

  test('getDependency and listDependencies read them in the client names', async () => {
    adminReply = STATUS;
    const gov = new Governor(target, { failOpen: false });
    try {
      const s = await gov.admin.getDependency('payments');
      assert.deepEqual(
        { pressure: s.pressure, elevatedAt: s.elevatedAt, degradeAt: s.degradeAt, rate: s.rate },
        { pressure: Pressure.ELEVATED, elevatedAt: 0.6, degradeAt: DegradeAt.ELEVATED, rate: { perSecond: 12.5, burst: 3 } },
      );
      assert.deepEqual(
        { tenantRate: s.tenantRate, ratedTenants: s.ratedTenants, delayed: s.delayed },
        { tenantRate: { perSecond: 2, burst: 1 }, ratedTenants: 4, delayed: 1 },
      );
      const all = await gov.admin.listDependencies();
      assert.deepEqual(
        all.map((d) => [d.name, d.pressure, d.degradeAt, d.rate]),
        [
          ['a', 'ELEVATED', 'ELEVATED', { perSecond: 12.5, burst: 3 }],
          ['b', 'ELEVATED', 'ELEVATED', { perSecond: 12.5, burst: 3 }],
        ],
      );
      // No rate limit: the field is absent on the wire, null here.
      adminReply = { ...STATUS, rate: null, pressure: 'PRESSURE_SATURATED', degradeAt: 'DEGRADE_AT_SATURATED' };
      const none = await gov.admin.getDependency('payments');
      assert.deepEqual([none.rate, none.pressure, none.degradeAt], [null, 'SATURATED', 'SATURATED']);
    } finally {
      await gov.close();
    }
  });

  test('a sidecar that predates them reads UNSPECIFIED, 0 and null; a newer enum value reads UNSPECIFIED', async () => {
    adminReply = { maxConcurrency: 4 };
    const gov = new Governor(target, { failOpen: false });
    try {
      const old = await gov.admin.getDependency('payments');
      assert.deepEqual(
        [old.pressure, old.elevatedAt, old.degradeAt, old.rate, old.tenantRate, old.ratedTenants, old.delayed],
        [Pressure.UNSPECIFIED, 0, DegradeAt.UNSPECIFIED, null, null, 0, 0],
      );
      adminReply = { ...STATUS, pressure: 9, degradeAt: 9 }; // numbers this client has no name for
      const newer = await gov.admin.getDependency('payments');
      assert.deepEqual([newer.pressure, newer.degradeAt], [Pressure.UNSPECIFIED, DegradeAt.UNSPECIFIED]);
    } finally {
      await gov.close();
    }
  });

  test('updateDependency sends elevatedAt, degradeAt and rate, and leaves out what is not given', async () => {
    adminReply = STATUS;
    const gov = new Governor(target, { failOpen: false });
    const sent = () => only('UpdateDependency').at(-1).request.limits;
    try {
      const updated = await gov.admin.updateDependency('payments', {
        elevatedAt: 0.6,
        degradeAt: DegradeAt.ELEVATED,
        rate: { perSecond: 12.5, burst: 3 },
      });
      assert.deepEqual(updated.rate, { perSecond: 12.5, burst: 3 }, 'the answer is read like getDependency');
      assert.equal(sent().elevatedAt, 0.6);
      assert.equal(sent().degradeAt, 'DEGRADE_AT_ELEVATED');
      assert.deepEqual(sent().rate, { perSecond: 12.5, burst: 3 });

      // Unset: elevated_at absent (optional), degrade_at UNSPECIFIED and rate absent (both keep).
      await gov.admin.updateDependency('payments', { maxConcurrency: 8 });
      assert.equal(Object.hasOwn(sent(), 'elevatedAt'), false);
      assert.equal(sent().degradeAt, 'DEGRADE_AT_UNSPECIFIED');
      assert.equal(sent().rate, null);

      // rate: null removes the rate limit (per_second = 0); a burst left out is 0 (the sidecar's 1).
      await gov.admin.updateDependency('payments', { rate: null });
      assert.deepEqual(sent().rate, { perSecond: 0, burst: 0 });
      await gov.admin.updateDependency('payments', { rate: { perSecond: 50 }, degradeAt: 'saturated' });
      assert.deepEqual(sent().rate, { perSecond: 50, burst: 0 });
      assert.equal(sent().degradeAt, 'DEGRADE_AT_SATURATED');
      // Out of the sidecar's range, yet well-typed: sent for the sidecar to refuse with the field's name.
      await gov.admin.updateDependency('payments', { elevatedAt: 1.5, rate: { perSecond: 2e6, burst: 1 } });
      assert.equal(sent().elevatedAt, 1.5);
      // tenantRate goes the same way as rate.
      await gov.admin.updateDependency('payments', { tenantRate: { perSecond: 5, burst: 2 } });
      assert.deepEqual(sent().tenantRate, { perSecond: 5, burst: 2 });
      assert.equal(sent().rate, null, 'rate left out keeps it');
      await gov.admin.updateDependency('payments', { tenantRate: null });
      assert.deepEqual(sent().tenantRate, { perSecond: 0, burst: 0 });
      await assert.rejects(
        gov.admin.updateDependency('payments', { tenantRate: { perSecond: -1 } }),
        (e) => e instanceof TypeError && /tenantRate\.perSecond/.test(e.message),
      );
    } finally {
      await gov.close();
    }
  });

  test('bad elevatedAt, degradeAt and rate options are TypeErrors naming them, and send nothing', async () => {
    const gov = new Governor(target, { failOpen: false });
    try {
      const bad = [
        [{ elevatedAt: '0.5' }, /elevatedAt/],
        [{ elevatedAt: null }, /elevatedAt/],
        [{ degradeAt: 'OVERLOADED' }, /degradeAt must be one of SATURATED, ELEVATED/],
        [{ degradeAt: 'UNSPECIFIED' }, /degradeAt/],
        [{ degradeAt: null }, /degradeAt/],
        [{ rate: 5 }, /rate must be/],
        [{ rate: { burst: 5 } }, /rate\.perSecond/],
        [{ rate: { perSecond: 0 } }, /rate: null removes/],
        [{ rate: { perSecond: -1, burst: 1 } }, /rate\.perSecond/],
        [{ rate: { perSecond: Number.NaN } }, /rate\.perSecond/],
        [{ rate: { perSecond: 10, burst: 0 } }, /rate\.burst/],
        [{ rate: { perSecond: 10, burst: 1.5 } }, /rate\.burst/],
      ];
      for (const [limits, message] of bad) {
        await assert.rejects(gov.admin.updateDependency('payments', limits), (err) => {
          assert.ok(err instanceof TypeError, `${JSON.stringify(limits)}: got ${err}`);
          assert.match(err.message, message);
          return true;
        });
      }
      assert.equal(only('UpdateDependency').length, 0);
    } finally {
      await gov.close();
    }
  });
});

describe('routes and fair shares', () => {
  test("route goes with acquire, withPermit and callWithRetries, and defaults to the client's route", async () => {
    const gov = new Governor(target, { failOpen: false, useSession: false, tenant: 'acme', route: '/default' });
    try {
      await (await gov.acquire('payments', { route: '/search' })).release();
      await gov.withPermit('payments', () => 'ok', { tenant: 'beta', route: '/checkout' });
      await gov.callWithRetries('payments', () => 'ok', { route: '/cart' });
      await (await gov.acquire('payments')).release();
      await (await gov.acquire('payments', { route: '' })).release();
      assert.deepEqual(
        only('Acquire').map((c) => [c.request.tenant, c.request.route]),
        [
          ['acme', '/search'],
          ['beta', '/checkout'],
          ['acme', '/cart'],
          ['acme', '/default'],
          ['acme', ''],
        ],
      );
    } finally {
      await gov.close();
    }
  });

  test('fairness, tenants and tenantsTracked are read in the client names', async () => {
    adminReply = {
      fairness: { by: 'FAIR_BY_TENANT_ROUTE', weights: { acme: 3 }, defaultWeight: 2, maxTenants: 64 },
      tenants: [
        {
          tenant: 'acme',
          named: true,
          weight: 3,
          inFlight: 2,
          queued: 1,
          share: 2.5,
          grantedTotal: 7,
          rejectedTotal: 1,
          routes: [{ route: '/search', inFlight: 2, queued: 1, share: 2.5, grantedTotal: 7, rejectedTotal: 1 }],
        },
        { tenant: '', overflow: true, weight: 2, inFlight: 1, share: 1.5, grantedTotal: 1 },
      ],
      tenantsTracked: 5,
    };
    const gov = new Governor(target, { failOpen: false });
    try {
      const s = await gov.admin.getDependency('search');
      assert.deepEqual(s.fairness, { by: FairBy.TENANT_ROUTE, weights: { acme: 3 }, defaultWeight: 2, maxTenants: 64 });
      assert.deepEqual(s.tenants, [
        {
          tenant: 'acme',
          overflow: false,
          named: true,
          weight: 3,
          inFlight: 2,
          queued: 1,
          share: 2.5,
          grantedTotal: 7,
          rejectedTotal: 1,
          routes: [{ route: '/search', inFlight: 2, queued: 1, share: 2.5, grantedTotal: 7, rejectedTotal: 1 }],
        },
        {
          tenant: '',
          overflow: true,
          named: false,
          weight: 2,
          inFlight: 1,
          queued: 0,
          share: 1.5,
          grantedTotal: 1,
          rejectedTotal: 0,
          routes: [],
        },
      ]);
      assert.equal(s.tenantsTracked, 5);
      // Off (or a sidecar that predates them): null, none, 0; a newer enum value reads UNSPECIFIED.
      adminReply = { maxConcurrency: 4 };
      const off = await gov.admin.getDependency('search');
      assert.deepEqual([off.fairness, off.tenants, off.tenantsTracked], [null, [], 0]);
      adminReply = { fairness: { by: 9 } };
      assert.equal((await gov.admin.getDependency('search')).fairness.by, FairBy.UNSPECIFIED);
    } finally {
      await gov.close();
    }
  });

  test('updateDependency sends fairness; null and by NONE turn it off; left out keeps it', async () => {
    const gov = new Governor(target, { failOpen: false });
    const sent = () => only('UpdateDependency').at(-1).request.limits;
    try {
      await gov.admin.updateDependency('search', {
        fairness: { by: FairBy.TENANT_ROUTE, weights: { acme: 3, beta: 1 }, defaultWeight: 2, maxTenants: 64 },
      });
      assert.deepEqual(sent().fairness, {
        by: 'FAIR_BY_TENANT_ROUTE',
        weights: { acme: 3, beta: 1 },
        defaultWeight: 2,
        maxTenants: 64,
      });
      // by left out is TENANT; defaultWeight and maxTenants left out are 0 (the sidecar's defaults).
      await gov.admin.updateDependency('search', { fairness: { weights: { acme: 3 } } });
      assert.deepEqual(sent().fairness, { by: 'FAIR_BY_TENANT', weights: { acme: 3 }, defaultWeight: 0, maxTenants: 0 });
      await gov.admin.updateDependency('search', { fairness: { by: 'tenant_route' } });
      assert.equal(sent().fairness.by, 'FAIR_BY_TENANT_ROUTE');
      await gov.admin.updateDependency('search', { fairness: { by: FairBy.NONE } });
      assert.equal(sent().fairness.by, 'FAIR_BY_NONE');
      await gov.admin.updateDependency('search', { fairness: null });
      assert.equal(sent().fairness.by, 'FAIR_BY_NONE');
      await gov.admin.updateDependency('search', { maxQueue: 8 });
      assert.equal(sent().fairness, null, 'left out: absent, which keeps the fair shares');
    } finally {
      await gov.close();
    }
  });

  test('bad fairness options are TypeErrors naming them, and send nothing', async () => {
    const gov = new Governor(target, { failOpen: false });
    try {
      const bad = [
        [{ fairness: 'tenant' }, /fairness must be/],
        [{ fairness: { by: 'UNSPECIFIED' } }, /fairness\.by must be one of NONE, TENANT, TENANT_ROUTE/],
        [{ fairness: { by: 'ROUTE' } }, /fairness\.by/],
        [{ fairness: { by: 2 } }, /fairness\.by/],
        [{ fairness: { weights: ['acme'] } }, /fairness\.weights must be/],
        [{ fairness: { weights: { acme: 1.5 } } }, /fairness\.weights\["acme"\]/],
        [{ fairness: { weights: { acme: -1 } } }, /fairness\.weights\["acme"\]/],
        [{ fairness: { defaultWeight: '2' } }, /fairness\.defaultWeight/],
        [{ fairness: { maxTenants: null } }, /fairness\.maxTenants/],
      ];
      for (const [limits, message] of bad) {
        await assert.rejects(gov.admin.updateDependency('search', limits), (err) => {
          assert.ok(err instanceof TypeError, `${JSON.stringify(limits)}: got ${err}`);
          assert.match(err.message, message);
          return true;
        });
      }
      assert.equal(only('UpdateDependency').length, 0);
    } finally {
      await gov.close();
    }
  });
});
