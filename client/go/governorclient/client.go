// Package governorclient is a small Go client for the governor sidecar
// (service governor.v1.Governor, proto/governor/v1/governor.proto).
//
// A caller asks the sidecar for a concurrency permit before it calls a
// downstream dependency and gives the permit back afterwards. The usual entry
// point is Client.WithPermit, which acquires, keeps the lease renewed while
// the callback runs and releases it on every path (return, error, panic) with
// an outcome derived from the callback's error:
//
//	c, err := governorclient.Dial("127.0.0.1:50051", governorclient.Options{})
//	if err != nil { ... }
//	defer c.Close()
//	err = c.WithPermit(ctx, "payments", func(ctx context.Context) error {
//		return callPayments(ctx)
//	})
//	if rej, ok := governorclient.AsRejected(err); ok {
//		// Backpressure: try again after rej.RetryAfter with WithAttempt(n).
//	}
//
// A caller with a cheaper answer (a cached value) uses WithPermitOrFallback:
// rather than queue, the sidecar answers DEGRADE and the fallback runs.
//
// Acquire, Release and Renew are thin wrappers over the RPCs for callers that
// manage leases themselves.
package governorclient

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
)

// DefaultAddress is where the sidecar listens unless configured otherwise.
const DefaultAddress = "127.0.0.1:50051"

// The numbers below are the table every client of the project follows
// (docs/any-language.md, "What every client does").

// DefaultCallTimeout bounds Release calls, and caps each Renew's deadline
// (a third of the lease TTL), when Options.CallTimeout is zero.
const DefaultCallTimeout = 2 * time.Second

// AcquireDeadlineMargin is added to a request's WithMaxWait to form the
// Acquire deadline: it covers the sidecar's own margin (at most 20 ms) and
// the answer's trip back, so a queued request is answered QUEUE_TIMEOUT.
const AcquireDeadlineMargin = time.Second

// MaxSidecarWait is the largest max_wait the sidecar accepts (config and
// control plane).
const MaxSidecarWait = time.Hour

// DefaultAcquireTimeout is the deadline of an Acquire without WithMaxWait
// when Options.AcquireTimeout is zero: longer than any max_wait the sidecar
// accepts, so its configured wait is never cut short. A frozen sidecar is
// noticed by the HTTP/2 keepalive instead (DefaultKeepalive). A shorter
// deadline on the caller's context wins.
const DefaultAcquireTimeout = MaxSidecarWait + AcquireDeadlineMargin

// DefaultKeepalive is the HTTP/2 keepalive Dial sets: a ping every 10 s
// while a call is open, the connection dropped (UNAVAILABLE) when one is not
// answered within 5 s.
var DefaultKeepalive = keepalive.ClientParameters{Time: 10 * time.Second, Timeout: 5 * time.Second}

// ErrClosed is returned by Acquire (and so WithPermit) after Close.
var ErrClosed = errors.New("governor: client is closed")

// Options configure a Client. The zero value is usable: fail open, the
// Acquire deadline of the behaviour table, 2 s for Release, no error hook.
type Options struct {
	// FailClosed makes WithPermit return the error, without running the
	// callback, when the sidecar gives no answer (see IsUnavailable). By
	// default (false) WithPermit fails open: it runs the callback without a
	// permit, LeaseFromContext reports no lease, and Client.Degraded counts
	// it. Rejections (granted=false, every reason including SHUTTING_DOWN),
	// every other gRPC code, and the end of the caller's own context are
	// never bypassed.
	FailClosed bool
	// AcquireTimeout is the deadline of an Acquire without WithMaxWait
	// (with it: the max wait plus AcquireDeadlineMargin). Zero means
	// DefaultAcquireTimeout. The earlier deadline of the caller's context
	// wins.
	AcquireTimeout time.Duration
	// CallTimeout bounds each Release RPC, and caps each Renew's (whose own
	// deadline is a third of the lease TTL). Zero means DefaultCallTimeout.
	CallTimeout time.Duration
	// OnBackgroundError, if set, is called when something WithPermit does on
	// the caller's behalf fails without being returned to it: op is
	// "acquire" (the sidecar was unreachable and the call failed open),
	// "renew" or "release"; err is the RPC error, ErrLeaseLost (a Renew
	// answered renewed=false) or ErrNotReleased (a Release answered
	// released=false). lease is nil for "acquire". It may be called from the
	// renewal goroutine.
	OnBackgroundError func(op string, lease *Lease, err error)
	// DisableSession makes the client use the unary Acquire, Release and
	// Renew RPCs only. By default it opens one Session stream on the first
	// Acquire and sends them over it (see session.go and the README).
	DisableSession bool
}

// Client wraps the governor.v1.Governor and governor.v1.GovernorAdmin stubs.
// It is safe for concurrent use.
type Client struct {
	// degraded counts callbacks WithPermit ran without a permit (fail
	// open). First in the struct for 64-bit atomic alignment on 32-bit
	// platforms.
	degraded uint64
	gov      governorv1.GovernorClient
	admin    governorv1.GovernorAdminClient
	conn     *grpc.ClientConn
	opts     Options

	sess *session

	mu     sync.Mutex
	held   map[LeaseID]*Lease // granted by Acquire, not yet given to Release
	closed bool
}

// Dial connects to the sidecar at target ("127.0.0.1:50051", or
// "unix:///run/governor/governor.sock" for its Unix socket). Without
// dialOpts the connection is plaintext, which is what a sidecar on loopback
// or a Unix socket serves. It always sets DefaultKeepalive first, so a
// grpc.WithKeepaliveParams among dialOpts overrides it. Dial does not wait
// for the connection: the first RPC does.
func Dial(target string, opts Options, dialOpts ...grpc.DialOption) (*Client, error) {
	if len(dialOpts) == 0 {
		dialOpts = []grpc.DialOption{grpc.WithInsecure()}
	}
	dialOpts = append([]grpc.DialOption{grpc.WithKeepaliveParams(DefaultKeepalive)}, dialOpts...)
	conn, err := grpc.Dial(target, dialOpts...)
	if err != nil {
		return nil, fmt.Errorf("governor: dial %s: %w", target, err)
	}
	c := New(conn, opts)
	c.conn = conn
	return c, nil
}

// New wraps an existing connection; Close will not close it.
func New(cc grpc.ClientConnInterface, opts Options) *Client {
	c := &Client{
		gov:   governorv1.NewGovernorClient(cc),
		admin: governorv1.NewGovernorAdminClient(cc),
		opts:  opts,
		held:  map[LeaseID]*Lease{},
	}
	if !opts.DisableSession {
		c.sess = &session{c: c}
	}
	return c
}

// Close releases every lease Acquire granted that was not yet passed to
// Release, with OUTCOME_UNSPECIFIED (the client does not know how those
// calls went), each within Options.CallTimeout, then closes the connection
// if Dial opened it. The leases held on the Session stream are freed
// together by half-closing it (the sidecar's release outcome
// session_closed). Later Acquires return ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	held := make([]*Lease, 0, len(c.held))
	for _, l := range c.held {
		if l.stream == nil {
			held = append(held, l)
		}
	}
	c.mu.Unlock()
	if c.sess != nil {
		c.sess.close()
	}
	var wg sync.WaitGroup
	for _, l := range held {
		wg.Add(1)
		go func(l *Lease) {
			defer wg.Done()
			if _, err := c.Release(context.Background(), l.ID, governorv1.Outcome_OUTCOME_UNSPECIFIED, 0); err != nil {
				c.reportBackground("release", l, err)
			}
		}(l)
	}
	wg.Wait()
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

// Governor returns the generated data-plane stub.
func (c *Client) Governor() governorv1.GovernorClient { return c.gov }

// Admin returns the generated control-plane stub (ListDependencies,
// GetDependency, UpdateDependency).
func (c *Client) Admin() governorv1.GovernorAdminClient { return c.admin }

// Lease is a granted permit. Pass ID to Release and Renew.
//
// Printed with any fmt verb (%v, %+v, %#v, %s), logged with log or slog, or
// marshalled to JSON, a Lease shows its ID's Handle, never the ID: see LeaseID.
type Lease struct {
	ID         LeaseID
	Dependency string
	// TTL is the lease's time to live: it expires unless released or renewed
	// within it.
	TTL time.Duration
	// QueueWait is how long the Acquire waited in the dependency's queue.
	QueueWait time.Duration
	// GrantedAt is when the grant was received.
	GrantedAt time.Time
	// Pressure is the dependency's load right after the grant:
	// PRESSURE_NONE, _ELEVATED, _SATURATED or _OVERLOADED, and
	// PRESSURE_UNSPECIFIED from a sidecar that predates the field.
	Pressure governorv1.Pressure

	// The Session stream it was granted on; nil for the unary Acquire.
	stream *stream
}

// OnSession reports whether the lease was granted on the client's Session
// stream (and so is freed by the sidecar the moment the stream ends).
func (l *Lease) OnSession() bool { return l.stream != nil }

// AcquireOption sets optional fields of an AcquireRequest.
type AcquireOption func(*governorv1.AcquireRequest)

// WithAttempt marks the request as the n-th retry (0 = first try). Retries
// (n >= 1) draw on the dependency's retry budget.
func WithAttempt(n uint32) AcquireOption {
	return func(r *governorv1.AcquireRequest) { r.Attempt = n }
}

// WithPriority sets the queueing priority.
func WithPriority(p governorv1.Priority) AcquireOption {
	return func(r *governorv1.AcquireRequest) { r.Priority = p }
}

// WithTenant attributes the request to a tenant (at most 128 bytes): on
// the sidecar's spans and logs, held to the dependency's tenant_rate, and
// given its share under the dependency's fairness.
func WithTenant(tenant string) AcquireOption {
	return func(r *governorv1.AcquireRequest) { r.Tenant = tenant }
}

// WithRoute names the request's route within its tenant (an endpoint, a
// query class; at most 128 bytes): on the sidecar's spans and logs, and
// under fairness by FAIR_BY_TENANT_ROUTE the tenant's routes share its part
// equally. A longer one is answered INVALID_ARGUMENT ("route: ...").
func WithRoute(route string) AcquireOption {
	return func(r *governorv1.AcquireRequest) { r.Route = route }
}

// WithMaxWait shortens how long the request may queue. Zero means
// try-acquire: never queue.
func WithMaxWait(d time.Duration) AcquireOption {
	return func(r *governorv1.AcquireRequest) { r.MaxWait = durationpb.New(d) }
}

// WithDegradable marks the request degradable (true): the caller can serve a
// cheaper answer without this call (a cached value, a partial result), so
// rather than queue, the sidecar answers at once with a *RejectedError of
// reason REJECT_REASON_DEGRADE (see ErrDegrade and WithPermitOrFallback,
// where a fallback makes it the default; WithDegradable(false) overrides).
func WithDegradable(degradable bool) AcquireOption {
	return func(r *governorv1.AcquireRequest) { r.Degradable = degradable }
}

// Acquire asks for a permit for dependency. It returns the lease when
// granted, a *RejectedError when the sidecar answered granted=false, and the
// gRPC status error unchanged otherwise (INVALID_ARGUMENT for bad input,
// UNAVAILABLE when the sidecar cannot be reached, ...). The sidecar queues
// for at most min(configured max_wait, WithMaxWait, the deadline minus a
// small margin). The deadline is WithMaxWait plus AcquireDeadlineMargin, or
// Options.AcquireTimeout (default 1 h + 1 s) without it, or ctx's own if
// earlier. Pass the lease to Release; Close releases it otherwise.
func (c *Client) Acquire(ctx context.Context, dependency string, opts ...AcquireOption) (*Lease, error) {
	return c.acquire(ctx, &governorv1.AcquireRequest{Dependency: dependency}, opts)
}

// acquire is Acquire from a request with its defaults set; opts override them.
func (c *Client) acquire(ctx context.Context, req *governorv1.AcquireRequest, opts []AcquireOption) (*Lease, error) {
	dependency := req.GetDependency()
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	for _, o := range opts {
		o(req)
	}
	ctx, cancel := context.WithTimeout(ctx, c.acquireTimeout(req))
	defer cancel()
	var st *stream
	if c.sess != nil && !carriesTrace(ctx) {
		st = c.sess.stream()
	}
	var resp *governorv1.AcquireResponse
	var err error
	if st != nil {
		resp, err = st.acquire(ctx, req)
		if errors.Is(err, errRetryUnary) {
			st = nil
		}
	}
	if st == nil {
		resp, err = c.gov.Acquire(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	if !resp.GetGranted() {
		return nil, &RejectedError{
			Dependency: dependency,
			Reason:     resp.GetReason(),
			RetryAfter: resp.GetRetryAfter().AsDuration(),
			QueueWait:  resp.GetQueueWait().AsDuration(),
			Limit:      resp.GetLimit(),
			InFlight:   resp.GetInFlight(),
			Queued:     resp.GetQueued(),
			Pressure:   resp.GetPressure(),
		}
	}
	if resp.GetLeaseId() == "" {
		return nil, fmt.Errorf("governor: %s granted without a lease_id", dependency)
	}
	lease := &Lease{
		ID:         LeaseID(resp.GetLeaseId()),
		Dependency: dependency,
		TTL:        resp.GetLeaseTtl().AsDuration(),
		QueueWait:  resp.GetQueueWait().AsDuration(),
		GrantedAt:  time.Now(),
		Pressure:   resp.GetPressure(),
		stream:     st,
	}
	c.mu.Lock()
	closed = c.closed
	if !closed {
		c.held[lease.ID] = lease
	}
	c.mu.Unlock()
	if closed {
		// Close ran while this Acquire was in flight: give the lease back
		// (a session lease went with the stream).
		if st == nil {
			_, _ = c.Release(context.Background(), lease.ID, governorv1.Outcome_OUTCOME_UNSPECIFIED, 0)
		}
		return nil, ErrClosed
	}
	return lease, nil
}

func (c *Client) acquireTimeout(req *governorv1.AcquireRequest) time.Duration {
	if req.MaxWait != nil {
		return req.GetMaxWait().AsDuration() + AcquireDeadlineMargin
	}
	if c.opts.AcquireTimeout > 0 {
		return c.opts.AcquireTimeout
	}
	return DefaultAcquireTimeout
}

// Release gives a permit back. It reports false (not an error) when the lease
// was unknown, expired or already released. latency is the downstream
// latency the caller measured; zero leaves it unset. The call is bounded by
// Options.CallTimeout.
//
// A lease granted on the Session stream is released over it (with an id: the
// answer is waited for). If that stream ended before, Release returns an
// error matching ErrPermitLost and sends nothing: the sidecar freed the lease
// when the stream ended.
func (c *Client) Release(ctx context.Context, leaseID LeaseID, outcome governorv1.Outcome, latency time.Duration) (bool, error) {
	c.mu.Lock()
	lease := c.held[leaseID]
	delete(c.held, leaseID)
	c.mu.Unlock()
	req := &governorv1.ReleaseRequest{LeaseId: string(leaseID), Outcome: outcome}
	if latency > 0 {
		req.Latency = durationpb.New(latency)
	}
	if lease != nil && lease.stream != nil {
		return c.releaseOnSession(ctx, lease, req)
	}
	ctx, cancel := context.WithTimeout(ctx, c.callTimeout())
	defer cancel()
	resp, err := c.gov.Release(ctx, req)
	if err != nil {
		return false, err
	}
	return resp.GetReleased(), nil
}

// Renew extends a held lease by the dependency's lease TTL and returns the
// new TTL. renewed is false (not an error) when the lease was unknown,
// expired or released. The call is bounded by Options.CallTimeout.
func (c *Client) Renew(ctx context.Context, leaseID LeaseID) (ttl time.Duration, renewed bool, err error) {
	return c.renew(ctx, leaseID, c.callTimeout())
}

func (c *Client) renew(ctx context.Context, leaseID LeaseID, timeout time.Duration) (time.Duration, bool, error) {
	c.mu.Lock()
	lease := c.held[leaseID]
	c.mu.Unlock()
	if lease != nil && lease.stream != nil {
		return c.renewOnSession(ctx, lease, timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := c.gov.Renew(ctx, &governorv1.RenewRequest{LeaseId: string(leaseID)})
	if err != nil {
		return 0, false, err
	}
	return resp.GetLeaseTtl().AsDuration(), resp.GetRenewed(), nil
}

// Degraded reports how many WithPermit callbacks ran without a permit
// because the sidecar gave no answer (fail open).
func (c *Client) Degraded() uint64 { return atomic.LoadUint64(&c.degraded) }

func (c *Client) callTimeout() time.Duration {
	if c.opts.CallTimeout > 0 {
		return c.opts.CallTimeout
	}
	return DefaultCallTimeout
}

func (c *Client) reportBackground(op string, lease *Lease, err error) {
	if c.opts.OnBackgroundError != nil {
		c.opts.OnBackgroundError(op, lease, err)
	}
}

// WithTraceContext returns a context whose outgoing gRPC metadata carry the
// W3C trace context (traceparent and, if not empty, tracestate), so the
// sidecar's spans join the caller's trace. Callers instrumented with
// OpenTelemetry's otelgrpc interceptors get this automatically.
func WithTraceContext(ctx context.Context, traceparent, tracestate string) context.Context {
	kv := []string{"traceparent", traceparent}
	if tracestate != "" {
		kv = append(kv, "tracestate", tracestate)
	}
	return metadata.AppendToOutgoingContext(ctx, kv...)
}

// detached returns a context with ctx's values (outgoing gRPC metadata such
// as trace context, OpenTelemetry spans) but neither its deadline nor its
// cancellation, for the Release and Renew calls that must happen even after
// the caller's context ended. It is Go 1.21's context.WithoutCancel, for Go
// 1.19.
func detached(ctx context.Context) context.Context { return valuesOnly{ctx} }

type valuesOnly struct{ parent context.Context }

func (valuesOnly) Deadline() (time.Time, bool)         { return time.Time{}, false }
func (valuesOnly) Done() <-chan struct{}               { return nil }
func (valuesOnly) Err() error                          { return nil }
func (v valuesOnly) Value(key interface{}) interface{} { return v.parent.Value(key) }

// ErrLeaseLost is passed to Options.OnBackgroundError when a Renew answered
// renewed=false: the lease expired or was released by someone else.
var ErrLeaseLost = errors.New("governor: lease lost (renew answered renewed=false)")

// ErrNotReleased is passed to Options.OnBackgroundError when the final
// Release answered released=false (the lease had already expired).
var ErrNotReleased = errors.New("governor: release answered released=false")
