// Hand-written type declarations for @governor/client (an ES module).
import type { ChannelCredentials, ChannelOptions } from '@grpc/grpc-js';

/** Absolute path of the governor.proto shipped inside the package. */
export declare const PROTO_PATH: string;
/** Added to maxWaitMs to form the Acquire deadline (1000 ms). */
export declare const ACQUIRE_DEADLINE_MARGIN_MS: number;
/** The largest max_wait the sidecar accepts (3 600 000 ms). */
export declare const MAX_SIDECAR_WAIT_MS: number;
/** The Acquire deadline without a maxWaitMs: MAX_SIDECAR_WAIT_MS + ACQUIRE_DEADLINE_MARGIN_MS. */
export declare const DEFAULT_ACQUIRE_TIMEOUT_MS: number;
/** The deadline of Release calls and the cap of each Renew's (2000 ms). */
export declare const DEFAULT_CALL_TIMEOUT_MS: number;
/** The channel options every Governor starts from: fast reconnect, HTTP/2 keepalive (10 s, 5 s to answer). */
export declare const DEFAULT_CHANNEL_OPTIONS: Readonly<ChannelOptions>;
/** How long a client uses the unary RPCs after the sidecar answered the Session stream UNIMPLEMENTED (60 000 ms). */
export declare const SESSION_UNARY_RETRY_MS: number;
/** A Session stream holding and waiting for nothing is ended after this long (1000 ms). */
export declare const SESSION_IDLE_MS: number;
/** Delay (ms) before reopening the stream after the n-th consecutive break: 50 ms doubling to 5 s, full jitter. */
export declare const sessionBackoffMs: (n: number) => number;

export type Outcome = 'SUCCESS' | 'FAILURE' | 'TIMEOUT' | 'CANCELLED';
export declare const Outcome: {
  readonly SUCCESS: 'SUCCESS';
  readonly FAILURE: 'FAILURE';
  readonly TIMEOUT: 'TIMEOUT';
  readonly CANCELLED: 'CANCELLED';
};

export type Priority = 'CRITICAL' | 'NORMAL' | 'SHEDDABLE';
export declare const Priority: {
  readonly CRITICAL: 'CRITICAL';
  readonly NORMAL: 'NORMAL';
  readonly SHEDDABLE: 'SHEDDABLE';
};

export type RejectReason =
  | 'UNSPECIFIED'
  | 'QUEUE_FULL'
  | 'QUEUE_TIMEOUT'
  | 'RETRY_BUDGET_EXHAUSTED'
  | 'SHED'
  | 'SHUTTING_DOWN'
  /** The dependency's rate limit had no token within the wait: retryAfterMs is the exact time until the next one. */
  | 'RATE_LIMITED'
  /** A degradable acquire that would have had to wait: serve the cheaper answer (withPermit's fallback). */
  | 'DEGRADE';
export declare const RejectReason: { readonly [K in RejectReason]: K };

/**
 * How loaded the dependency was right after the decision, on every answer:
 * NONE below elevated_at (default 0.7) of the limit with nobody waiting,
 * ELEVATED at or above it, SATURATED when every permit is in use or someone
 * waits, OVERLOADED when it turned a request away within the last second;
 * UNSPECIFIED from a sidecar that predates it, and on a degraded permit.
 */
export type Pressure = 'UNSPECIFIED' | 'NONE' | 'ELEVATED' | 'SATURATED' | 'OVERLOADED';
export declare const Pressure: { readonly [K in Pressure]: K };

/**
 * From which pressure a degradable acquire is answered DEGRADE: SATURATED (the default) only when
 * it would have to wait; ELEVATED also when a slot is free but the pressure is ELEVATED or worse.
 * UNSPECIFIED only when read from a sidecar that predates it.
 */
export type DegradeAt = 'UNSPECIFIED' | 'SATURATED' | 'ELEVATED';
export declare const DegradeAt: { readonly [K in DegradeAt]: K };

/**
 * What a dependency's fair shares are kept by: NONE (none: one queue, by priority then
 * arrival), TENANT (a share for each tenant), TENANT_ROUTE (each tenant's share split
 * equally between its routes). UNSPECIFIED only when read from a newer sidecar.
 */
export type FairBy = 'UNSPECIFIED' | 'NONE' | 'TENANT' | 'TENANT_ROUTE';
export declare const FairBy: { readonly [K in FairBy]: K };

export type HealthStatus = 'SERVING' | 'NOT_SERVING' | 'UNKNOWN' | 'SERVICE_UNKNOWN';

/** Anything with a `warn` method, such as `console` or a pino/winston logger. */
export interface Logger {
  warn(message: string, ...args: unknown[]): void;
}

export interface GovernorOptions {
  /**
   * Send acquire, release and renew over one Session stream (default true), opened on the
   * first acquire; false: the unary RPCs only. See the README ("The Session stream").
   */
  useSession?: boolean;
  /**
   * What to do when the sidecar gives no answer (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED,
   * UNKNOWN, INTERNAL, DATA_LOSS): true (default) proceeds with a degraded permit
   * (`permit.degraded === true`); false throws GovernorUnavailableError. Rejections (every
   * reason, SHUTTING_DOWN included) and every other code are thrown under both.
   */
  failOpen?: boolean;
  /** Receives the fail-open warning (at most once per warnIntervalMs) and release/renew problems. Default: console. */
  logger?: Logger;
  /** Minimum time between two fail-open warnings. Default 60000. */
  warnIntervalMs?: number;
  /**
   * Default max wait sent with every Acquire (it can only shorten the governor's configured one).
   * Unset by default: the governor's configured max_wait applies, and the Acquire deadline
   * is acquireTimeoutMs.
   */
  maxWaitMs?: number;
  /** Added to the max wait to form the Acquire deadline. Default 1000. */
  deadlineMarginMs?: number;
  /** The Acquire deadline when no max wait is set. Default DEFAULT_ACQUIRE_TIMEOUT_MS (1 h + 1 s). */
  acquireTimeoutMs?: number;
  /** Deadline of Release, health and admin calls, and the cap of each Renew's. Default 2000. */
  callTimeoutMs?: number;
  /** Default tenant sent with every Acquire. */
  tenant?: string;
  /** Default route (within the tenant) sent with every Acquire. */
  route?: string;
  /** Inject the active OpenTelemetry context into call metadata when @opentelemetry/api is installed. Default true. */
  propagateTrace?: boolean;
  /** Fixed lease renewal interval; by default a third of the lease TTL the governor granted. */
  renewIntervalMs?: number;
  /** Default: insecure (plaintext), as for a local sidecar. */
  credentials?: ChannelCredentials;
  /** Extra grpc-js channel options. */
  channelOptions?: ChannelOptions;
}

export interface AcquireOptions {
  priority?: Priority;
  /** The caller's tenant, at most 128 bytes (default: the client's tenant option). */
  tenant?: string;
  /**
   * The route within the tenant (an endpoint, a query class), at most 128 bytes (default:
   * the client's route option). Under fairness by TENANT_ROUTE, a tenant's routes share
   * its part equally.
   */
  route?: string;
  /** 0 for a first try, n >= 1 for the n-th retry (draws on the retry budget). Default 0. */
  attempt?: number;
  /** Shortens the dependency's max wait; 0 means never queue. Also sets the call deadline (plus a margin). */
  maxWaitMs?: number;
  /** Aborting cancels a pending Acquire; withPermit then reports CANCELLED. */
  signal?: AbortSignal;
  /** Overrides the client's failOpen policy for this call. */
  failOpen?: boolean;
  /**
   * The caller can serve a cheaper answer without this call: rather than queue, the sidecar
   * answers at once with a RejectedError of reason 'DEGRADE'. Default false (true in
   * withPermit/callWithRetries when a fallback is given).
   */
  degradable?: boolean;
}

export interface WithPermitOptions<F = never> extends AcquireOptions {
  /**
   * Runs instead of fn when the sidecar answers DEGRADE, and withPermit resolves to its result.
   * Implies degradable: true unless degradable is set. Every other rejection still rejects.
   */
  fallback?: (rejection: RejectedError) => F | PromiseLike<F>;
}

export interface RetryOptions<F = never> extends Omit<WithPermitOptions<F>, 'attempt'> {
  /** Total tries, including the first. Default 3. */
  maxAttempts?: number;
  /** Base of the exponential backoff between tries. Default 100. */
  backoffMs?: number;
  /** Cap of the backoff. Default 10000. */
  maxBackoffMs?: number;
  /** Randomise each backoff within [backoff/2, backoff]. Default true. */
  jitter?: boolean;
  /** Whether an error thrown by fn is worth a retry. Default: always. */
  retryOn?: (error: unknown, attempt: number) => boolean;
}

export interface GovernorStats {
  readonly acquired: number;
  readonly rejected: number;
  /** Degraded (fail-open) permits handed out. */
  readonly degraded: number;
  /** Acquire calls that found the sidecar unreachable (fail-open or fail-closed). */
  readonly unavailable: number;
  readonly released: number;
  readonly releaseFailures: number;
  readonly renewed: number;
  readonly renewFailures: number;
  readonly leasesLost: number;
  /** Permits garbage-collected while held, released by the client as UNSPECIFIED. */
  readonly orphansReleased: number;
  /** Permits currently held by this client. */
  readonly held: number;
}

export declare class Permit {
  private constructor();
  readonly dependency: string;
  /**
   * Empty for a degraded permit. A bearer credential: never log it (console.log,
   * util.inspect and JSON.stringify of a permit show leaseHandle instead).
   */
  readonly leaseId: string;
  /** 8 hex digits of the lease id's SHA-256, for logs; empty for a degraded permit. */
  readonly leaseHandle: string;
  /** The permit without its lease id. */
  toJSON(): Record<string, unknown>;
  /** True when the sidecar was unreachable and the client failed open. */
  readonly degraded: boolean;
  readonly leaseTtlMs: number;
  readonly queueWaitMs: number;
  readonly limit: number;
  readonly inFlight: number;
  readonly queued: number;
  /** The dependency's pressure right after the grant ('UNSPECIFIED' when degraded). */
  readonly pressure: Pressure;
  readonly attempt: number;
  /** performance.now() when the permit was granted. */
  readonly acquiredAt: number;
  /** Successful lease renewals so far. */
  readonly renewals: number;
  readonly released: boolean;
  /** True when the lease expired before a renewal, or its Session stream ended. */
  readonly leaseLost: boolean;
  /** True when the permit was granted on the client's Session stream. */
  readonly onSession: boolean;
  /**
   * Gives the permit back; idempotent. Resolves true when the governor released the lease.
   * latencyMs defaults to the time since the permit was granted. Rejects with a TypeError
   * for a bad outcome or latency (the permit is then still held), and with PermitLostError
   * when its Session stream ended first (the sidecar freed the lease then).
   */
  release(outcome?: Outcome, latencyMs?: number): Promise<boolean>;
}

export interface RetryBudget {
  ratio: number;
  minPerSecond: number;
  ttlMs: number;
}

export interface DependencyStatus {
  name: string;
  maxConcurrency: number;
  inFlight: number;
  queued: number;
  maxQueue: number;
  maxWaitMs: number;
  leaseTtlMs: number;
  retryBudgetAvailable: number;
  grantedTotal: number;
  rejectedTotal: number;
  expiredTotal: number;
  retryBudget: RetryBudget | null;
  /** The enforced limit: maxConcurrency, or less while an adaptive limit holds it lower. */
  limit: number;
  /** What the adaptive limit computed (also in shadow mode); null when static. */
  adaptiveLimit: number | null;
  limitAlgorithm: 'static' | 'gradient' | 'vegas' | 'aimd';
  /** The adaptive settings in force; null when static. */
  adaptive: Required<AdaptiveLimit> | null;
  /** The adaptive limit's no-load latency estimate, once measured. */
  latencyBaselineMs: number | null;
  /** Typical latency of the adaptive limit's last window, once measured. */
  latencyRecentMs: number | null;
  limitChangesTotal: number;
  /** The dependency's pressure at the instant of the status ('UNSPECIFIED' from a sidecar that predates it). */
  pressure: Pressure;
  /** Share of the enforced limit in use from which the pressure is ELEVATED, in (0, 1] (default 0.7; 0 from a sidecar that predates it). */
  elevatedAt: number;
  /** From which pressure a degradable acquire is answered DEGRADE. */
  degradeAt: DegradeAt;
  /** The rate limit in force; null when there is none. */
  rate: RateLimit | null;
  /** Each tenant's own rate limit in force; null when there is none. */
  tenantRate: RateLimit | null;
  /** Tenants whose tenantRate bucket is still refilling (at most 1024 are kept). */
  ratedTenants: number;
  /** Acquires waiting, outside the queue, for their tenant's token. */
  delayed: number;
  /** The fair shares in force; null when there are none. */
  fairness: Fairness | null;
  /** Under fair shares: every named tenant, then the 32 others with the most load (in flight + queued). */
  tenants: TenantStatus[];
  /** Tenants (and routes) tracked, listed or not. */
  tenantsTracked: number;
}

/** Weighted max-min fair shares of the permits between tenants, as in force. */
export interface Fairness {
  by: FairBy;
  /** Each named tenant's weight, in [1, 1000]. */
  weights: Record<string, number>;
  /** Every other tenant's weight. */
  defaultWeight: number;
  /** Tenants and routes tracked at once; beyond it, new tenants share one overflow entry. */
  maxTenants: number;
}

/** One tenant of a dependency's fair shares. */
export interface TenantStatus {
  /** Empty for the requests without a tenant, and for the overflow entry. */
  tenant: string;
  /** The entry shared by the tenants that found no room in the table. */
  overflow: boolean;
  /** Named in the fairness weights. */
  named: boolean;
  weight: number;
  inFlight: number;
  queued: number;
  /** Its weighted max-min share of the enforced limit, given every tenant's demand right now. */
  share: number;
  /** Since it entered the table. */
  grantedTotal: number;
  rejectedTotal: number;
  /** Under by TENANT_ROUTE: its routes with a permit or a waiter. */
  routes: RouteStatus[];
}

export interface RouteStatus {
  /** Empty for the requests without a route (and routes that found no room). */
  route: string;
  inFlight: number;
  queued: number;
  /** Its part of the tenant's share. */
  share: number;
  grantedTotal: number;
  rejectedTotal: number;
}

/** The fairness option of updateDependency; left-out fields take the sidecar's defaults. */
export interface FairnessUpdate {
  /** Default 'TENANT'; 'NONE' turns the fair shares off. */
  by?: Exclude<FairBy, 'UNSPECIFIED'>;
  /** Each named tenant's weight, in [1, 1000]. */
  weights?: Record<string, number>;
  /** Every other tenant's weight, in [1, 1000]; left out (or 0) is 1. */
  defaultWeight?: number;
  /** Tenants and routes tracked at once, in [1, 100000]; left out (or 0) is 1024. */
  maxTenants?: number;
}

/** A token bucket (GCRA): perSecond tokens a second, at most burst at once; a grant needs a token and a slot. */
export interface RateLimit {
  /** In [0.001, 1 000 000]. */
  perSecond: number;
  /** In [1, 1 000 000]. */
  burst: number;
}

/** Adaptive limit settings; unset fields keep their value (see the README for defaults). */
export interface AdaptiveLimit {
  /** 'static' turns the adaptive limit off. */
  algorithm?: 'static' | 'gradient' | 'vegas' | 'aimd';
  minLimit?: number;
  initialLimit?: number;
  shadow?: boolean;
  windowMs?: number;
  minSamples?: number;
  baselineWindows?: number;
  dropThreshold?: number;
  backoff?: number;
  tolerance?: number;
  alpha?: number;
  beta?: number;
}

export interface DependencyLimits {
  maxConcurrency?: number;
  maxQueue?: number;
  maxWaitMs?: number;
  leaseTtlMs?: number;
  /** Replaces the whole budget: all three fields are required. */
  retryBudget?: RetryBudget;
  /** Turns an adaptive limit on, changes it, switches its algorithm, or ('static') turns it off. */
  adaptive?: AdaptiveLimit;
  /** Share of the enforced limit in use from which the pressure is ELEVATED, in (0, 1]. */
  elevatedAt?: number;
  /** From which pressure a degradable acquire is answered DEGRADE; left out keeps the setting. */
  degradeAt?: Exclude<DegradeAt, 'UNSPECIFIED'>;
  /**
   * Sets the rate limit (burst left out is 1); null removes it; left out keeps the current one.
   * A perSecond that is not a positive number, or a burst that is not a positive integer, is a TypeError.
   */
  rate?: { perSecond: number; burst?: number } | null;
  /** The same for each tenant's own rate limit (acquires that name a tenant). */
  tenantRate?: { perSecond: number; burst?: number } | null;
  /**
   * Sets the fair shares between tenants, replacing the current ones whole; null (or by
   * 'NONE') turns them off; left out keeps them. A weight, defaultWeight or maxTenants
   * that is not a non-negative integer, or an unknown by, is a TypeError.
   */
  fairness?: FairnessUpdate | null;
}

export declare class GovernorAdminClient {
  private constructor();
  /** Rejects with GovernorError code 'NOT_FOUND' for an unknown dependency. */
  getDependency(name: string): Promise<DependencyStatus>;
  listDependencies(): Promise<DependencyStatus[]>;
  updateDependency(name: string, limits: DependencyLimits): Promise<DependencyStatus>;
}

export declare class Governor {
  /** @param target host:port (default 127.0.0.1:50051) or unix:///path/to/governor.sock */
  constructor(target?: string, options?: GovernorOptions);
  readonly target: string;
  readonly failOpen: boolean;
  readonly stats: GovernorStats;
  readonly admin: GovernorAdminClient;
  acquire(dependency: string, options?: AcquireOptions): Promise<Permit>;
  withPermit<T, F = never>(
    dependency: string,
    fn: (permit: Permit) => T | PromiseLike<T>,
    options?: WithPermitOptions<F>,
  ): Promise<T | F>;
  callWithRetries<T, F = never>(
    dependency: string,
    fn: (permit: Permit, attempt: number) => T | PromiseLike<T>,
    options?: RetryOptions<F>,
  ): Promise<T | F>;
  health(service?: string): Promise<HealthStatus>;
  /**
   * Releases every permit still held (outcome UNSPECIFIED), then closes the connection.
   * Resolves once done; later calls throw GovernorError CLOSED.
   */
  close(): Promise<void>;
}

export interface GovernorErrorOptions {
  code?: string;
  grpcCode?: number;
  details?: string;
  cause?: unknown;
}

export declare class GovernorError extends Error {
  constructor(message: string, options?: GovernorErrorOptions);
  /** 'REJECTED', 'CLOSED', or a gRPC status name such as 'INVALID_ARGUMENT' or 'UNAVAILABLE'. */
  readonly code: string;
  readonly grpcCode: number | undefined;
  readonly details: string | undefined;
}

export declare class RejectedError extends GovernorError {
  private constructor();
  readonly code: 'REJECTED';
  readonly dependency: string;
  readonly reason: RejectReason;
  readonly retryAfterMs: number;
  readonly queueWaitMs: number;
  readonly limit: number;
  readonly inFlight: number;
  readonly queued: number;
  /** The dependency's pressure right after the decision. */
  readonly pressure: Pressure;
}

export declare class GovernorUnavailableError extends GovernorError {}

/** The permit's Session stream ended before its release; code 'PERMIT_LOST'. */
export declare class PermitLostError extends GovernorError {
  readonly dependency: string;
  /** Why the session ended. */
  readonly reason: string;
}

export default Governor;
