// Typed usage of @governor/client, checked by `tsc --noEmit` (test/package.test.mjs).
// The @ts-expect-error lines make the check fail if the declarations loosen to `any`.
import Governor, {
  Governor as NamedGovernor,
  GovernorError,
  GovernorUnavailableError,
  DegradeAt,
  FairBy,
  Outcome,
  Permit,
  Pressure,
  RejectedError,
  type DependencyStatus,
  type GovernorStats,
  type TenantStatus,
  type HealthStatus,
  type RejectReason,
} from '@governor/client';

async function main(): Promise<void> {
  const gov: NamedGovernor = new Governor('127.0.0.1:50051', {
    failOpen: true,
    tenant: 'acme',
    route: '/search',
    logger: console,
    warnIntervalMs: 30_000,
  });
  const overUds = new Governor('unix:///run/governor/governor.sock', { failOpen: false });

  const total: number = await gov.withPermit(
    'payments',
    async (permit: Permit) => {
      const degraded: boolean = permit.degraded;
      return degraded ? 0 : permit.inFlight;
    },
    { priority: 'CRITICAL', tenant: 'checkout', route: '/pay', attempt: 0, maxWaitMs: 250, signal: AbortSignal.timeout(1000) },
  );

  const permit = await gov.acquire('payments', { maxWaitMs: 0 });
  const released: boolean = await permit.release(Outcome.FAILURE, 12.5);
  await permit.release('TIMEOUT');
  // @ts-expect-error: not an outcome
  await permit.release('OK');
  // @ts-expect-error: not a priority
  await gov.acquire('payments', { priority: 'URGENT' });
  // @ts-expect-error: leaseId is read-only
  permit.leaseId = 'forged';

  const body: string = await gov.callWithRetries('search', async (p, attempt: number) => `${p.dependency}#${attempt}`, {
    maxAttempts: 3,
    backoffMs: 50,
    retryOn: (err) => !(err instanceof TypeError),
  });

  try {
    await gov.acquire('payments');
  } catch (err) {
    if (err instanceof RejectedError) {
      const reason: RejectReason = err.reason;
      const retryAfterMs: number = err.retryAfterMs;
      const counts: number[] = [err.limit, err.inFlight, err.queued];
      const rateLimited: boolean = reason === 'RATE_LIMITED';
      void [reason, retryAfterMs, counts, rateLimited];
      // @ts-expect-error: reasons are a closed set
      const bogus: typeof err.reason = 'FULL';
      void bogus;
    } else if (err instanceof GovernorUnavailableError) {
      const base: GovernorError = err;
      const code: string = base.code;
      void code;
    }
  }

  const quote: number | string = await gov.withPermit('pricing', async () => 42, {
    fallback: async (rej: RejectedError) => `cached (${rej.reason}, ${rej.pressure})`,
  });
  const onlyNumbers: number = await gov.withPermit('pricing', () => 1, { degradable: true, fallback: () => 0 });
  const level: Pressure = (await gov.acquire('pricing', { degradable: false })).pressure;
  const saturated: boolean = level === Pressure.SATURATED;
  // @ts-expect-error: pressures are a closed set
  const badLevel: Pressure = 'HIGH';
  // @ts-expect-error: degradable is a boolean
  await gov.acquire('pricing', { degradable: 'yes' });
  const retried: string = await gov.callWithRetries('pricing', async () => 'fresh', { fallback: () => 'stale' });
  void [quote, onlyNumbers, saturated, badLevel, retried];

  const health: HealthStatus = await gov.health('governor.v1.Governor');
  const status: DependencyStatus = await gov.admin.getDependency('payments');
  const updated = await gov.admin.updateDependency('payments', { maxConcurrency: 16, maxWaitMs: 250 });
  const rated = await gov.admin.updateDependency('payments', {
    elevatedAt: 0.6,
    degradeAt: DegradeAt.ELEVATED,
    rate: { perSecond: 50, burst: 10 },
  });
  await gov.admin.updateDependency('payments', { rate: { perSecond: 5 }, degradeAt: 'SATURATED' });
  await gov.admin.updateDependency('payments', { rate: null });
  const perSecond: number | undefined = rated.rate?.perSecond;
  const loaded: boolean = status.pressure === Pressure.OVERLOADED || status.degradeAt === 'ELEVATED';
  const share: number = status.elevatedAt;
  // @ts-expect-error: UNSPECIFIED is only read, never set (leave degradeAt out to keep it)
  await gov.admin.updateDependency('payments', { degradeAt: 'UNSPECIFIED' });
  // @ts-expect-error: a rate needs perSecond
  await gov.admin.updateDependency('payments', { rate: { burst: 3 } });
  // @ts-expect-error: the status's rate may be null
  const burst: number = status.rate.burst;
  void [perSecond, loaded, share, burst];
  const fair = await gov.admin.updateDependency('search', {
    fairness: { by: FairBy.TENANT_ROUTE, weights: { acme: 3 }, defaultWeight: 1, maxTenants: 256 },
  });
  await gov.admin.updateDependency('search', { fairness: { by: 'NONE' } });
  await gov.admin.updateDependency('search', { fairness: null });
  const fairBy: FairBy | undefined = fair.fairness?.by;
  const acme: TenantStatus | undefined = fair.tenants.find((t) => t.tenant === 'acme');
  const routes: string[] = acme?.routes.map((r) => `${r.route}:${r.inFlight}/${r.share}`) ?? [];
  const tracked: number = fair.tenantsTracked;
  // @ts-expect-error: UNSPECIFIED is only read, never set
  await gov.admin.updateDependency('search', { fairness: { by: 'UNSPECIFIED' } });
  // @ts-expect-error: the status's fairness may be null
  const weights: Record<string, number> = fair.fairness.weights;
  // @ts-expect-error: a route is a string
  await gov.acquire('search', { route: 7 });
  void [fairBy, routes, tracked, weights];
  const stats: GovernorStats = gov.stats;
  // @ts-expect-error: stats are a read-only snapshot
  stats.degraded = 0;
  void [total, released, body, health, status.inFlight, updated.maxConcurrency, stats.degraded];
  await gov.close();
  await overUds.close();
}

void main;
