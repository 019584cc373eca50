package governorclient

import (
	"context"
	"errors"
	"sync/atomic"
	"time"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
)

type leaseKey struct{}

// LeaseFromContext returns the lease WithPermit holds for the callback that
// received ctx. It returns false outside WithPermit, and inside a callback
// that runs without a permit because the sidecar was unreachable (fail open).
func LeaseFromContext(ctx context.Context) (*Lease, bool) {
	l, ok := ctx.Value(leaseKey{}).(*Lease)
	return l, ok
}

// minRenewInterval keeps a tiny lease TTL from turning into a busy loop.
const minRenewInterval = 10 * time.Millisecond

// WithPermit acquires a permit for dependency, runs fn while holding it and
// releases it on every path: when fn returns nil, returns an error or
// panics. The Release outcome comes from fn's error (see OutcomeFor; a panic
// is FAILURE) and carries fn's measured latency. While fn runs the lease is
// renewed every third of its TTL, so fn may outlive lease_ttl.
//
// WithPermit returns fn's error unchanged, or, when fn returned nil but the
// permit's Session stream ended while fn ran, an error matching
// ErrPermitLost (the sidecar had freed the slot). If the permit is not granted it
// returns a *RejectedError (see AsRejected) or the Acquire RPC's error and
// does not call fn, except that a sidecar that gives no answer (see
// IsUnavailable) runs fn without a permit unless Options.FailClosed is set
// or ctx itself is done (then ctx's error is returned). Failures of Renew and
// Release are not returned (fn's work is already done); they go to
// Options.OnBackgroundError.
//
// Release and Renew run on a context that is not cancelled with ctx but keeps
// its values (outgoing gRPC metadata such as W3C trace context, OpenTelemetry
// spans), so a cancelled caller still gives its permit back, in its trace.
func (c *Client) WithPermit(ctx context.Context, dependency string, fn func(ctx context.Context) error, opts ...AcquireOption) error {
	return c.withPermit(ctx, &governorv1.AcquireRequest{Dependency: dependency}, fn, nil, opts)
}

// Fallback serves the cheaper answer when the sidecar answered DEGRADE; rej
// (reason REJECT_REASON_DEGRADE) carries its RetryAfter and Pressure.
type Fallback func(ctx context.Context, rej *RejectedError) error

// ErrNoFallback is returned by WithPermitOrFallback given a nil fallback.
var ErrNoFallback = errors.New("governor: WithPermitOrFallback needs a fallback")

// WithPermitOrFallback is WithPermit for a caller with a cheaper answer (a
// cached value, a partial result): the request is degradable (unless opts
// hold WithDegradable(false)), and when the sidecar answers DEGRADE rather
// than let it queue, fallback runs instead of fn and its error is returned.
// Everything else is as in WithPermit: every other rejection is returned as
// a *RejectedError without running either, and a sidecar that gives no
// answer runs fn without a permit unless Options.FailClosed is set.
func (c *Client) WithPermitOrFallback(ctx context.Context, dependency string, fn func(ctx context.Context) error, fallback Fallback, opts ...AcquireOption) error {
	if fallback == nil {
		return ErrNoFallback
	}
	return c.withPermit(ctx, &governorv1.AcquireRequest{Dependency: dependency, Degradable: true}, fn, fallback, opts)
}

func (c *Client) withPermit(ctx context.Context, req *governorv1.AcquireRequest, fn func(ctx context.Context) error, fallback Fallback, opts []AcquireOption) (err error) {
	lease, err := c.acquire(ctx, req, opts)
	if err != nil {
		if rej, ok := AsRejected(err); ok && fallback != nil && errors.Is(rej, ErrDegrade) {
			return fallback(ctx, rej)
		}
		if ctxErr := ctx.Err(); ctxErr != nil && IsUnavailable(err) {
			// The caller's own deadline or cancellation: it no longer wants the call.
			return ctxErr
		}
		if !c.opts.FailClosed && IsUnavailable(err) {
			atomic.AddUint64(&c.degraded, 1)
			c.reportBackground("acquire", nil, err)
			return fn(ctx)
		}
		return err
	}

	stop := make(chan struct{})
	renewDone := make(chan struct{})
	go c.renewLoop(detached(ctx), lease, stop, renewDone)

	start := time.Now()
	panicked := true
	defer func() {
		close(stop)
		<-renewDone
		outcome := OutcomeFor(err)
		if panicked {
			outcome = governorv1.Outcome_OUTCOME_FAILURE
		}
		released, rerr := c.Release(detached(ctx), lease.ID, outcome, time.Since(start))
		switch {
		case errors.Is(rerr, ErrPermitLost) && err == nil && !panicked:
			// fn ran (at least in part) without a slot: the caller must know.
			err = rerr
		case rerr != nil:
			c.reportBackground("release", lease, rerr)
		case !released:
			c.reportBackground("release", lease, ErrNotReleased)
		}
	}()

	err = fn(context.WithValue(ctx, leaseKey{}, lease))
	panicked = false
	return err
}

// renewLoop renews lease every third of its TTL until stop is closed or the
// sidecar says the lease is gone. It closes done when it returns.
func (c *Client) renewLoop(ctx context.Context, lease *Lease, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	if lease.TTL <= 0 {
		return
	}
	interval := renewInterval(lease.TTL)
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		select {
		case <-stop:
			return
		case <-timer.C:
		}
		// Each Renew gets min(a third of the TTL, CallTimeout): it never
		// outlives the next one.
		timeout := interval
		if ct := c.callTimeout(); ct < timeout {
			timeout = ct
		}
		ttl, renewed, err := c.renew(ctx, lease.ID, timeout)
		switch {
		case errors.Is(err, ErrPermitLost):
			c.reportBackground("renew", lease, err)
			return
		case err != nil:
			// Transient: try again at the next tick; a third of the TTL
			// leaves two more chances before the lease expires.
			c.reportBackground("renew", lease, err)
		case !renewed:
			c.reportBackground("renew", lease, ErrLeaseLost)
			return
		case ttl > 0:
			interval = renewInterval(ttl)
		}
		timer.Reset(interval)
	}
}

func renewInterval(ttl time.Duration) time.Duration {
	if d := ttl / 3; d > minRenewInterval {
		return d
	}
	return minRenewInterval
}
