// End to end: the Node client's OpenTelemetry trace context reaches the REAL
// sidecar, which exports its spans over OTLP/gRPC to a receiver run in this
// test (grpc-js implementing TraceService/Export from a minimal hand-written
// proto, test/fixtures/otlp-trace.proto). The spans must join the caller's trace.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { context, propagation, trace, TraceFlags } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { Governor } from '../index.js';
import { PKG_DIR, startGovernor, waitFor } from './helpers.mjs';

const OTLP_PROTO = join(PKG_DIR, 'test', 'fixtures', 'otlp-trace.proto');
const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN_ID = '00f067aa0ba902b7';

let receiver;
let sidecar;
let gov;
/** Every span the receiver got, flattened: { traceId, spanId, parentSpanId, name, attributes }. */
const spans = [];

const hex = (bytes) => Buffer.from(bytes ?? []).toString('hex');

function attributeValue(any) {
  if (!any || !any.value) return undefined;
  return any[any.value];
}

before(async () => {
  const definition = protoLoader.loadSync(OTLP_PROTO, { keepCase: true, longs: String, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(definition);
  receiver = new grpc.Server();
  receiver.addService(pkg.opentelemetry.proto.collector.trace.v1.TraceService.service, {
    Export(call, callback) {
      for (const rs of call.request.resource_spans) {
        for (const ss of rs.scope_spans) {
          for (const span of ss.spans) {
            spans.push({
              traceId: hex(span.trace_id),
              spanId: hex(span.span_id),
              parentSpanId: hex(span.parent_span_id),
              name: span.name,
              attributes: Object.fromEntries(span.attributes.map((kv) => [kv.key, attributeValue(kv.value)])),
            });
          }
        }
      }
      callback(null, {});
    },
  });
  const port = await new Promise((resolve, reject) =>
    receiver.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );

  // The standard OTEL_* variables override [telemetry]; keep the sidecar on this config.
  for (const name of Object.keys(process.env)) {
    if (name.startsWith('OTEL_')) delete process.env[name];
  }
  sidecar = await startGovernor(
    `[telemetry]\notlp_endpoint = "http://127.0.0.1:${port}"\nexport_delay = "50ms"\n\n` +
      `[dependencies.traced]\nmax_concurrency = 2\n`,
  );
  gov = new Governor(sidecar.addr, { failOpen: false });

  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
});

after(async () => {
  gov?.close();
  await sidecar?.stop();
  receiver?.forceShutdown();
  context.disable();
  propagation.disable();
});

describe('trace context reaches the real sidecar', () => {
  test("governor.acquire and governor.permit are exported in the caller's trace", async () => {
    const ctx = trace.setSpanContext(context.active(), {
      traceId: TRACE_ID,
      spanId: SPAN_ID,
      traceFlags: TraceFlags.SAMPLED,
      isRemote: true,
    });
    const result = await context.with(ctx, () =>
      gov.withPermit('traced', (permit) => {
        assert.equal(permit.degraded, false, 'a real permit, not a fail-open one');
        return 'done';
      }),
    );
    assert.equal(result, 'done');

    const inTrace = (name) => spans.find((s) => s.name === name && s.traceId === TRACE_ID);
    const found = await waitFor(
      () => {
        const acquire = inTrace('governor.acquire');
        const permit = inTrace('governor.permit');
        return acquire && permit ? { acquire, permit } : null;
      },
      {
        timeoutMs: 10_000,
        intervalMs: 50,
        what: `governor.acquire and governor.permit in trace ${TRACE_ID}`,
      },
    ).catch((err) => {
      // Show what did arrive instead.
      err.message += `\nspans received: ${JSON.stringify(spans, null, 1)}\nsidecar stderr:\n${sidecar.stderr().slice(-4000)}`;
      throw err;
    });

    assert.equal(found.acquire.parentSpanId, SPAN_ID, "governor.acquire's parent is the caller's span");
    assert.equal(found.acquire.attributes['governor.dependency'], 'traced');
    assert.equal(found.permit.attributes['governor.outcome'], 'success');
  });
});
