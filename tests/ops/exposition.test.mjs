// /metrics of the real binary read by the official Python client's parsers:
// the 0.0.4 text that scrapers get by default must come out with counters as
// counters, and the OpenMetrics answer must parse with its exemplars.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import { startGovernor, governorClient } from './helpers.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const PYTHON = process.env.OPS_PYTHON || join(HERE, '.venv', 'bin', 'python');

function parse(format, text) {
  const out = execFileSync(PYTHON, [join(HERE, 'parse_metrics.py'), format], { input: text });
  return JSON.parse(out.toString());
}

async function scrape(admin, accept) {
  const response = await fetch(`http://${admin}/metrics`, { headers: accept ? { accept } : {} });
  assert.equal(response.status, 200);
  return { type: response.headers.get('content-type'), body: await response.text() };
}

const value = (family, name, labels) => family.samples
  .find(([n, l]) => n === name && Object.entries(labels).every(([k, v]) => l[k] === v))?.[2];

test('Python reads the default text format with counters as counters', { timeout: 60_000 }, async (t) => {
  const gov = await startGovernor('[dependencies.db]\nmax_concurrency = 1\nmax_queue = 0\n');
  t.after(gov.stop);
  const client = governorClient(gov.grpc);
  t.after(() => client.close());
  const held = await client.acquire({ dependency: 'db' });
  for (let i = 0; i < 3; i++) assert.equal((await client.acquire({ dependency: 'db' })).granted, false);
  await client.release({ leaseId: held.leaseId, outcome: 'OUTCOME_SUCCESS' });

  // fetch() sends "Accept: */*": plain text.
  const { type, body } = await scrape(gov.admin);
  assert.equal(type, 'text/plain; version=0.0.4; charset=utf-8');
  const families = parse('text', body);
  for (const name of ['governor_acquire', 'governor_release', 'governor_lease_expired',
    'governor_trace_spans_dropped', 'governor_trace_exports_failed', 'process_cpu_seconds']) {
    assert.equal(families[name]?.type, 'counter', `${name}: ${JSON.stringify(families[name])}`);
  }
  for (const name of ['governor_queue_wait_seconds', 'governor_permit_hold_seconds']) {
    assert.equal(families[name].type, 'histogram', name);
  }
  for (const name of ['governor_dependency_utilization', 'governor_dependency_limit',
    'process_resident_memory_bytes', 'process_open_fds', 'process_start_time_seconds']) {
    assert.equal(families[name].type, 'gauge', name);
  }
  const acquire = families.governor_acquire;
  assert.equal(value(acquire, 'governor_acquire_total', { dependency: 'db', result: 'granted' }), 1);
  assert.equal(value(acquire, 'governor_acquire_total', { dependency: 'db', reason: 'queue_full' }), 3);
  assert.equal(value(families.governor_release, 'governor_release_total', { dependency: 'db', outcome: 'success' }), 1);
  assert.equal(value(families.governor_dependency_utilization, 'governor_dependency_utilization', { dependency: 'db' }), 0);
});

test('OpenMetrics parses, with the trace id of a sampled request as exemplar', { timeout: 60_000 }, async (t) => {
  const gov = await startGovernor(
    '[telemetry]\notlp_endpoint = "http://127.0.0.1:9"\n[dependencies.db]\nmax_concurrency = 2\n',
  );
  t.after(gov.stop);
  const client = governorClient(gov.grpc);
  t.after(() => client.close());
  const traceId = '5b8efff798038103d269b633813fc60c';
  const metadata = new grpc.Metadata();
  metadata.set('traceparent', `00-${traceId}-eee19b7ec3c1b174-01`);
  const held = await client.acquire({ dependency: 'db' }, metadata);
  await client.release({ leaseId: held.leaseId, outcome: 'OUTCOME_SUCCESS' });

  const accept = 'application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2';
  const { type, body } = await scrape(gov.admin, accept);
  assert.equal(type, 'application/openmetrics-text; version=1.0.0; charset=utf-8');
  const families = parse('openmetrics', body);
  assert.equal(families.governor_acquire.type, 'counter');
  for (const name of ['governor_queue_wait_seconds', 'governor_permit_hold_seconds']) {
    const exemplars = families[name].samples.map(([, , , e]) => e).filter(Boolean);
    assert.deepEqual(exemplars, [{ trace_id: traceId }], `${name} exemplars`);
  }
  assert.ok(!body.includes(held.leaseId), 'a lease id in the metrics');
});
