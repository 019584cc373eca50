// Makes docs/status-page.png: three dependencies of the real binary under
// changing load for a minute, then a screenshot of the status page.
//   node tests/ops/screenshot.mjs docs/status-page.png [seconds]
import { chromium } from 'playwright-core';
import { startGovernor, governorClient } from './helpers.mjs';

const [out = 'status-page.png', seconds = '60'] = process.argv.slice(2);
const gov = await startGovernor(`
[dependencies.payments]
max_concurrency = 16
max_queue = 32
max_wait = "250ms"
[dependencies.inventory]
max_concurrency = 6
max_queue = 12
max_wait = "400ms"
[dependencies.search]
max_concurrency = 4
max_queue = 4
max_wait = "100ms"
`);
const client = governorClient(gov.grpc);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const started = Date.now();
const end = started + Number(seconds) * 1000;

// Callers per dependency over time: payments calm, inventory swelling into
// saturation, search in bursts beyond what it can take.
const load = {
  payments: (t) => 6 + 4 * Math.sin(t / 9),
  inventory: (t) => 4 + 4 * Math.sin(t / 7 + 1),
  search: (t) => (Math.floor(t / 12) % 2 ? 14 : 2),
};
const hold = { payments: 40, inventory: 120, search: 80 };

async function caller(dependency, index) {
  while (Date.now() < end) {
    const t = (Date.now() - started) / 1000;
    if (index >= load[dependency](t)) { await sleep(100); continue; }
    const answer = await client.acquire({ dependency });
    if (answer.granted) {
      await sleep(hold[dependency] * (0.5 + Math.random()));
      await client.release({ leaseId: answer.leaseId, outcome: 'OUTCOME_SUCCESS' });
    } else {
      await sleep(20);
    }
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = await browser.newPage({ viewport: { width: 1480, height: 300 } });
await page.goto(`http://${gov.admin}/`);
const callers = Promise.all(Object.keys(load).flatMap((dep) => Array.from({ length: 16 }, (_, i) => caller(dep, i))));
// While the load still runs.
await sleep(end - Date.now() - 500);
await page.screenshot({ path: out, fullPage: true });
await callers;
await browser.close();
client.close();
await gov.stop();
console.log(`wrote ${out}`);
