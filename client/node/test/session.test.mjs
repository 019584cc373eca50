// The Session stream (issue 11) against the real governor binary, and the
// unary fallback against an in-test grpc-js server without the Session RPC.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { Governor, PermitLostError, PROTO_PATH } from '../index.js';
import { recordingLogger, startGovernor, waitFor } from './helpers.mjs';

const CONFIG = `
[server]
listen = "127.0.0.1:0"

[defaults]
max_concurrency = 64
max_queue = 256
max_wait = "1s"
lease_ttl = "30s"

[limits]
allow_unknown_dependencies = true

[dependencies.full]
max_concurrency = 1
max_queue = 4
max_wait = "5s"
`;

describe('the Session stream against the real sidecar', () => {
  let sidecar;
  let admin;
  const logger = recordingLogger();
  before(async () => {
    sidecar = await startGovernor(CONFIG);
    admin = new Governor(sidecar.addr, { failOpen: false, useSession: false, logger });
  });
  after(async () => {
    await admin?.close();
    await sidecar?.stop();
  });
  const status = (name) => admin.admin.getDependency(name);

  test('permits go over the session by default, and close() frees them at once', async () => {
    const gov = new Governor(sidecar.addr, { failOpen: false, logger });
    const first = await gov.acquire('close');
    const second = await gov.acquire('close');
    assert.equal(first.onSession, true);
    assert.equal(second.onSession, true);
    assert.equal((await status('close')).inFlight, 2);
    assert.equal(await first.release(), true); // over the session, with its answer
    assert.equal((await status('close')).inFlight, 1);
    await gov.close(); // ends the stream: the sidecar frees what it holds, no Release sent
    const s = await status('close');
    assert.equal(s.inFlight, 0);
    assert.equal(s.expiredTotal, 0);
    assert.equal(await second.release(), false);
  });

  test('a waiting acquire never delays a later one on the same session', async () => {
    const gov = new Governor(sidecar.addr, { failOpen: false, logger });
    const held = await admin.acquire('full');
    try {
      let settled = false;
      const waiting = gov.acquire('full').finally(() => (settled = true));
      await waitFor(async () => (await status('full')).queued === 1, { what: 'the first acquire to queue' });
      const other = await gov.acquire('free', { maxWaitMs: 0 });
      assert.equal(other.onSession, true);
      assert.equal(settled, false, 'the first acquire is still waiting');
      assert.equal(await other.release(), true);
      assert.equal(await held.release(), true);
      const granted = await waiting;
      assert.equal(granted.onSession, true);
      assert.equal(await granted.release(), true);
    } finally {
      await gov.close();
    }
  });

  test('a per-message error keeps the session open', async () => {
    const gov = new Governor(sidecar.addr, { failOpen: true, logger });
    try {
      const first = await gov.acquire('free');
      await assert.rejects(gov.acquire('bad name!'), (err) => {
        assert.equal(err.code, 'INVALID_ARGUMENT');
        assert.match(err.details, /^dependency:/);
        return true;
      });
      const second = await gov.acquire('free');
      assert.equal(second.onSession, true);
      assert.equal(second._stream, first._stream);
      await first.release();
      await second.release();
    } finally {
      await gov.close();
    }
  });

  test('a sidecar that dies makes the held permit lost, through release() and withPermit()', async () => {
    const own = await startGovernor(CONFIG);
    const gov = new Governor(own.addr, { failOpen: false, logger: recordingLogger() });
    try {
      const permit = await gov.acquire('lost');
      assert.equal(permit.onSession, true);
      let entered;
      const inBlock = new Promise((r) => (entered = r));
      let proceed;
      const gate = new Promise((r) => (proceed = r));
      const wrapped = gov.withPermit('lost', async () => {
        entered();
        await gate;
        return 'done';
      });
      await inBlock;
      own.proc.kill('SIGKILL');
      await waitFor(() => permit.leaseLost, { what: 'the session to end' });
      await assert.rejects(permit.release(), (err) => {
        assert.ok(err instanceof PermitLostError);
        assert.equal(err.code, 'PERMIT_LOST');
        assert.equal(err.dependency, 'lost');
        assert.match(err.reason, /UNAVAILABLE|CANCELLED|INTERNAL/);
        return true;
      });
      assert.equal(await permit.release(), false); // never a second release
      proceed();
      await assert.rejects(wrapped, PermitLostError);
    } finally {
      await gov.close();
      await own.stop();
    }
  });
});

describe('unary fallback', () => {
  let server;
  let target;
  const calls = [];
  let sessions = 0;
  before(async () => {
    const definition = protoLoader.loadSync(PROTO_PATH, { keepCase: false, longs: Number, enums: String, defaults: true });
    const pkg = grpc.loadPackageDefinition(definition);
    server = new grpc.Server();
    // Acquire, Release and Renew only: grpc-js answers Session UNIMPLEMENTED.
    const { Session, ...unary } = pkg.governor.v1.Governor.service;
    assert.ok(Session, 'the packaged proto has the Session RPC');
    server.addService(unary, {
      Acquire(call, cb) {
        calls.push('Acquire');
        cb(null, { granted: true, leaseId: `lease-${calls.length}`, leaseTtl: { seconds: 30, nanos: 0 } });
      },
      Release(call, cb) {
        calls.push('Release');
        cb(null, { released: true });
      },
      Renew(call, cb) {
        calls.push('Renew');
        cb(null, { renewed: true, leaseTtl: { seconds: 30, nanos: 0 } });
      },
    });
    // Count the Session attempts the server refuses.
    server.addService(
      { Session: { ...Session, path: '/governor.v1.Governor/Session' } },
      {
        Session(call) {
          sessions += 1;
          call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: 'Method not found' });
        },
      },
    );
    const port = await new Promise((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
    );
    target = `127.0.0.1:${port}`;
  });
  after(() => server?.forceShutdown());

  test('a sidecar without the Session RPC gets unary calls, and is not asked again for every acquire', async () => {
    const gov = new Governor(target, { failOpen: false, logger: recordingLogger() });
    try {
      const permits = [];
      for (let i = 0; i < 3; i += 1) permits.push(await gov.acquire('payments'));
      assert.deepEqual(permits.map((p) => p.onSession), [false, false, false]);
      for (const p of permits) assert.equal(await p.release(), true);
      assert.deepEqual(calls, ['Acquire', 'Acquire', 'Acquire', 'Release', 'Release', 'Release']);
      assert.equal(sessions, 1, 'UNIMPLEMENTED is remembered for SESSION_UNARY_RETRY_MS');
    } finally {
      await gov.close();
    }
  });
});
