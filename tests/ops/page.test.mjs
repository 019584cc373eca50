// The status page of the real binary in headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core): a dependency shows up within
// the page's refresh of its first Acquire, and its numbers and plots move
// under real overload over gRPC.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { chromium } from 'playwright-core';
import { startGovernor, governorClient } from './helpers.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FLAGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
// How long the overload runs; longer fills the plots for a screenshot.
const LOAD_SECONDS = Number(process.env.OPS_LOAD_SECONDS || 4);
const SCREENSHOT = process.env.OPS_SCREENSHOT || join(tmpdir(), 'governor-status-page.png');
const DEP = 'checkout-db';

const cellText = (page, cls) =>
  page.locator(`tr[data-dependency="${DEP}"] td.${cls}`).innerText();

test('the status page shows a dependency at once and follows it under load', { timeout: 90_000 }, async (t) => {
  // Every new dependency gets 4 permits, a queue of 4 and 150 ms of wait.
  const gov = await startGovernor(
    '[defaults]\nmax_concurrency = 4\nmax_queue = 4\nmax_wait = "150ms"\n',
  );
  t.after(gov.stop);
  const client = governorClient(gov.grpc);
  t.after(() => client.close());
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
  t.after(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1400, height: 420 } });
  const origin = `http://${gov.admin}`;
  const foreign = [];
  page.on('request', (request) => {
    if (!request.url().startsWith(origin + '/')) foreign.push(request.url());
  });
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));

  await page.goto(origin + '/');
  await page.locator('#empty').waitFor({ state: 'visible' });
  // One refresh has rendered (the summary counts dependencies).
  await page.waitForFunction(() => /0 dependencies/.test(document.getElementById('summary').textContent));

  // First Acquire: the row appears within the next refresh (one second).
  const started = Date.now();
  const first = await client.acquire({ dependency: DEP });
  assert.equal(first.granted, true);
  await page.locator(`tr[data-dependency="${DEP}"]`).waitFor({ timeout: 2_000 });
  const shownAfter = Date.now() - started;
  t.diagnostic(`row shown ${shownAfter} ms after the first Acquire`);
  assert.ok(shownAfter < 2_000, `shown after ${shownAfter} ms`);
  assert.equal(await cellText(page, 'limit'), '4');
  assert.equal((await cellText(page, 'in-flight')).trim(), '1');
  assert.equal(await cellText(page, 'queue'), '0 / 4');
  assert.equal((await cellText(page, 'pressure')).trim(), 'none');

  // Overload: all four permits held, then waves of eight more every 50 ms:
  // the queue stays full of waiters that time out after 150 ms, the rest
  // are refused at once.
  const leases = [first.leaseId];
  for (let i = 0; i < 3; i++) leases.push((await client.acquire({ dependency: DEP })).leaseId);
  const until = Date.now() + LOAD_SECONDS * 1000;
  let refused = 0;
  const waves = [];
  while (Date.now() < until) {
    waves.push(Promise.all(Array.from({ length: 8 }, () =>
      client.acquire({ dependency: DEP }).then((r) => { if (!r.granted) refused += 1; }))));
    await new Promise((r) => setTimeout(r, 50));
  }
  // The page has followed it meanwhile: saturated and refusing, its plots
  // risen.
  await page.waitForFunction((dep) => {
    const row = document.querySelector(`tr[data-dependency="${dep}"]`);
    const text = (cls) => row.querySelector(`td.${cls}`).innerText.trim();
    const plotMax = (cls) => Number(row.querySelector(`td.${cls} canvas`).dataset.max);
    return text('in-flight') === '4' && text('pressure') === 'overloaded'
      && Number.parseFloat(text('rejections')) > 0 && text('wait-p99').endsWith('ms')
      && plotMax('plot-queue') > 0 && plotMax('plot-rejections') > 0;
  }, DEP, { timeout: 5_000 });
  const waitP99 = await cellText(page, 'wait-p99');
  const rejections = Number.parseFloat(await cellText(page, 'rejections'));
  t.diagnostic(`under load: wait p99 ${waitP99}, ${rejections} rejections/s, ${refused} refused`);
  // The waiters timed out after 150 ms: the p99 is in the bucket above it.
  const p99ms = Number.parseFloat(waitP99);
  assert.ok(p99ms >= 100 && p99ms <= 250, `wait p99 ${waitP99}`);
  const points = async (cls) => Number(await page.locator(`tr[data-dependency="${DEP}"] td.${cls} canvas`).getAttribute('data-points'));
  const maxOf = async (cls) => Number(await page.locator(`tr[data-dependency="${DEP}"] td.${cls} canvas`).getAttribute('data-max'));
  assert.ok(await points('plot-in-flight') >= 2, 'in-flight plot has points');
  assert.equal(await maxOf('plot-in-flight'), 4);
  assert.ok(await maxOf('plot-rejections') > 0, 'the rejection plot rose');
  assert.ok(await maxOf('plot-queue') > 0, 'the queue plot rose');
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  t.diagnostic(`screenshot: ${SCREENSHOT}`);
  await Promise.all(waves);

  // Released: back to calm within a couple of refreshes.
  for (const leaseId of leases) {
    assert.equal((await client.release({ leaseId, outcome: 'OUTCOME_SUCCESS' })).released, true);
  }
  await page.waitForFunction((dep) => {
    const row = document.querySelector(`tr[data-dependency="${dep}"]`);
    return row.querySelector('td.in-flight').innerText.trim() === '0'
      && row.querySelector('td.pressure').innerText.trim() === 'none';
  }, DEP, { timeout: 5_000 });

  // A lease id is a credential: never on the page.
  const html = await page.content();
  for (const leaseId of leases) assert.ok(!html.includes(leaseId), 'a lease id on the page');
  assert.deepEqual(foreign, [], 'requests beyond the sidecar');
  assert.deepEqual(errors, [], 'script errors');
});

test('the page says so when the sidecar goes away', { timeout: 60_000 }, async (t) => {
  const gov = await startGovernor('[defaults]\n');
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
  t.after(() => browser.close());
  const page = await browser.newPage();
  await page.goto(`http://${gov.admin}/`);
  await page.waitForFunction(() => /dependenc/.test(document.getElementById('summary').textContent));
  await gov.stop();
  await page.waitForFunction(() => document.getElementById('state').className === 'stale', null, { timeout: 5_000 });
  assert.match(await page.locator('#state').innerText(), /cannot reach the sidecar/);
});

