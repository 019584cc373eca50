// @governor/client — Node.js client for the governor sidecar.
//
// Plain JavaScript, ES module. Types live in index.d.ts (hand-written).
// The API contract is the packaged copy of governor.proto (proto/), loaded at
// run time with @grpc/proto-loader; the health check uses the health service
// definition shipped by grpc-health-check.
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { inspect } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { service as healthServiceDefinition } from 'grpc-health-check';

/** Absolute path of the packaged governor.proto. */
export const PROTO_PATH = join(
  dirname(fileURLToPath(import.meta.url)),
  'proto',
  'governor',
  'v1',
  'governor.proto',
);

// The numbers below are the table every client of the project follows
// (docs/any-language.md, "What every client does").

/** Added to maxWaitMs to form the Acquire deadline (the sidecar's own margin is at most 20 ms). */
export const ACQUIRE_DEADLINE_MARGIN_MS = 1000;

/** The largest `max_wait` the sidecar accepts (config and control plane). */
export const MAX_SIDECAR_WAIT_MS = 3_600_000;

/**
 * The Acquire deadline without a maxWaitMs: longer than any `max_wait` the
 * sidecar accepts, so its configured wait is never cut short. A frozen sidecar
 * is noticed by the HTTP/2 keepalive instead (DEFAULT_CHANNEL_OPTIONS).
 */
export const DEFAULT_ACQUIRE_TIMEOUT_MS = MAX_SIDECAR_WAIT_MS + ACQUIRE_DEADLINE_MARGIN_MS;

/** The deadline of Release calls and the cap of each Renew's. */
export const DEFAULT_CALL_TIMEOUT_MS = 2000;

const LOADER_OPTIONS = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

const packageDefinition = protoLoader.loadSync(PROTO_PATH, LOADER_OPTIONS);
const loaded = grpc.loadPackageDefinition(packageDefinition);
const GovernorServiceClient = loaded.governor.v1.Governor;
const GovernorAdminServiceClient = loaded.governor.v1.GovernorAdmin;
const HealthServiceClient = grpc.makeGenericClientConstructor(healthServiceDefinition, 'Health');

// Optional peer dependency: when @opentelemetry/api is installed, the active
// context is injected into every sidecar call's metadata with the globally
// registered propagator (for example W3C trace context).
let otel = null;
try {
  otel = await import('@opentelemetry/api');
} catch (err) {
  if (err?.code !== 'ERR_MODULE_NOT_FOUND') throw err;
}

const metadataSetter = {
  set(carrier, key, value) {
    carrier.set(key, value);
  },
};

// ---------------------------------------------------------------------------
// Enumerations

/** Outcomes reported on release. */
export const Outcome = Object.freeze({
  SUCCESS: 'SUCCESS',
  FAILURE: 'FAILURE',
  TIMEOUT: 'TIMEOUT',
  CANCELLED: 'CANCELLED',
});

/** Acquire priorities. */
export const Priority = Object.freeze({
  CRITICAL: 'CRITICAL',
  NORMAL: 'NORMAL',
  SHEDDABLE: 'SHEDDABLE',
});

/** Rejection reasons (RejectedError.reason). */
export const RejectReason = Object.freeze({
  UNSPECIFIED: 'UNSPECIFIED',
  QUEUE_FULL: 'QUEUE_FULL',
  QUEUE_TIMEOUT: 'QUEUE_TIMEOUT',
  RETRY_BUDGET_EXHAUSTED: 'RETRY_BUDGET_EXHAUSTED',
  SHED: 'SHED',
  SHUTTING_DOWN: 'SHUTTING_DOWN',
  /** The dependency's rate limit had no token within the wait: retryAfterMs is the exact time until the next one. */
  RATE_LIMITED: 'RATE_LIMITED',
  /** A degradable acquire that would have had to wait: serve the cheaper answer (withPermit's fallback). */
  DEGRADE: 'DEGRADE',
});

/**
 * How loaded the dependency was right after the decision (permit.pressure,
 * RejectedError.pressure); UNSPECIFIED from a sidecar that predates it.
 */
export const Pressure = Object.freeze({
  UNSPECIFIED: 'UNSPECIFIED',
  /** Below elevated_at (default 0.7) of the enforced limit, nobody waiting. */
  NONE: 'NONE',
  /** At or above elevated_at of the enforced limit, nobody waiting. */
  ELEVATED: 'ELEVATED',
  /** Every permit is in use, or someone waits. */
  SATURATED: 'SATURATED',
  /** It turned a request away (queue full, queue timeout, shed) within the last second. */
  OVERLOADED: 'OVERLOADED',
});

/** A wire enum value (`PREFIX_NAME`) as one of `names`; a value newer than this client reads UNSPECIFIED. */
function enumFromWire(value, prefix, names) {
  const name = stripPrefix(value, prefix);
  return Object.hasOwn(names, name) ? names[name] : names.UNSPECIFIED;
}

/** The wire's Pressure enum as a Pressure value. */
const pressureFromWire = (value) => enumFromWire(value, 'PRESSURE_', Pressure);

/**
 * From which pressure a degradable acquire is answered DEGRADE (the admin
 * API's degradeAt); UNSPECIFIED only when read from a sidecar that predates it.
 */
export const DegradeAt = Object.freeze({
  UNSPECIFIED: 'UNSPECIFIED',
  /** Only when it would have to wait: no free slot (or token), or waiters ahead. The default. */
  SATURATED: 'SATURATED',
  /** Also when a slot is free but the pressure is ELEVATED or worse. */
  ELEVATED: 'ELEVATED',
});

/** The wire's DegradeAt enum as a DegradeAt value. */
const degradeAtFromWire = (value) => enumFromWire(value, 'DEGRADE_AT_', DegradeAt);

/**
 * What a dependency's fair shares are kept by (the admin API's fairness.by);
 * UNSPECIFIED only when read from a sidecar newer than this client.
 */
export const FairBy = Object.freeze({
  UNSPECIFIED: 'UNSPECIFIED',
  /** No fair shares: one queue, by priority then arrival (sent to turn them off). */
  NONE: 'NONE',
  /** A share for each tenant (the requests without a tenant are one more). */
  TENANT: 'TENANT',
  /** A share for each tenant, split equally between its routes. */
  TENANT_ROUTE: 'TENANT_ROUTE',
});

/** The wire's FairBy enum as a FairBy value. */
const fairByFromWire = (value) => enumFromWire(value, 'FAIR_BY_', FairBy);

const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

// gRPC status codes that mean "the sidecar gave no answer" (down, frozen, a
// broken connection, a crash mid-call). Only these trigger the fail-open
// policy; every other code is an answer (a bug or a configuration error).
const NO_ANSWER_CODES = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.CANCELLED,
  grpc.status.UNKNOWN,
  grpc.status.INTERNAL,
  grpc.status.DATA_LOSS,
]);

// ---------------------------------------------------------------------------
// Errors

/** Base class of every error this package throws (except a caller's AbortSignal reason). */
export class GovernorError extends Error {
  constructor(message, { code = 'GOVERNOR_ERROR', grpcCode, details, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'GovernorError';
    /** 'REJECTED', 'CLOSED', or the gRPC status name such as 'INVALID_ARGUMENT'. */
    this.code = code;
    /** The numeric gRPC status, when the error came from a gRPC call. */
    this.grpcCode = grpcCode;
    /** The gRPC status details, when the error came from a gRPC call. */
    this.details = details;
  }
}

/** The governor answered `granted = false`. */
export class RejectedError extends GovernorError {
  constructor(dependency, response) {
    const reason = stripPrefix(response.reason, 'REJECT_REASON_');
    const retryAfterMs = durationToMs(response.retryAfter);
    const pressure = pressureFromWire(response.pressure);
    super(
      `governor rejected a permit for "${dependency}": ${reason} (retry after ${retryAfterMs} ms, pressure ${pressure})`,
      { code: 'REJECTED' },
    );
    this.name = 'RejectedError';
    this.dependency = dependency;
    this.reason = reason;
    this.retryAfterMs = retryAfterMs;
    this.queueWaitMs = durationToMs(response.queueWait);
    this.limit = response.limit;
    this.inFlight = response.inFlight;
    this.queued = response.queued;
    /** The dependency's Pressure right after the decision. */
    this.pressure = pressure;
  }
}

/** The sidecar could not be reached or did not answer in time. */
export class GovernorUnavailableError extends GovernorError {
  constructor(message, options) {
    super(message, options);
    this.name = 'GovernorUnavailableError';
  }
}

/**
 * The permit's Session stream ended before the permit was released: the
 * sidecar freed the lease then (release outcome session_closed), so the
 * downstream call ran without a slot. Thrown by release() and withPermit()
 * instead of a second, silent release.
 */
export class PermitLostError extends GovernorError {
  constructor(dependency, reason) {
    super(`governor: the permit for "${dependency}" was lost: its session to the sidecar ended (${reason})`, {
      code: 'PERMIT_LOST',
    });
    this.name = 'PermitLostError';
    this.dependency = dependency;
    /** Why the session ended. */
    this.reason = reason;
  }
}

function fromGrpcError(err, what) {
  if (err instanceof GovernorError) return err;
  const code = typeof err?.code === 'number' ? err.code : grpc.status.UNKNOWN;
  const options = {
    code: STATUS_NAMES[code] ?? 'UNKNOWN',
    grpcCode: code,
    details: err?.details ?? err?.message,
    cause: err,
  };
  const message = `governor ${what} failed: ${options.code}: ${options.details}`;
  return NO_ANSWER_CODES.has(code)
    ? new GovernorUnavailableError(message, options)
    : new GovernorError(message, options);
}

// ---------------------------------------------------------------------------
// Helpers

function stripPrefix(value, prefix) {
  const s = String(value ?? '');
  return s.startsWith(prefix) ? s.slice(prefix.length) : s;
}

function msToDuration(ms) {
  const total = Math.max(0, Math.round(Number(ms) * 1e6)); // nanoseconds
  return { seconds: Math.floor(total / 1e9), nanos: total % 1e9 };
}

function durationToMs(d) {
  if (!d) return 0;
  return Number(d.seconds ?? 0) * 1000 + Number(d.nanos ?? 0) / 1e6;
}

function toEnum(value, prefix, allowed, field) {
  if (value === undefined || value === null) return `${prefix}UNSPECIFIED`;
  const name = String(value).toUpperCase();
  const bare = stripPrefix(name, prefix);
  if (!allowed.includes(bare)) {
    throw new TypeError(`${field} must be one of ${allowed.join(', ')}; got ${JSON.stringify(value)}`);
  }
  return prefix + bare;
}

function checkOptionalBoolean(value, field) {
  if (value !== undefined && typeof value !== 'boolean') {
    throw new TypeError(`${field} must be a boolean; got ${JSON.stringify(value)}`);
  }
}

function checkNonNegative(value, field) {
  if (value === undefined || value === null) return;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new TypeError(`${field} must be a non-negative finite number; got ${JSON.stringify(value)}`);
  }
}

function abortReason(signal) {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortReason(signal));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortReason(signal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Outcome for a callback that threw `err` (or finished, when err is undefined). */
function classifyOutcome(threw, err, signal) {
  if (signal?.aborted) {
    return signal.reason?.name === 'TimeoutError' ? Outcome.TIMEOUT : Outcome.CANCELLED;
  }
  if (!threw) return Outcome.SUCCESS;
  if (err?.name === 'TimeoutError') return Outcome.TIMEOUT;
  if (err?.name === 'AbortError') return Outcome.CANCELLED;
  return Outcome.FAILURE;
}

function normalizeStatus(s) {
  return {
    name: s.name,
    maxConcurrency: s.maxConcurrency,
    inFlight: s.inFlight,
    queued: s.queued,
    maxQueue: s.maxQueue,
    maxWaitMs: durationToMs(s.maxWait),
    leaseTtlMs: durationToMs(s.leaseTtl),
    retryBudgetAvailable: s.retryBudgetAvailable,
    grantedTotal: s.grantedTotal,
    rejectedTotal: s.rejectedTotal,
    expiredTotal: s.expiredTotal,
    retryBudget: s.retryBudget
      ? {
          ratio: s.retryBudget.ratio,
          minPerSecond: s.retryBudget.minPerSecond,
          ttlMs: durationToMs(s.retryBudget.ttl),
        }
      : null,
    // The enforced limit; an older sidecar without the field enforces maxConcurrency.
    limit: s.limit || s.maxConcurrency,
    adaptiveLimit: s.adaptiveLimit || null,
    limitAlgorithm: (s.limitAlgorithm || 'LIMIT_ALGORITHM_STATIC').replace('LIMIT_ALGORITHM_', '').toLowerCase(),
    adaptive: s.adaptive
      ? {
          algorithm: s.adaptive.algorithm.replace('LIMIT_ALGORITHM_', '').toLowerCase(),
          minLimit: s.adaptive.minLimit,
          initialLimit: s.adaptive.initialLimit,
          shadow: s.adaptive.shadow,
          windowMs: durationToMs(s.adaptive.window),
          minSamples: s.adaptive.minSamples,
          baselineWindows: s.adaptive.baselineWindows,
          dropThreshold: s.adaptive.dropThreshold,
          backoff: s.adaptive.backoff,
          tolerance: s.adaptive.tolerance,
          alpha: s.adaptive.alpha,
          beta: s.adaptive.beta,
        }
      : null,
    latencyBaselineMs: s.latencyBaseline ? durationToMs(s.latencyBaseline) : null,
    latencyRecentMs: s.latencyRecent ? durationToMs(s.latencyRecent) : null,
    limitChangesTotal: s.limitChangesTotal,
    // Issue 10: an older sidecar sends none of these (UNSPECIFIED, 0, null).
    pressure: pressureFromWire(s.pressure),
    elevatedAt: s.elevatedAt,
    degradeAt: degradeAtFromWire(s.degradeAt),
    rate: s.rate ? { perSecond: s.rate.perSecond, burst: s.rate.burst } : null,
    tenantRate: s.tenantRate ? { perSecond: s.tenantRate.perSecond, burst: s.tenantRate.burst } : null,
    ratedTenants: s.ratedTenants ?? 0,
    delayed: s.delayed ?? 0,
    fairness: s.fairness
      ? {
          by: fairByFromWire(s.fairness.by),
          weights: { ...(s.fairness.weights ?? {}) },
          defaultWeight: s.fairness.defaultWeight,
          maxTenants: s.fairness.maxTenants,
        }
      : null,
    tenants: (s.tenants ?? []).map(tenantFromWire),
    tenantsTracked: s.tenantsTracked ?? 0,
  };
}

/** A TenantStatus of the fair shares' table, with its routes. */
function tenantFromWire(t) {
  return {
    tenant: t.tenant,
    overflow: t.overflow,
    named: t.named,
    weight: t.weight,
    inFlight: t.inFlight,
    queued: t.queued,
    share: t.share,
    grantedTotal: t.grantedTotal,
    rejectedTotal: t.rejectedTotal,
    routes: (t.routes ?? []).map((r) => ({
      route: r.route,
      inFlight: r.inFlight,
      queued: r.queued,
      share: r.share,
      grantedTotal: r.grantedTotal,
      rejectedTotal: r.rejectedTotal,
    })),
  };
}

/**
 * The admin API's rate option as the wire's RateLimit: null removes the rate
 * limit (per_second = 0); burst left out is 0 on the wire, which the sidecar
 * reads as 1. The upper bounds (1 000 000) are the sidecar's to check.
 */
function rateToWire(rate, key = 'rate') {
  if (rate === null) return { perSecond: 0, burst: 0 };
  if (typeof rate !== 'object') {
    throw new TypeError(`${key} must be { perSecond, burst } or null; got ${JSON.stringify(rate)}`);
  }
  const { perSecond, burst } = rate;
  if (typeof perSecond !== 'number' || !(perSecond > 0)) {
    throw new TypeError(
      `${key}.perSecond must be a positive number (${key}: null removes the rate limit); got ${JSON.stringify(perSecond)}`,
    );
  }
  if (burst !== undefined && !(Number.isInteger(burst) && burst >= 1 && burst <= 0xffffffff)) {
    throw new TypeError(`${key}.burst must be a positive integer; got ${JSON.stringify(burst)}`);
  }
  return { perSecond, burst: burst ?? 0 };
}

/** A u32 of the fairness option: an integer in [0, 2^32). */
function checkFairnessCount(value, key) {
  if (!(Number.isInteger(value) && value >= 0 && value <= 0xffffffff)) {
    throw new TypeError(`${key} must be a non-negative integer; got ${JSON.stringify(value)}`);
  }
}

/**
 * The admin API's fairness option as the wire's Fairness: null (or by NONE)
 * turns the fair shares off; by left out is TENANT; defaultWeight and
 * maxTenants left out are 0 on the wire, which the sidecar reads as its
 * defaults (1 and 1024). The ranges are the sidecar's to check.
 */
function fairnessToWire(fairness) {
  if (fairness === null) return { by: 'FAIR_BY_NONE' };
  if (typeof fairness !== 'object') {
    throw new TypeError(
      `fairness must be { by, weights, defaultWeight, maxTenants } or null; got ${JSON.stringify(fairness)}`,
    );
  }
  const { by, weights = {}, defaultWeight = 0, maxTenants = 0 } = fairness;
  const allowed = [FairBy.NONE, FairBy.TENANT, FairBy.TENANT_ROUTE];
  if (by !== undefined && typeof by !== 'string') {
    throw new TypeError(`fairness.by must be one of ${allowed.join(', ')}; got ${JSON.stringify(by)}`);
  }
  if (weights === null || typeof weights !== 'object' || Array.isArray(weights)) {
    throw new TypeError(`fairness.weights must be an object of tenant: weight; got ${JSON.stringify(weights)}`);
  }
  for (const [tenant, weight] of Object.entries(weights)) {
    checkFairnessCount(weight, `fairness.weights[${JSON.stringify(tenant)}]`);
  }
  checkFairnessCount(defaultWeight, 'fairness.defaultWeight');
  checkFairnessCount(maxTenants, 'fairness.maxTenants');
  return {
    by: toEnum(by ?? FairBy.TENANT, 'FAIR_BY_', allowed, 'fairness.by'),
    weights: { ...weights },
    defaultWeight,
    maxTenants,
  };
}

const ADAPTIVE_KEYS = [
  'minLimit', 'initialLimit', 'shadow', 'minSamples', 'baselineWindows',
  'dropThreshold', 'backoff', 'tolerance', 'alpha', 'beta',
];

/** The admin API's adaptive settings as the wire's AdaptiveLimit. */
function adaptiveToWire(adaptive) {
  const wire = {};
  if (adaptive.algorithm !== undefined) {
    const algorithm = String(adaptive.algorithm).toUpperCase();
    if (!['STATIC', 'GRADIENT', 'VEGAS', 'AIMD'].includes(algorithm)) {
      throw new TypeError(`adaptive.algorithm: unknown algorithm ${JSON.stringify(adaptive.algorithm)}`);
    }
    wire.algorithm = `LIMIT_ALGORITHM_${algorithm}`;
  }
  for (const key of ADAPTIVE_KEYS) {
    if (adaptive[key] !== undefined) wire[key] = adaptive[key];
  }
  if (adaptive.windowMs !== undefined) wire.window = msToDuration(adaptive.windowMs);
  return wire;
}

// ---------------------------------------------------------------------------
// Permit

/**
 * A held concurrency permit. Created by Governor#acquire; give it back with
 * release(). While held, its lease is renewed in the background.
 */
export class Permit {
  #gov;
  // A bearer credential: private, so that console.log, util.inspect and
  // JSON.stringify never show it; the getter keeps it usable.
  #leaseId;
  #leaseHandle = null;
  #releasePromise = null;
  #timer = null;
  #renewCall = null;
  #stopped = false;
  #leaseLost = false;

  /** @internal */
  constructor(gov, dependency, fields) {
    this.#gov = gov;
    this.dependency = dependency;
    this.#leaseId = fields.leaseId ?? '';
    this.degraded = Boolean(fields.degraded);
    this.leaseTtlMs = fields.leaseTtlMs ?? 0;
    this.queueWaitMs = fields.queueWaitMs ?? 0;
    this.limit = fields.limit ?? 0;
    this.inFlight = fields.inFlight ?? 0;
    this.queued = fields.queued ?? 0;
    /** The dependency's Pressure right after the grant (UNSPECIFIED when degraded). */
    this.pressure = fields.pressure ?? Pressure.UNSPECIFIED;
    this.attempt = fields.attempt ?? 0;
    this.acquiredAt = performance.now();
    this.renewals = 0;
    /** @internal the Session stream it was granted on, or null (unary Acquire, degraded) */
    this._stream = fields.stream ?? null;
  }

  /** True when the permit was granted on the client's Session stream. */
  get onSession() {
    return this._stream !== null;
  }

  /**
   * The sidecar's lease id; empty for a degraded permit. A bearer credential
   * (whoever has it can release the lease): never log it, log leaseHandle.
   */
  get leaseId() {
    return this.#leaseId;
  }

  /** 8 hex digits of the lease id's SHA-256: names the lease in logs without revealing it ('' when degraded). */
  get leaseHandle() {
    if (this.#leaseHandle === null) {
      this.#leaseHandle = this.#leaseId ? createHash('sha256').update(this.#leaseId).digest('hex').slice(0, 8) : '';
    }
    return this.#leaseHandle;
  }

  /** What console.log and util.inspect show: the lease's handle, never its id. */
  [inspect.custom](depth, options, inspectFn = inspect) {
    return `Permit ${inspectFn(this.toJSON(), options)}`;
  }

  /** What JSON.stringify shows: the lease's handle, never its id. */
  toJSON() {
    return {
      dependency: this.dependency,
      leaseHandle: this.leaseHandle,
      degraded: this.degraded,
      released: this.released,
      leaseLost: this.leaseLost,
      leaseTtlMs: this.leaseTtlMs,
      queueWaitMs: this.queueWaitMs,
      limit: this.limit,
      inFlight: this.inFlight,
      queued: this.queued,
      pressure: this.pressure,
      attempt: this.attempt,
      renewals: this.renewals,
    };
  }

  /** True once release() was called. */
  get released() {
    return this.#releasePromise !== null;
  }

  /** True when the governor no longer knows the lease (expired, or its session ended). */
  get leaseLost() {
    return this.#leaseLost || (this._stream !== null && this._stream.ended !== null);
  }

  /**
   * Gives the permit back. Idempotent: only the first call talks to the
   * sidecar; later calls resolve to false once the first has finished.
   * Resolves to true when the governor released the lease, false otherwise
   * (degraded permit, lease already expired, or sidecar unreachable — the
   * lease then expires on its own). Rejects with a TypeError for a bad
   * outcome or latency, in which case the permit is still held, and with
   * PermitLostError when the permit's Session stream ended before this
   * release (nothing is sent: the sidecar freed the lease then).
   */
  release(outcome = Outcome.SUCCESS, latencyMs) {
    if (this.#releasePromise) return this.#releasePromise.then(() => false, () => false);
    // Validate before marking released, so a bad argument does not leak the permit.
    let wireOutcome;
    try {
      wireOutcome = toEnum(outcome, 'OUTCOME_', Object.keys(Outcome), 'outcome');
      if (latencyMs !== undefined) checkNonNegative(latencyMs, 'latencyMs');
    } catch (err) {
      return Promise.reject(err);
    }
    const measured = latencyMs ?? performance.now() - this.acquiredAt;
    this.#stopRenewal();
    this.#releasePromise = this.degraded
      ? Promise.resolve(false)
      : this.#gov._release(this, wireOutcome, measured);
    return this.#releasePromise;
  }

  /** @internal */
  _startRenewal() {
    if (this.degraded || this.leaseTtlMs <= 0) return;
    this.#schedule(this.#renewIntervalMs(this.leaseTtlMs));
  }

  #renewIntervalMs(ttlMs) {
    return Math.max(10, this.#gov._renewIntervalMs ?? Math.floor(ttlMs / 3));
  }

  /** @internal Stops renewing; the lease is released by the client (close). */
  _stopRenewal() {
    this.#stopRenewal();
  }

  #schedule(ms) {
    if (this.#stopped) return;
    // The timer holds the permit only weakly, so a permit dropped without
    // release can be garbage-collected (and then released as UNSPECIFIED).
    const ref = new WeakRef(this);
    this.#timer = setTimeout(() => ref.deref()?._renewTick(), ms);
    this.#timer.unref();
  }

  /** @internal */
  _renewTick() {
    this.#renew();
  }

  async #renew() {
    this.#timer = null;
    if (this.#stopped) return;
    const interval = this.#renewIntervalMs(this.leaseTtlMs);
    let res;
    try {
      const { promise, call } = this.#gov._renew(this, interval);
      this.#renewCall = call;
      res = await promise;
    } catch (err) {
      this.#renewCall = null;
      if (this.#stopped) return;
      if (err instanceof PermitLostError) {
        this.#stopped = true;
        return;
      }
      this.#gov._onRenewFailure(this, err);
      this.#schedule(interval);
      return;
    }
    this.#renewCall = null;
    if (this.#stopped) return;
    if (!res.renewed) {
      this.#leaseLost = true;
      this.#stopped = true;
      this.#gov._onLeaseLost(this);
      return;
    }
    this.renewals += 1;
    const ttl = durationToMs(res.leaseTtl);
    if (ttl > 0) this.leaseTtlMs = ttl;
    this.#gov._onRenewed();
    this.#schedule(this.#renewIntervalMs(this.leaseTtlMs));
  }

  #stopRenewal() {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    // A Renew still in flight could land after the Release; its answer is ignored.
    this.#renewCall?.cancel();
    this.#renewCall = null;
  }
}

// ---------------------------------------------------------------------------
// Admin

/** GovernorAdmin: inspect and change per-dependency limits. Reached via `gov.admin`. */
export class GovernorAdminClient {
  #gov;

  /** @internal */
  constructor(gov) {
    this.#gov = gov;
  }

  async getDependency(name) {
    const res = await this.#gov._adminCall('GetDependency', { name });
    return normalizeStatus(res);
  }

  async listDependencies() {
    const res = await this.#gov._adminCall('ListDependencies', {});
    return res.dependencies.map(normalizeStatus);
  }

  async updateDependency(name, limits = {}) {
    const wire = {};
    if (limits.maxConcurrency !== undefined) wire.maxConcurrency = limits.maxConcurrency;
    if (limits.maxQueue !== undefined) wire.maxQueue = limits.maxQueue;
    if (limits.maxWaitMs !== undefined) wire.maxWait = msToDuration(limits.maxWaitMs);
    if (limits.leaseTtlMs !== undefined) wire.leaseTtl = msToDuration(limits.leaseTtlMs);
    if (limits.retryBudget !== undefined) {
      // The governor replaces the budget as a whole, so all three fields are required.
      const { ratio, minPerSecond, ttlMs } = limits.retryBudget ?? {};
      if (typeof ratio !== 'number' || !Number.isInteger(minPerSecond) || typeof ttlMs !== 'number') {
        throw new TypeError('retryBudget needs ratio, minPerSecond and ttlMs');
      }
      wire.retryBudget = { ratio, minPerSecond, ttl: msToDuration(ttlMs) };
    }
    if (limits.adaptive !== undefined) wire.adaptive = adaptiveToWire(limits.adaptive);
    if (limits.elevatedAt !== undefined) {
      // The range, (0, 1], is the sidecar's to check (INVALID_ARGUMENT limits.elevated_at).
      if (typeof limits.elevatedAt !== 'number') {
        throw new TypeError(`elevatedAt must be a number in (0, 1]; got ${JSON.stringify(limits.elevatedAt)}`);
      }
      wire.elevatedAt = limits.elevatedAt;
    }
    if (limits.degradeAt !== undefined) {
      // UNSPECIFIED on the wire keeps the setting: leave degradeAt out for that.
      const allowed = [DegradeAt.SATURATED, DegradeAt.ELEVATED];
      if (typeof limits.degradeAt !== 'string') {
        throw new TypeError(`degradeAt must be one of ${allowed.join(', ')}; got ${JSON.stringify(limits.degradeAt)}`);
      }
      wire.degradeAt = toEnum(limits.degradeAt, 'DEGRADE_AT_', allowed, 'degradeAt');
    }
    if (limits.rate !== undefined) wire.rate = rateToWire(limits.rate);
    if (limits.tenantRate !== undefined) wire.tenantRate = rateToWire(limits.tenantRate, 'tenantRate');
    if (limits.fairness !== undefined) wire.fairness = fairnessToWire(limits.fairness);
    const res = await this.#gov._adminCall('UpdateDependency', { name, limits: wire });
    return normalizeStatus(res);
  }
}

// ---------------------------------------------------------------------------
// Session stream

/** How long a client uses the unary RPCs after the sidecar answered the Session stream UNIMPLEMENTED. */
export const SESSION_UNARY_RETRY_MS = 60_000;

/** A Session stream that holds and waits for nothing is ended after this long (so it never keeps the process alive). */
export const SESSION_IDLE_MS = 1000;

/** Delay before reopening a stream after the n-th consecutive break: 50 ms doubling to 5 s, full jitter. */
export function sessionBackoffMs(n) {
  return Math.random() * Math.min(5000, 50 * 2 ** Math.max(0, n - 1));
}

/**
 * One open governor.v1.Governor/Session stream. Answers are matched to
 * their request by id; every acquire has its own entry, so one that waits
 * never holds up another.
 */
class SessionStream {
  #session;
  #call;
  #nextId = 1;
  #pending = new Map(); // id -> { resolve, abandoned }
  #idleTimer = null;
  /** Why the stream ended ({ reason, code, retryUnary }), or null while open. */
  ended = null;
  /** Session permits granted on it and not yet released. */
  held = 0;
  /** True once the sidecar answered anything on it. */
  answered = false;

  constructor(session, client, metadata) {
    this.#session = session;
    this.#call = client.Session(metadata);
    this.#call.on('data', (res) => this.#onData(res));
    this.#call.on('error', () => {}); // the status event says how it ended
    this.#call.on('status', (st) => this.#onEnd(st));
  }

  /** Sends a message; resolves with its response, or a { ended } marker when the stream ends first. */
  request(build, { signal, timeoutMs } = {}) {
    if (this.ended) return Promise.resolve({ ended: this.ended });
    const id = this.#nextId++;
    this.#clearIdle();
    return new Promise((resolve) => {
      const entry = { abandoned: false, resolve: null };
      let timer = null;
      const finish = (value) => {
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve(value);
      };
      const giveUp = (why) => {
        entry.abandoned = true; // a grant that comes later is released at once
        finish(why);
      };
      const onAbort = () => giveUp({ aborted: true });
      entry.resolve = finish;
      this.#pending.set(id, entry);
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => giveUp({ timedOut: true }), timeoutMs);
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#call.write(build(id));
    });
  }

  /** Sends a message with id 0: no answer wanted. */
  send(message) {
    if (!this.ended) this.#call.write({ id: 0, ...message });
  }

  #onData(res) {
    const entry = this.#pending.get(res.id);
    if (!entry) return;
    if (entry.abandoned) {
      this.#pending.delete(res.id);
      this.#releaseLate(res);
      this.#maybeIdle();
      return;
    }
    this.#pending.delete(res.id);
    this.answered = true;
    this.#session.answered();
    entry.resolve({ response: res });
    this.#maybeIdle();
  }

  #releaseLate(res) {
    if (res.result === 'acquire' && res.acquire.granted) {
      this.send({ release: { leaseId: res.acquire.leaseId, outcome: 'OUTCOME_CANCELLED' } });
    }
  }

  #onEnd(st) {
    if (this.ended) return;
    this.#clearIdle();
    const retryUnary = st.code === grpc.status.UNIMPLEMENTED || st.code === grpc.status.OK;
    const name = STATUS_NAMES[st.code] ?? 'UNKNOWN';
    this.ended = {
      code: st.code,
      retryUnary,
      reason:
        st.code === grpc.status.UNIMPLEMENTED
          ? 'the sidecar has no Session RPC'
          : st.code === grpc.status.OK
            ? 'the stream ended'
            : `${name}: ${st.details}`,
    };
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    this.#session.streamEnded(this);
    for (const entry of pending) if (!entry.abandoned) entry.resolve({ ended: this.ended });
  }

  /** A permit granted on it was released or lost. */
  permitDone() {
    this.held = Math.max(0, this.held - 1);
    this.#maybeIdle();
  }

  #maybeIdle() {
    if (this.ended || this.held > 0 || this.#pending.size > 0 || this.#idleTimer) return;
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = null;
      if (this.held === 0 && this.#pending.size === 0) this.close();
    }, SESSION_IDLE_MS);
    this.#idleTimer.unref?.();
  }

  #clearIdle() {
    if (this.#idleTimer) clearTimeout(this.#idleTimer);
    this.#idleTimer = null;
  }

  /** Half-closes the stream (the sidecar then frees what it holds) and resolves once it ended. */
  close() {
    this.#clearIdle();
    if (this.ended) return Promise.resolve();
    this.#session.closing(this);
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.#call.cancel(), 2000);
      this.#call.once('status', () => {
        clearTimeout(timer);
        resolve();
      });
      this.#call.end();
    });
  }
}

/** The client's session: opens its stream on demand, remembers UNIMPLEMENTED, backs off after breaks. */
class Session {
  #client;
  #logger;
  #current = null;
  #breaks = 0;
  #notBefore = 0;
  #unaryUntil = 0;

  constructor(client, logger) {
    this.#client = client;
    this.#logger = logger;
  }

  /** The open stream (opened now if need be), or null: use the unary RPCs. */
  stream(metadata) {
    if (this.#current && !this.#current.ended) return this.#current;
    const now = performance.now();
    if (now < this.#unaryUntil || now < this.#notBefore) return null;
    this.#current = new SessionStream(this, this.#client, metadata);
    return this.#current;
  }

  answered() {
    this.#breaks = 0;
  }

  /** The stream is being ended by the client (idle or close): not a break. */
  closing(stream) {
    if (this.#current === stream) this.#current = null;
  }

  streamEnded(stream) {
    const wasCurrent = this.#current === stream;
    if (wasCurrent) this.#current = null;
    const { code, reason } = stream.ended;
    if (code === grpc.status.UNIMPLEMENTED) {
      this.#unaryUntil = performance.now() + SESSION_UNARY_RETRY_MS;
    } else if (wasCurrent) {
      this.#breaks += 1;
      this.#notBefore = performance.now() + sessionBackoffMs(this.#breaks);
      // A stream that never got an answer is reported by the acquire it failed.
      if (code !== grpc.status.OK && stream.answered) this.#logger.warn?.(`governor: the session to the sidecar ended (${reason})`);
    }
  }

  close() {
    const current = this.#current;
    this.#current = null;
    this.#unaryUntil = Infinity;
    return current ? current.close() : Promise.resolve();
  }
}

// ---------------------------------------------------------------------------
// Governor

/** The grpc-js channel options every Governor starts from (options.channelOptions override them). */
export const DEFAULT_CHANNEL_OPTIONS = Object.freeze({
  // Reconnect quickly once a restarted sidecar is back, instead of grpc-js's
  // default backoff of up to two minutes (during which every call would fail).
  'grpc.initial_reconnect_backoff_ms': 200,
  'grpc.max_reconnect_backoff_ms': 5000,
  // HTTP/2 keepalive while a call is open: a frozen sidecar is noticed (the
  // call fails UNAVAILABLE) within about 15 s, even during a long queued wait.
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
});

export class Governor {
  #target;
  #failOpen;
  #logger;
  #warnIntervalMs;
  #maxWaitMs;
  #deadlineMarginMs;
  #acquireTimeoutMs;
  #callTimeoutMs;
  #tenant;
  #route;
  #propagateTrace;
  #client;
  #adminClient;
  #healthClient;
  // Held permits by lease id, weakly: a permit dropped without release is
  // garbage-collected and then released by #orphans.
  #held = new Map();
  #orphans = new FinalizationRegistry((held) => this.#releaseOrphan(held));
  #session = null;
  #closed = false;
  #closing = null;
  #lastWarnAt = -Infinity;
  #suppressedWarnings = 0;
  #stats = {
    acquired: 0,
    rejected: 0,
    degraded: 0,
    unavailable: 0,
    released: 0,
    releaseFailures: 0,
    renewed: 0,
    renewFailures: 0,
    leasesLost: 0,
    orphansReleased: 0,
  };

  /**
   * @param {string} target host:port, or unix:///path/to/governor.sock
   * @param {object} [options] see index.d.ts (GovernorOptions)
   */
  constructor(target = '127.0.0.1:50051', options = {}) {
    if (typeof target !== 'string' || target === '') throw new TypeError('target must be a non-empty string');
    checkNonNegative(options.maxWaitMs, 'maxWaitMs');
    checkNonNegative(options.deadlineMarginMs, 'deadlineMarginMs');
    checkNonNegative(options.callTimeoutMs, 'callTimeoutMs');
    checkNonNegative(options.acquireTimeoutMs, 'acquireTimeoutMs');
    checkNonNegative(options.warnIntervalMs, 'warnIntervalMs');
    checkNonNegative(options.renewIntervalMs, 'renewIntervalMs');
    this.#target = target;
    this.#failOpen = options.failOpen ?? true;
    this.#logger = options.logger ?? console;
    this.#warnIntervalMs = options.warnIntervalMs ?? 60_000;
    this.#maxWaitMs = options.maxWaitMs;
    this.#deadlineMarginMs = options.deadlineMarginMs ?? ACQUIRE_DEADLINE_MARGIN_MS;
    this.#acquireTimeoutMs = options.acquireTimeoutMs ?? DEFAULT_ACQUIRE_TIMEOUT_MS;
    this.#callTimeoutMs = options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.#tenant = options.tenant ?? '';
    this.#route = options.route ?? '';
    this.#propagateTrace = options.propagateTrace ?? true;
    /** @internal fixed renewal interval (overrides leaseTtl/3) */
    this._renewIntervalMs = options.renewIntervalMs;
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    const channelOptions = { ...DEFAULT_CHANNEL_OPTIONS, ...(options.channelOptions ?? {}) };
    this.#client = new GovernorServiceClient(target, credentials, channelOptions);
    const channelOverride = this.#client.getChannel();
    this.#adminClient = new GovernorAdminServiceClient(target, credentials, { channelOverride });
    this.#healthClient = new HealthServiceClient(target, credentials, { channelOverride });
    this.admin = new GovernorAdminClient(this);
    if (options.useSession ?? true) this.#session = new Session(this.#client, this.#logger);
  }

  /** The target this client talks to. */
  get target() {
    return this.#target;
  }

  /** True when sidecar-unreachable errors yield degraded permits instead of throwing. */
  get failOpen() {
    return this.#failOpen;
  }

  /** A snapshot of this client's counters. */
  get stats() {
    return Object.freeze({ ...this.#stats, held: this.#livePermits().length });
  }

  /**
   * Asks for a permit. Resolves to a Permit (degraded when the sidecar is
   * unreachable and the policy is fail-open); rejects with RejectedError,
   * GovernorUnavailableError (fail-closed), GovernorError (bad input), or the
   * AbortSignal's reason.
   */
  async acquire(dependency, options = {}) {
    this.#assertOpen();
    if (typeof dependency !== 'string') throw new TypeError('dependency must be a string');
    const { signal } = options;
    const attempt = options.attempt ?? 0;
    if (!Number.isInteger(attempt) || attempt < 0) {
      throw new TypeError(`attempt must be a non-negative integer; got ${JSON.stringify(options.attempt)}`);
    }
    checkNonNegative(options.maxWaitMs, 'maxWaitMs');
    checkOptionalBoolean(options.degradable, 'degradable');
    const maxWaitMs = options.maxWaitMs ?? this.#maxWaitMs;
    const request = {
      dependency,
      attempt,
      priority: toEnum(options.priority, 'PRIORITY_', Object.keys(Priority), 'priority'),
      tenant: options.tenant ?? this.#tenant,
      route: options.route ?? this.#route,
      maxWait: maxWaitMs === undefined ? null : msToDuration(maxWaitMs),
      degradable: options.degradable ?? false,
    };
    if (signal?.aborted) throw abortReason(signal);
    const deadlineMs = maxWaitMs === undefined ? this.#acquireTimeoutMs : maxWaitMs + this.#deadlineMarginMs;
    let response;
    let stream = null;
    try {
      const metadata = this.#metadata();
      // A stream's metadata go out once: an acquire that carries a trace
      // context goes unary, so the sidecar's span joins the caller's trace.
      if (this.#session && metadata.get('traceparent').length === 0) stream = this.#session.stream(metadata);
      if (stream) {
        const answer = await stream.request((id) => ({ id, acquire: request }), { signal, timeoutMs: deadlineMs });
        if (answer.aborted) throw abortReason(signal);
        if (answer.timedOut) {
          throw Object.assign(new Error('no answer on the governor session within the deadline'), {
            code: grpc.status.DEADLINE_EXCEEDED,
            details: 'no answer on the governor session within the deadline',
          });
        }
        if (answer.ended?.retryUnary) {
          stream = null; // never read by the sidecar: send it unary
        } else if (answer.ended) {
          const code = NO_ANSWER_CODES.has(answer.ended.code) ? answer.ended.code : grpc.status.UNAVAILABLE;
          const details = `the session to the sidecar ended (${answer.ended.reason}); the sidecar withdrew the acquire`;
          throw Object.assign(new Error(details), { code, details });
        } else if (answer.response.result === 'error') {
          const e = answer.response.error;
          const details = stripPrefix(e.message, 'acquire.');
          throw Object.assign(new Error(details), { code: e.code, details });
        } else {
          response = answer.response.acquire;
        }
      }
      if (!stream) response = await this.#unary(this.#client, 'Acquire', request, deadlineMs, signal).promise;
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      const error = fromGrpcError(err, `Acquire("${dependency}")`);
      if (!(error instanceof GovernorUnavailableError)) throw error;
      this.#stats.unavailable += 1;
      if (!(options.failOpen ?? this.#failOpen)) throw error;
      this.#stats.degraded += 1;
      this.#warnDegraded(error);
      return new Permit(this, dependency, { degraded: true, attempt });
    }
    if (!response.granted) {
      this.#stats.rejected += 1;
      throw new RejectedError(dependency, response);
    }
    this.#stats.acquired += 1;
    const permit = new Permit(this, dependency, {
      leaseId: response.leaseId,
      leaseTtlMs: durationToMs(response.leaseTtl),
      queueWaitMs: durationToMs(response.queueWait),
      limit: response.limit,
      inFlight: response.inFlight,
      queued: response.queued,
      pressure: pressureFromWire(response.pressure),
      attempt,
      stream,
    });
    if (stream) stream.held += 1;
    if (this.#closed) {
      // close() ran while Acquire was in flight: give the lease back at once
      // (best effort: the channel may be closed already, then it expires;
      // a session lease went with its stream).
      if (!stream) this.#sendRelease(permit.leaseId, dependency, 'OUTCOME_UNSPECIFIED', undefined);
      throw new GovernorError('governor client is closed', { code: 'CLOSED' });
    }
    this.#held.set(permit.leaseId, new WeakRef(permit));
    this.#orphans.register(permit, { leaseId: permit.leaseId, dependency, stream }, permit);
    permit._startRenewal();
    return permit;
  }

  /**
   * Runs `fn(permit)` under a permit and always gives the permit back: with
   * SUCCESS when fn resolves, TIMEOUT when it throws an error named
   * TimeoutError, CANCELLED when options.signal aborted, FAILURE otherwise
   * (the error is rethrown), together with fn's measured latency.
   *
   * With options.fallback, a DEGRADE answer runs `fallback(rejectedError)`
   * instead of fn and resolves to its result; the acquire is then sent
   * degradable unless options.degradable says otherwise. Every other
   * rejection still rejects, and fail-open/fail-closed is unchanged.
   */
  async withPermit(dependency, fn, options = {}) {
    if (typeof fn !== 'function') throw new TypeError('fn must be a function');
    const { fallback } = options;
    if (fallback !== undefined && typeof fallback !== 'function') {
      throw new TypeError(`fallback must be a function; got ${typeof fallback}`);
    }
    let permit;
    if (fallback === undefined) {
      permit = await this.acquire(dependency, options);
    } else {
      checkOptionalBoolean(options.degradable, 'degradable');
      try {
        permit = await this.acquire(dependency, { ...options, degradable: options.degradable ?? true });
      } catch (err) {
        if (err instanceof RejectedError && err.reason === RejectReason.DEGRADE) return await fallback(err);
        throw err;
      }
    }
    const started = performance.now();
    let threw = false;
    let error;
    try {
      return await fn(permit);
    } catch (err) {
      threw = true;
      error = err;
      throw err;
    } finally {
      const latencyMs = performance.now() - started;
      try {
        await permit.release(classifyOutcome(threw, error, options.signal), latencyMs);
      } catch (lost) {
        // fn's own error wins; PermitLostError otherwise (fn ran without a slot).
        if (!threw || !(lost instanceof PermitLostError)) throw lost;
        this.#logger.warn?.(lost.message);
      }
    }
  }

  /**
   * Calls `fn(permit, attempt)` under a permit up to maxAttempts times. Each
   * retry is sent with `attempt = n` so it draws on the governor's retry
   * budget; it waits max(retryAfterMs, exponential backoff) between tries and
   * stops at once on RETRY_BUDGET_EXHAUSTED. DEGRADE is never retried: it runs
   * options.fallback (see withPermit), or rejects at once without one.
   */
  async callWithRetries(dependency, fn, options = {}) {
    if (typeof fn !== 'function') throw new TypeError('fn must be a function');
    const maxAttempts = options.maxAttempts ?? 3;
    if (!Number.isInteger(maxAttempts) || maxAttempts < 1) {
      throw new TypeError(`maxAttempts must be a positive integer; got ${JSON.stringify(options.maxAttempts)}`);
    }
    const backoffMs = options.backoffMs ?? 100;
    const maxBackoffMs = options.maxBackoffMs ?? 10_000;
    checkNonNegative(backoffMs, 'backoffMs');
    checkNonNegative(maxBackoffMs, 'maxBackoffMs');
    const jitter = options.jitter ?? true;
    const retryOn = options.retryOn ?? (() => true);
    const { signal } = options;
    const permitOptions = {
      priority: options.priority,
      tenant: options.tenant,
      route: options.route,
      maxWaitMs: options.maxWaitMs,
      signal,
      failOpen: options.failOpen,
      degradable: options.degradable,
      fallback: options.fallback,
    };
    for (let attempt = 0; ; attempt += 1) {
      let error;
      try {
        return await this.withPermit(dependency, (permit) => fn(permit, attempt), { ...permitOptions, attempt });
      } catch (err) {
        error = err;
      }
      if (signal?.aborted) throw error;
      let retryAfterMs = 0;
      if (error instanceof RejectedError) {
        if (error.reason === RejectReason.RETRY_BUDGET_EXHAUSTED || error.reason === RejectReason.DEGRADE) throw error;
        retryAfterMs = error.retryAfterMs;
      } else if (error instanceof GovernorError) {
        throw error; // bad input, closed client, or unavailable sidecar under fail-closed
      } else if (!retryOn(error, attempt)) {
        throw error;
      }
      if (attempt + 1 >= maxAttempts) throw error;
      let backoff = Math.min(maxBackoffMs, backoffMs * 2 ** attempt);
      if (jitter) backoff = backoff / 2 + Math.random() * (backoff / 2);
      await sleep(Math.max(retryAfterMs, backoff), signal);
    }
  }

  /**
   * The sidecar's health: 'SERVING', 'NOT_SERVING', 'UNKNOWN', or
   * 'SERVICE_UNKNOWN' when the health service does not know `service`.
   * Rejects with GovernorUnavailableError when the sidecar cannot be reached.
   */
  async health(service = '') {
    this.#assertOpen();
    try {
      const res = await this.#unary(this.#healthClient, 'Check', { service }, this.#callTimeoutMs).promise;
      return res.status;
    } catch (err) {
      if (err?.code === grpc.status.NOT_FOUND) return 'SERVICE_UNKNOWN';
      throw fromGrpcError(err, 'health check');
    }
  }

  /**
   * Closes the client: every permit still held is released with outcome
   * UNSPECIFIED (the client does not know how its call went), then the
   * connection is closed. Resolves once that is done (each Release has
   * callTimeoutMs); later calls throw GovernorError CLOSED.
   */
  async close() {
    if (this.#closed) return this.#closing;
    this.#closed = true;
    const permits = this.#livePermits();
    for (const permit of permits) permit._stopRenewal();
    // Session permits are freed together by ending their stream.
    const unary = permits.filter((permit) => permit._stream === null);
    for (const permit of permits) this.#orphans.unregister(permit);
    this.#closing = Promise.allSettled([
      ...unary.map((permit) => this.#sendRelease(permit.leaseId, permit.dependency, 'OUTCOME_UNSPECIFIED', undefined)),
      this.#session ? this.#session.close() : Promise.resolve(),
    ]).then(() => {
      this.#held.clear();
      this.#client.close();
    });
    return this.#closing;
  }

  // -- internals used by Permit and GovernorAdminClient ----------------------

  /** @internal */
  async _release(permit, wireOutcome, latencyMs) {
    this.#held.delete(permit.leaseId);
    this.#orphans.unregister(permit);
    if (this.#closed) return false; // close() released it already
    const stream = permit._stream;
    if (stream) {
      stream.permitDone();
      if (stream.ended) throw new PermitLostError(permit.dependency, stream.ended.reason);
      const request = { leaseId: permit.leaseId, outcome: wireOutcome };
      if (latencyMs !== undefined) request.latency = msToDuration(latencyMs);
      const answer = await stream.request((id) => ({ id, release: request }), { timeoutMs: this.#callTimeoutMs });
      if (answer.ended) throw new PermitLostError(permit.dependency, answer.ended.reason);
      if (answer.timedOut || answer.response.result !== 'release') {
        this.#stats.releaseFailures += 1;
        const why = answer.timedOut ? 'no answer in time' : answer.response.error.message;
        this.#logger.warn?.(`governor Release("${permit.dependency}") failed on the session: ${why}`);
        return false;
      }
      if (answer.response.release.released) this.#stats.released += 1;
      return Boolean(answer.response.release.released);
    }
    return this.#sendRelease(permit.leaseId, permit.dependency, wireOutcome, latencyMs);
  }

  async #sendRelease(leaseId, dependency, wireOutcome, latencyMs) {
    const request = { leaseId, outcome: wireOutcome };
    if (latencyMs !== undefined) request.latency = msToDuration(latencyMs);
    try {
      const res = await this.#unary(this.#client, 'Release', request, this.#callTimeoutMs).promise;
      if (res.released) this.#stats.released += 1;
      return Boolean(res.released);
    } catch (err) {
      this.#stats.releaseFailures += 1;
      const error = fromGrpcError(err, `Release("${dependency}")`);
      this.#logger.warn?.(`${error.message}; the lease will expire after its TTL`);
      return false;
    }
  }

  /** A held permit was garbage-collected without release. */
  #releaseOrphan({ leaseId, dependency, stream }) {
    this.#held.delete(leaseId);
    if (this.#closed) return;
    this.#stats.orphansReleased += 1;
    this.#logger.warn?.(`governor: a permit for "${dependency}" was garbage-collected while held; releasing it`);
    if (stream) {
      // Over its session, no answer wanted (an ended session freed it already).
      stream.send({ release: { leaseId, outcome: 'OUTCOME_UNSPECIFIED' } });
      stream.permitDone();
      return;
    }
    this.#sendRelease(leaseId, dependency, 'OUTCOME_UNSPECIFIED', undefined);
  }

  #livePermits() {
    const live = [];
    for (const [leaseId, ref] of this.#held) {
      const permit = ref.deref();
      if (permit === undefined) this.#held.delete(leaseId);
      else live.push(permit);
    }
    return live;
  }

  /** @internal Each Renew's deadline is min(its period, callTimeoutMs): it never outlives the next. */
  _renew(permit, intervalMs) {
    const timeoutMs = Math.max(10, Math.min(intervalMs, this.#callTimeoutMs));
    const stream = permit._stream;
    if (!stream) return this.#unary(this.#client, 'Renew', { leaseId: permit.leaseId }, timeoutMs);
    const controller = new AbortController();
    const promise = stream
      .request((id) => ({ id, renew: { leaseId: permit.leaseId } }), { timeoutMs, signal: controller.signal })
      .then((answer) => {
        if (answer.ended) throw new PermitLostError(permit.dependency, answer.ended.reason);
        if (answer.timedOut || answer.aborted) {
          throw Object.assign(new Error('no answer on the governor session'), { code: grpc.status.DEADLINE_EXCEEDED });
        }
        if (answer.response.result !== 'renew') {
          const e = answer.response.error;
          throw Object.assign(new Error(e.message), { code: e.code, details: e.message });
        }
        return answer.response.renew;
      });
    return { promise, call: { cancel: () => controller.abort() } };
  }

  /** @internal */
  _onRenewed() {
    this.#stats.renewed += 1;
  }

  /** @internal */
  _onRenewFailure(permit, err) {
    this.#stats.renewFailures += 1;
    const error = fromGrpcError(err, `Renew("${permit.dependency}")`);
    this.#logger.warn?.(`${error.message}; retrying`);
  }

  /** @internal */
  _onLeaseLost(permit) {
    this.#stats.leasesLost += 1;
    this.#held.delete(permit.leaseId);
    this.#orphans.unregister(permit);
    this.#logger.warn?.(
      `governor: lease for "${permit.dependency}" was lost (expired before renewal); the permit no longer counts`,
    );
  }

  /** @internal */
  async _adminCall(method, request) {
    this.#assertOpen();
    try {
      return await this.#unary(this.#adminClient, method, request, this.#callTimeoutMs).promise;
    } catch (err) {
      throw fromGrpcError(err, method);
    }
  }

  #assertOpen() {
    if (this.#closed) throw new GovernorError('governor client is closed', { code: 'CLOSED' });
  }

  #warnDegraded(error) {
    const now = performance.now();
    if (now - this.#lastWarnAt < this.#warnIntervalMs) {
      this.#suppressedWarnings += 1;
      return;
    }
    const suppressed = this.#suppressedWarnings;
    this.#lastWarnAt = now;
    this.#suppressedWarnings = 0;
    this.#logger.warn?.(
      `governor: sidecar at ${this.#target} is unavailable (${error.message}); ` +
        `proceeding without a permit (fail-open)` +
        (suppressed > 0 ? `; ${suppressed} more degraded permit(s) since the last warning` : ''),
    );
  }

  #metadata() {
    const metadata = new grpc.Metadata();
    if (otel && this.#propagateTrace) {
      otel.propagation.inject(otel.context.active(), metadata, metadataSetter);
    }
    return metadata;
  }

  #unary(client, method, request, deadlineMs, signal) {
    let call;
    const promise = new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + deadlineMs);
      call = client[method](request, this.#metadata(), { deadline }, (err, res) => {
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(res);
      });
      const onAbort = () => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
    return { promise, call };
  }
}

export default Governor;
