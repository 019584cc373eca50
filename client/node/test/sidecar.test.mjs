// End-to-end tests against the REAL governor binary over real gRPC.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { format, inspect } from 'node:util';
import {
  DegradeAt,
  FairBy,
  Governor,
  GovernorError,
  GovernorUnavailableError,
  Outcome,
  Pressure,
  RejectReason,
  RejectedError,
} from '../index.js';
import { PKG_DIR, recordingLogger, startGovernor, waitFor } from './helpers.mjs';

const CONFIG = `
[server]
listen = "127.0.0.1:50051"

[defaults]
max_concurrency = 64
max_queue = 256
max_wait = "1s"
lease_ttl = "30s"

[limits]
allow_unknown_dependencies = true

[dependencies.basic]
max_concurrency = 4

[dependencies.solo]
max_concurrency = 1
max_queue = 4
max_wait = "2s"

[dependencies.leaky]
max_concurrency = 4
lease_ttl = "300ms"

[dependencies.orphan]
max_concurrency = 4
lease_ttl = "300ms"

[dependencies.full]
max_concurrency = 1
max_queue = 0

[dependencies.slow]
max_concurrency = 1
max_queue = 4
max_wait = "200ms"

[dependencies.renewed]
max_concurrency = 2
lease_ttl = "300ms"

[dependencies.abortable]
max_concurrency = 1
max_queue = 4
max_wait = "10s"

[dependencies.nobudget]
retry_budget = { ratio = 0.0, min_per_second = 0, ttl = "1s" }

[dependencies.retried]
max_concurrency = 4

[dependencies.fair]
max_concurrency = 4

[dependencies.fairadmin]
max_concurrency = 4
`;

let sidecar;
let gov;
const logger = recordingLogger();

before(async () => {
  sidecar = await startGovernor(CONFIG);
  gov = new Governor(sidecar.addr, { failOpen: false, logger });
});

after(async () => {
  gov?.close();
  await sidecar?.stop();
});

const status = (name) => gov.admin.getDependency(name);

/** Runs fixtures/hold-permit.mjs; resolves with the child and its lease id once it acquired. */
function spawnHolder(dependency, mode) {
  const child = spawn(process.execPath, [join(PKG_DIR, 'test', 'fixtures', 'hold-permit.mjs'), sidecar.addr, dependency, mode], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (c) => (stderr += c));
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const acquired = new Promise((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (c) => {
      out += c;
      const m = /ACQUIRED (\S+) (\S+)/.exec(out);
      if (m) resolve([m[1], m[2]]);
    });
    exited.then(({ code, signal }) => reject(new Error(`holder exited (${code ?? signal}) before acquiring: ${stderr}`)));
  });
  return { child, acquired, exited };
}

describe('permits against the real sidecar', () => {
  test('health reports SERVING for the server and the Governor service', async () => {
    assert.equal(await gov.health(), 'SERVING');
    assert.equal(await gov.health('governor.v1.Governor'), 'SERVING');
    assert.equal(await gov.health('no.such.Service'), 'SERVICE_UNKNOWN');
  });

  test('withPermit holds a slot during the callback and releases it with the result', async () => {
    const before = await status('basic');
    const result = await gov.withPermit('basic', async (permit) => {
      assert.equal(permit.degraded, false);
      assert.ok(permit.leaseId.length > 0, 'granted permit has a lease id');
      assert.ok(permit.leaseTtlMs > 0, 'granted permit has a lease TTL');
      const during = await status('basic');
      assert.equal(during.inFlight, 1);
      return 42;
    });
    assert.equal(result, 42);
    const afterStatus = await status('basic');
    assert.equal(afterStatus.inFlight, 0);
    assert.equal(afterStatus.grantedTotal, before.grantedTotal + 1);
    assert.equal(gov.stats.held, 0);
  });

  test("a permit's slot returns after the callback throws", async () => {
    const boom = new Error('downstream exploded');
    let ran = false;
    await assert.rejects(
      gov.withPermit('solo', async () => {
        ran = true;
        throw boom;
      }),
      (err) => err === boom,
    );
    assert.ok(ran);
    const s = await status('solo');
    assert.equal(s.maxConcurrency, 1);
    assert.equal(s.inFlight, 0);
    // With max_concurrency = 1, a try-acquire (never queue) only succeeds if the slot came back.
    const second = await gov.acquire('solo', { maxWaitMs: 0 });
    assert.equal(second.degraded, false);
    assert.equal((await status('solo')).inFlight, 1);
    assert.equal(await second.release(Outcome.SUCCESS, 1), true);
    assert.equal((await status('solo')).inFlight, 0);
  });

  test('release is idempotent', async () => {
    const permit = await gov.acquire('basic');
    const first = permit.release('SUCCESS', 5);
    const second = permit.release('FAILURE', 5);
    assert.equal(await first, true);
    assert.equal(await second, false);
    assert.equal(await permit.release(), false);
    assert.equal(permit.released, true);
    assert.equal((await status('basic')).inFlight, 0);
  });

  for (const [mode, onSession] of [['hold', true], ['hold-unary', false]]) {
    const how = onSession ? 'at once from its Session stream' : 'by lease expiry (unary)';
    test(`a killed client process's permit returns ${how}`, async () => {
      const before = await status('leaky');
      const holder = spawnHolder('leaky', mode);
      const [leaseId, session] = await holder.acquired;
      assert.ok(leaseId.length > 0);
      assert.equal(session, String(onSession));
      assert.equal((await status('leaky')).inFlight, before.inFlight + 1);
      holder.child.kill('SIGKILL');
      assert.equal((await holder.exited).signal, 'SIGKILL');
      const s = await waitFor(
        async () => {
          const st = await status('leaky');
          return st.inFlight === 0 ? st : null;
        },
        { timeoutMs: 5000, what: 'in_flight == 0 on "leaky" after the holder was killed' },
      );
      if (onSession) {
        assert.equal(s.expiredTotal, before.expiredTotal, 'freed by the session, not by expiry');
      } else {
        assert.ok(s.expiredTotal > before.expiredTotal, `expired_total went up (${before.expiredTotal} -> ${s.expiredTotal})`);
      }
    });
  }

  test('the renewal timer never keeps the process alive', async () => {
    const before = await status('orphan');
    const holder = spawnHolder('orphan', 'exit');
    await holder.acquired;
    // The child returns from its module without releasing or closing: it must exit by itself.
    const timeout = delay(10_000).then(() => 'still running');
    const exit = await Promise.race([holder.exited, timeout]);
    if (exit === 'still running') holder.child.kill('SIGKILL');
    assert.deepEqual(exit, { code: 0, signal: null });
    const s = await waitFor(
      async () => {
        const st = await status('orphan');
        return st.inFlight === 0 ? st : null;
      },
      { timeoutMs: 5000, what: 'in_flight == 0 on "orphan"' },
    );
    assert.ok(s.expiredTotal > before.expiredTotal);
  });

  test('a permit shows a short handle of its lease, never the id, and still releases with it', async () => {
    const permit = await gov.acquire('renewed');
    const id = permit.leaseId;
    assert.ok(id.length > 8, 'a granted permit has a lease id');
    const handle = createHash('sha256').update(id).digest('hex').slice(0, 8);
    assert.equal(permit.leaseHandle, handle);
    // Renewals run in the background: render while they do.
    await waitFor(async () => permit.renewals >= 1 || null, { timeoutMs: 5000, what: 'a renewal' });
    const lines = [];
    const realLog = console.log;
    console.log = (...args) => lines.push(format(...args));
    try {
      console.log(permit);
      console.log('held %o %O %s %j', permit, permit, permit, permit);
      console.log({ permit, all: [permit] });
    } finally {
      console.log = realLog;
    }
    const rendered = [
      ...lines,
      inspect(permit),
      inspect(permit, { showHidden: true, depth: Infinity, getters: true }),
      // Without the custom inspector: own properties only, the id is private.
      inspect(permit, { customInspect: false, depth: Infinity }),
      JSON.stringify(permit),
      JSON.stringify({ ...permit }),
      String(permit),
      `${permit}`,
      Object.keys(permit).join(','),
    ];
    for (const text of rendered) {
      assert.ok(!text.includes(id), `lease id in: ${text}`);
    }
    assert.ok(inspect(permit).includes(`leaseHandle: '${handle}'`), inspect(permit));
    assert.equal(JSON.parse(JSON.stringify(permit)).leaseHandle, handle);
    assert.equal((await status('renewed')).inFlight, 1);
    assert.equal(await permit.release(Outcome.SUCCESS), true);
    assert.equal((await status('renewed')).inFlight, 0);
    assert.ok(!logger.warnings.some((w) => w.includes(id)), logger.warnings.join('\n'));
  });

  test('renewal keeps a permit alive past its TTL, and stops at release', async () => {
    const permit = await gov.acquire('renewed');
    assert.ok(permit.leaseTtlMs > 0 && permit.leaseTtlMs <= 300, `lease TTL ${permit.leaseTtlMs}`);
    const before = await status('renewed');
    // Four TTLs plus the governor's ≤ ~1 s expiry slack: without renewal the lease would be gone.
    await delay(4 * 300 + 1000);
    const during = await status('renewed');
    assert.equal(during.inFlight, 1);
    assert.equal(during.expiredTotal, before.expiredTotal);
    assert.equal(permit.leaseLost, false);
    assert.ok(permit.renewals >= 4, `renewed ${permit.renewals} times`);
    assert.equal(await permit.release(Outcome.SUCCESS), true);
    const renewalsAtRelease = permit.renewals;
    await delay(300);
    assert.equal(permit.renewals, renewalsAtRelease, 'no renewal after release');
    assert.equal((await status('renewed')).inFlight, 0);
  });

  test('control: without renewal the same permit expires', async () => {
    const lazy = new Governor(sidecar.addr, { failOpen: false, renewIntervalMs: 60_000, logger });
    try {
      const before = await status('renewed');
      const permit = await lazy.acquire('renewed');
      const s = await waitFor(
        async () => {
          const st = await status('renewed');
          return st.expiredTotal > before.expiredTotal ? st : null;
        },
        { timeoutMs: 5000, what: 'the unrenewed lease to expire' },
      );
      assert.equal(s.inFlight, 0);
      assert.equal(await permit.release(), false, 'releasing an expired lease answers false');
    } finally {
      lazy.close();
    }
  });

  test('a full queue surfaces as RejectedError QUEUE_FULL', async () => {
    const holder = await gov.acquire('full');
    const rejectedBefore = gov.stats.rejected;
    let ran = false;
    try {
      await assert.rejects(
        gov.withPermit('full', () => {
          ran = true;
        }),
        (err) => {
          assert.ok(err instanceof RejectedError);
          assert.ok(err instanceof GovernorError);
          assert.equal(err.code, 'REJECTED');
          assert.equal(err.reason, 'QUEUE_FULL');
          assert.equal(err.dependency, 'full');
          assert.equal(typeof err.retryAfterMs, 'number');
          assert.ok(err.retryAfterMs >= 0);
          assert.equal(err.limit, 1);
          assert.equal(err.inFlight, 1);
          assert.equal(err.queued, 0);
          return true;
        },
      );
    } finally {
      await holder.release();
    }
    assert.equal(ran, false, 'callback must not run without a permit');
    assert.equal(gov.stats.rejected, rejectedBefore + 1);
  });

  test('waiting out max_wait surfaces as RejectedError QUEUE_TIMEOUT', async () => {
    const holder = await gov.acquire('slow');
    try {
      const started = performance.now();
      await assert.rejects(gov.acquire('slow'), (err) => {
        assert.ok(err instanceof RejectedError);
        assert.equal(err.reason, 'QUEUE_TIMEOUT');
        assert.equal(err.inFlight, 1);
        return true;
      });
      const waited = performance.now() - started;
      assert.ok(waited >= 150, `waited ${waited} ms in the queue (max_wait 200ms)`);
    } finally {
      await holder.release();
    }
  });

  test('aborting a queued unary acquire cancels it and leaves the queue', async () => {
    const unary = new Governor(sidecar.addr, { failOpen: false, logger, useSession: false });
    const holder = await gov.acquire('abortable');
    try {
      const controller = new AbortController();
      const pending = unary.acquire('abortable', { signal: controller.signal });
      await waitFor(async () => (await status('abortable')).queued === 1, { what: 'the acquire to be queued' });
      controller.abort();
      await assert.rejects(pending, { name: 'AbortError' });
      await waitFor(async () => (await status('abortable')).queued === 0, { what: 'the waiter to leave the queue' });
      assert.equal((await status('abortable')).inFlight, 1);
    } finally {
      await holder.release();
      await unary.close();
    }
  });

  test('an aborted acquire on the session is released the moment it is granted', async () => {
    const before = await status('abortable');
    const holder = await gov.acquire('abortable');
    const controller = new AbortController();
    const pending = gov.acquire('abortable', { signal: controller.signal });
    await waitFor(async () => (await status('abortable')).queued === 1, { what: 'the acquire to be queued' });
    controller.abort();
    await assert.rejects(pending, { name: 'AbortError' });
    // A stream has no cancel message: it stays queued until granted ...
    assert.equal((await status('abortable')).queued, 1);
    assert.equal(await holder.release(), true);
    // ... and the client gives the late grant straight back.
    const s = await waitFor(
      async () => {
        const st = await status('abortable');
        return st.grantedTotal === before.grantedTotal + 2 && st.inFlight === 0 ? st : null;
      },
      { what: 'the late grant to be released' },
    );
    assert.equal(s.expiredTotal, before.expiredTotal);
  });

  test('invalid input is a GovernorError, never a degraded permit, even when failing open', async () => {
    const open = new Governor(sidecar.addr, { failOpen: true, logger });
    try {
      await assert.rejects(open.acquire('not a valid name!'), (err) => {
        assert.ok(err instanceof GovernorError);
        assert.ok(!(err instanceof GovernorUnavailableError));
        assert.equal(err.code, 'INVALID_ARGUMENT');
        assert.match(err.message, /dependency/);
        return true;
      });
      assert.equal(open.stats.degraded, 0);
    } finally {
      open.close();
    }
  });

  test('callWithRetries sends attempt numbers and returns the first success', async () => {
    const attempts = [];
    const result = await gov.callWithRetries(
      'retried',
      (permit, attempt) => {
        attempts.push([attempt, permit.attempt]);
        if (attempt < 2) throw new Error(`flaky ${attempt}`);
        return 'ok';
      },
      { maxAttempts: 4, backoffMs: 1 },
    );
    assert.equal(result, 'ok');
    assert.deepEqual(attempts, [
      [0, 0],
      [1, 1],
      [2, 2],
    ]);
    assert.equal((await status('retried')).inFlight, 0);
  });

  test('callWithRetries stops at RETRY_BUDGET_EXHAUSTED', async () => {
    let calls = 0;
    const failure = new Error('downstream down');
    await assert.rejects(
      gov.callWithRetries(
        'nobudget',
        () => {
          calls += 1;
          throw failure;
        },
        { maxAttempts: 5, backoffMs: 1 },
      ),
      (err) => {
        assert.ok(err instanceof RejectedError, `got ${err}`);
        assert.equal(err.reason, 'RETRY_BUDGET_EXHAUSTED');
        return true;
      },
    );
    assert.equal(calls, 1, 'only the first attempt ran');
    assert.equal((await status('nobudget')).inFlight, 0);
  });

  test('admin can change limits at runtime', async () => {
    const updated = await gov.admin.updateDependency('basic', { maxConcurrency: 7 });
    assert.equal(updated.maxConcurrency, 7);
    assert.equal((await status('basic')).maxConcurrency, 7);
    const budget = { ratio: 0.5, minPerSecond: 3, ttlMs: 2000 };
    assert.deepEqual((await gov.admin.updateDependency('basic', { retryBudget: budget, maxWaitMs: 750 })).retryBudget, budget);
    const s = await status('basic');
    assert.deepEqual(s.retryBudget, budget);
    assert.equal(s.maxWaitMs, 750);
    assert.equal(s.maxConcurrency, 7, 'unset limits keep their value');
    await assert.rejects(gov.admin.updateDependency('basic', { retryBudget: { ratio: 1 } }), TypeError);
    await assert.rejects(gov.admin.updateDependency('basic', { maxConcurrency: 0 }), { code: 'INVALID_ARGUMENT' });
    const names = (await gov.admin.listDependencies()).map((d) => d.name);
    assert.ok(names.includes('basic'));
    await assert.rejects(gov.admin.getDependency('never-seen-dependency'), { code: 'NOT_FOUND' });
  });

  test('admin can turn an adaptive limit on, switch it and turn it off', async () => {
    const on = await gov.admin.updateDependency('adaptive', {
      maxConcurrency: 40,
      adaptive: { algorithm: 'vegas', minLimit: 3, windowMs: 250, shadow: true },
    });
    assert.equal(on.limitAlgorithm, 'vegas');
    assert.equal(on.limit, 40, 'shadow mode enforces maxConcurrency');
    assert.equal(on.adaptiveLimit, 40, 'the computed limit starts from the limit in force');
    assert.deepEqual(
      [on.adaptive.algorithm, on.adaptive.minLimit, on.adaptive.windowMs, on.adaptive.shadow],
      ['vegas', 3, 250, true],
    );
    assert.equal(on.latencyBaselineMs, null, 'nothing measured yet');
    const enforcing = await gov.admin.updateDependency('adaptive', { adaptive: { shadow: false } });
    assert.equal(enforcing.limit, 40);
    assert.equal(enforcing.adaptive.algorithm, 'vegas', 'unset settings keep their value');
    await assert.rejects(
      gov.admin.updateDependency('adaptive', { adaptive: { minLimit: 0 } }),
      (err) => err.code === 'INVALID_ARGUMENT' && err.message.includes('limits.adaptive.min_limit'),
    );
    await assert.rejects(gov.admin.updateDependency('adaptive', { adaptive: { algorithm: 'bbr' } }), TypeError);
    const off = await gov.admin.updateDependency('adaptive', { adaptive: { algorithm: 'static' } });
    assert.deepEqual([off.limitAlgorithm, off.adaptive, off.adaptiveLimit, off.limit], ['static', null, null, 40]);
  });

  test('admin sets a rate limit, reads it back and removes it; the sidecar enforces it', async () => {
    // 0.5 a second: the next token is 2 s after the burst, well clear of the test's own pace.
    const set = await gov.admin.updateDependency('rated', { maxConcurrency: 8, rate: { perSecond: 0.5, burst: 2 } });
    assert.deepEqual(set.rate, { perSecond: 0.5, burst: 2 });
    assert.equal(set.pressure, Pressure.NONE);
    assert.deepEqual((await status('rated')).rate, { perSecond: 0.5, burst: 2 });
    assert.equal((await status('basic')).rate, null, 'no rate limit unless one is set');

    // The burst: two grants with maxWait 0, each spending a token; the slots are given back at once.
    for (let i = 0; i < 2; i += 1) await (await gov.acquire('rated', { maxWaitMs: 0 })).release();
    const drained = await status('rated');
    assert.equal(drained.inFlight, 0);
    assert.equal(drained.pressure, Pressure.SATURATED, 'no token: an arrival would have to wait');
    // A free slot, no token, no wait allowed: refused at once with the exact time until the token.
    const started = performance.now();
    await assert.rejects(gov.acquire('rated', { maxWaitMs: 0 }), (err) => {
      assert.ok(err instanceof RejectedError, `got ${err}`);
      assert.equal(err.reason, RejectReason.RATE_LIMITED);
      assert.ok(err.retryAfterMs > 0 && err.retryAfterMs <= 2000, `retryAfterMs ${err.retryAfterMs}`);
      assert.equal(err.pressure, Pressure.OVERLOADED, 'a refusal is an overload');
      return true;
    });
    assert.ok(performance.now() - started < 1000, 'refused without waiting');
    assert.equal((await status('rated')).pressure, Pressure.OVERLOADED);

    // null removes it (unset limits keep their value); the next acquire is granted.
    const removed = await gov.admin.updateDependency('rated', { rate: null });
    assert.deepEqual([removed.rate, removed.maxConcurrency], [null, 8]);
    assert.equal((await status('rated')).rate, null);
    await (await gov.acquire('rated', { maxWaitMs: 0 })).release();

    // A burst left out is 1; out of range is the sidecar's INVALID_ARGUMENT, naming the field.
    assert.deepEqual((await gov.admin.updateDependency('rated', { rate: { perSecond: 100 } })).rate, {
      perSecond: 100,
      burst: 1,
    });
    await assert.rejects(
      gov.admin.updateDependency('rated', { rate: { perSecond: 2e6 } }),
      (err) => err.code === 'INVALID_ARGUMENT' && err.message.includes('rate.per_second'),
    );
    await assert.rejects(
      gov.admin.updateDependency('rated', { rate: { perSecond: 10, burst: 2e6 } }),
      (err) => err.code === 'INVALID_ARGUMENT' && err.message.includes('rate.burst'),
    );
    assert.deepEqual((await status('rated')).rate, { perSecond: 100, burst: 1 }, 'a refused update changes nothing');
  });

  test('admin sets elevatedAt and degradeAt; the pressure and DEGRADE answers follow them', async () => {
    const defaults = await status('basic');
    assert.deepEqual([defaults.elevatedAt, defaults.degradeAt], [0.7, DegradeAt.SATURATED]);
    const set = await gov.admin.updateDependency('elevated', {
      maxConcurrency: 4,
      elevatedAt: 0.5,
      degradeAt: DegradeAt.ELEVATED,
    });
    assert.deepEqual([set.elevatedAt, set.degradeAt, set.pressure], [0.5, 'ELEVATED', 'NONE']);
    const held = [await gov.acquire('elevated'), await gov.acquire('elevated')];
    try {
      assert.equal(held[1].pressure, Pressure.ELEVATED, '2 of 4 in use is at elevatedAt 0.5');
      assert.equal((await status('elevated')).pressure, Pressure.ELEVATED);
      // degradeAt ELEVATED: a degradable acquire is answered DEGRADE though a slot is free.
      await assert.rejects(gov.acquire('elevated', { degradable: true }), { reason: RejectReason.DEGRADE });
      // Back to SATURATED (elevatedAt kept): the free slot is granted.
      const back = await gov.admin.updateDependency('elevated', { degradeAt: 'saturated' });
      assert.deepEqual([back.degradeAt, back.elevatedAt], ['SATURATED', 0.5]);
      await (await gov.acquire('elevated', { degradable: true })).release();
    } finally {
      for (const permit of held) await permit.release();
    }
    await assert.rejects(
      gov.admin.updateDependency('elevated', { elevatedAt: 1.5 }),
      (err) => err.code === 'INVALID_ARGUMENT' && err.message.includes('elevated_at'),
    );
  });
});

describe('routes and fair shares against the real sidecar', () => {
  /** The one entry of `tenant` in a status's tenants. */
  const tenantOf = (s, tenant) => {
    const listed = s.tenants.filter((t) => t.tenant === tenant);
    assert.equal(listed.length, 1, `${tenant} listed ${listed.length} times: ${JSON.stringify(s.tenants)}`);
    return listed[0];
  };
  const routesOf = (t) => t.routes.map((r) => [r.route, r.inFlight]);

  test('a route is listed under its tenant while its permit is held (fairness by TENANT_ROUTE)', async () => {
    // acme is named, so it stays listed when idle.
    const set = await gov.admin.updateDependency('fair', { fairness: { by: FairBy.TENANT_ROUTE, weights: { acme: 3 } } });
    assert.equal(set.fairness.by, FairBy.TENANT_ROUTE);
    assert.deepEqual(routesOf(tenantOf(set, 'acme')), []);

    const held = await gov.withPermit(
      'fair',
      async () => tenantOf(await status('fair'), 'acme'),
      { tenant: 'acme', route: '/search' },
    );
    assert.deepEqual([held.named, held.weight, held.inFlight], [true, 3, 1]);
    assert.deepEqual(routesOf(held), [['/search', 1]]);
    let acme = tenantOf(await status('fair'), 'acme');
    assert.deepEqual([acme.inFlight, acme.grantedTotal, routesOf(acme)], [0, 1, []], 'an idle route is not listed');

    // The client's route (and tenant) go with every acquire that names none.
    const routed = new Governor(sidecar.addr, { failOpen: false, tenant: 'acme', route: '/orders' });
    try {
      const permit = await routed.acquire('fair');
      acme = tenantOf(await status('fair'), 'acme');
      assert.deepEqual([acme.inFlight, routesOf(acme)], [1, [['/orders', 1]]]);
      await permit.release();
    } finally {
      await routed.close();
    }
    acme = tenantOf(await status('fair'), 'acme');
    assert.deepEqual([acme.inFlight, acme.grantedTotal, routesOf(acme)], [0, 2, []]);
  });

  for (const useSession of [true, false]) {
    test(`a route over 128 bytes is INVALID_ARGUMENT naming route (${useSession ? 'session' : 'unary'})`, async () => {
      const client = new Governor(sidecar.addr, { failOpen: true, useSession });
      try {
        await assert.rejects(client.acquire('fair', { tenant: 'acme', route: 'r'.repeat(129) }), (err) => {
          assert.ok(err instanceof GovernorError && !(err instanceof GovernorUnavailableError), `got ${err}`);
          assert.equal(err.code, 'INVALID_ARGUMENT');
          assert.ok(err.details.startsWith('route:'), err.details);
          return true;
        });
        assert.equal(client.stats.degraded, 0);
        // 128 bytes is the limit, not over it.
        await (await client.acquire('fair', { tenant: 'acme', route: 'r'.repeat(128) })).release();
      } finally {
        await client.close();
      }
    });
  }

  test('admin sets fair shares with weights, reads them back and turns them off', async () => {
    assert.deepEqual([(await status('fairadmin')).fairness, (await status('fairadmin')).tenants], [null, []]);
    const fairness = { by: FairBy.TENANT, weights: { gold: 5, silver: 2 }, defaultWeight: 2, maxTenants: 64 };
    const set = await gov.admin.updateDependency('fairadmin', { fairness });
    assert.deepEqual(set.fairness, fairness);
    const s = await status('fairadmin');
    assert.deepEqual(s.fairness, fairness);
    assert.deepEqual(
      s.tenants.map((t) => [t.tenant, t.weight, t.named, t.inFlight]).sort(),
      [
        ['gold', 5, true, 0],
        ['silver', 2, true, 0],
      ],
    );
    assert.equal(s.tenantsTracked, 2);

    // Left-out fields take the defaults; a fairness left out keeps what is in force.
    await gov.admin.updateDependency('fairadmin', { fairness: { by: 'TENANT_ROUTE' } });
    const kept = await gov.admin.updateDependency('fairadmin', { maxQueue: 8 });
    assert.deepEqual(kept.fairness, { by: FairBy.TENANT_ROUTE, weights: {}, defaultWeight: 1, maxTenants: 1024 });
    await assert.rejects(
      gov.admin.updateDependency('fairadmin', { fairness: { weights: { gold: 1001 } } }),
      (err) => err.code === 'INVALID_ARGUMENT' && err.message.includes('fairness'),
    );

    const off = await gov.admin.updateDependency('fairadmin', { fairness: { by: FairBy.NONE } });
    assert.deepEqual([off.fairness, off.tenants, off.tenantsTracked], [null, [], 0]);
    assert.equal((await status('fairadmin')).fairness, null);
    // null is the same as by NONE.
    await gov.admin.updateDependency('fairadmin', { fairness });
    assert.equal((await gov.admin.updateDependency('fairadmin', { fairness: null })).fairness, null);
  });
});

describe('unix domain socket', () => {
  let uds;
  before(async () => {
    const socketDirSidecar = await startGovernor('[defaults]\nmax_concurrency = 2\n', {
      extraArgs: ['--uds', join(sidecar.dir, 'gov.sock')],
    });
    uds = socketDirSidecar;
  });
  after(async () => {
    await uds?.stop();
  });

  test('acquires over unix:///path.sock', async () => {
    assert.equal(uds.uds, join(sidecar.dir, 'gov.sock'));
    const overUds = new Governor(`unix://${uds.uds}`, { failOpen: false });
    try {
      assert.equal(await overUds.health(), 'SERVING');
      const value = await overUds.withPermit('over-uds', async (permit) => {
        assert.equal(permit.degraded, false);
        return (await overUds.admin.getDependency('over-uds')).inFlight;
      });
      assert.equal(value, 1);
      assert.equal((await overUds.admin.getDependency('over-uds')).inFlight, 0);
    } finally {
      overUds.close();
    }
  });
});
