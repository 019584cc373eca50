package governorclient_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
	"github.com/governor-sidecar/governor/client/go/governorclient"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// testConfig is the sidecar configuration shared by the tests; each test
// uses its own dependency names.
const testConfig = `
[server]
listen = "127.0.0.1:0"

[defaults]
max_concurrency = 64
max_queue = 256
max_wait = "1s"
lease_ttl = "30s"

[limits]
allow_unknown_dependencies = true

[dependencies.go-reject]
max_concurrency = 1
max_queue = 0

[dependencies.go-queue]
max_concurrency = 1
max_queue = 4
max_wait = "150ms"

[dependencies.go-renew]
lease_ttl = "500ms"

[dependencies.go-expire]
lease_ttl = "200ms"

[dependencies.go-example-reject]
max_concurrency = 1
max_queue = 0

[dependencies.go-slow]
max_concurrency = 1
max_queue = 4
max_wait = "6s"

[dependencies.go-sess-full]
max_concurrency = 1
max_queue = 4
max_wait = "5s"

[dependencies.go-close]
max_concurrency = 4

[dependencies.go-degrade]
max_concurrency = 1
max_queue = 4
max_wait = "5s"

# Fair shares from the config file; go-fair-admin gets its own through the admin API.
[dependencies.go-fair]
max_concurrency = 4
fairness = { by = "tenant_route", weights = { acme = 3 } }

[dependencies.go-fair-admin]
max_concurrency = 4
`

var gov *governorProc

func TestMain(m *testing.M) {
	p, err := startGovernor(testConfig)
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: cannot start the governor sidecar: %v\n", err)
		os.Exit(1)
	}
	gov = p
	fmt.Fprintf(os.Stderr, "started governor: %s\n", p.readyText)
	code := m.Run()
	if exit, err := p.stop(); err != nil || exit != 0 {
		fmt.Fprintf(os.Stderr, "FAIL: governor did not shut down cleanly on SIGTERM (exit %d, %v); stderr:\n%s\n", exit, err, p.logTail())
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// bgErrors records what a client reports through OnBackgroundError.
type bgErrors struct {
	mu   sync.Mutex
	errs []string
}

func (b *bgErrors) record(op string, l *governorclient.Lease, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	id := "-"
	if l != nil {
		id = l.ID.Handle()
	}
	b.errs = append(b.errs, fmt.Sprintf("%s %s: %v", op, id, err))
}

func (b *bgErrors) list() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errs...)
}

func newClient(t *testing.T, opts governorclient.Options) (*governorclient.Client, *bgErrors) {
	t.Helper()
	bg := &bgErrors{}
	if opts.OnBackgroundError == nil {
		opts.OnBackgroundError = bg.record
	}
	c, err := governorclient.Dial(gov.grpcAddr, opts)
	if err != nil {
		t.Fatalf("dial %s: %v", gov.grpcAddr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bg
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func dependency(t *testing.T, c *governorclient.Client, name string) *governorv1.DependencyStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.Admin().GetDependency(ctx, &governorv1.GetDependencyRequest{Name: name})
	if err != nil {
		t.Fatalf("GetDependency(%s): %v", name, err)
	}
	return st
}

func TestOutcomeFor(t *testing.T) {
	cases := []struct {
		err  error
		want governorv1.Outcome
	}{
		{nil, governorv1.Outcome_OUTCOME_SUCCESS},
		{errors.New("boom"), governorv1.Outcome_OUTCOME_FAILURE},
		{context.DeadlineExceeded, governorv1.Outcome_OUTCOME_TIMEOUT},
		{fmt.Errorf("calling payments: %w", context.DeadlineExceeded), governorv1.Outcome_OUTCOME_TIMEOUT},
		{status.Error(codes.DeadlineExceeded, "slow"), governorv1.Outcome_OUTCOME_TIMEOUT},
		{context.Canceled, governorv1.Outcome_OUTCOME_CANCELLED},
		{fmt.Errorf("wrapped: %w", status.Error(codes.Canceled, "gone")), governorv1.Outcome_OUTCOME_CANCELLED},
		{status.Error(codes.Internal, "oops"), governorv1.Outcome_OUTCOME_FAILURE},
	}
	for _, tc := range cases {
		if got := governorclient.OutcomeFor(tc.err); got != tc.want {
			t.Errorf("OutcomeFor(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestAcquireRelease(t *testing.T) {
	c, _ := newClient(t, governorclient.Options{})
	ctx := governorclient.WithTraceContext(testCtx(t),
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "vendor=go-tests")
	const dep = "go-basic"

	lease, err := c.Acquire(ctx, dep, governorclient.WithTenant("go-tests"),
		governorclient.WithPriority(governorv1.Priority_PRIORITY_CRITICAL))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if lease.ID == "" || lease.Dependency != dep {
		t.Fatalf("bad lease %+v", lease)
	}
	if lease.TTL != 30*time.Second {
		t.Errorf("lease TTL = %s, want the configured 30s", lease.TTL)
	}
	st := dependency(t, c, dep)
	if st.InFlight != 1 || st.GrantedTotal != 1 {
		t.Fatalf("while held: in_flight=%d granted_total=%d, want 1 and 1", st.InFlight, st.GrantedTotal)
	}

	released, err := c.Release(ctx, lease.ID, governorv1.Outcome_OUTCOME_SUCCESS, 5*time.Millisecond)
	if err != nil || !released {
		t.Fatalf("Release = %v, %v; want true, nil", released, err)
	}
	if st := dependency(t, c, dep); st.InFlight != 0 {
		t.Fatalf("after release: in_flight=%d, want 0", st.InFlight)
	}
	released, err = c.Release(ctx, lease.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0)
	if err != nil || released {
		t.Fatalf("second Release = %v, %v; want false, nil (idempotent)", released, err)
	}
}

func TestRenew(t *testing.T) {
	c, _ := newClient(t, governorclient.Options{})
	ctx := testCtx(t)
	lease, err := c.Acquire(ctx, "go-renew-direct")
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	ttl, renewed, err := c.Renew(ctx, lease.ID)
	if err != nil || !renewed || ttl != 30*time.Second {
		t.Fatalf("Renew = %s, %v, %v; want 30s, true, nil", ttl, renewed, err)
	}
	if released, err := c.Release(ctx, lease.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0); err != nil || !released {
		t.Fatalf("Release = %v, %v", released, err)
	}
	ttl, renewed, err = c.Renew(ctx, lease.ID)
	if err != nil || renewed {
		t.Fatalf("Renew after release = %s, %v, %v; want renewed=false, nil", ttl, renewed, err)
	}
}

func TestWithPermitReleasesWhenCallbackFails(t *testing.T) {
	c, bg := newClient(t, governorclient.Options{})
	ctx := testCtx(t)
	const dep = "go-callback-error"
	boom := errors.New("downstream exploded")

	var held *governorclient.Lease
	var inFlightInside uint32
	err := c.WithPermit(ctx, dep, func(ctx context.Context) error {
		l, ok := governorclient.LeaseFromContext(ctx)
		if !ok {
			t.Error("LeaseFromContext: no lease inside WithPermit")
		}
		held = l
		inFlightInside = dependency(t, c, dep).InFlight
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("WithPermit returned %v, want the callback's error", err)
	}
	if inFlightInside != 1 {
		t.Errorf("in_flight inside the callback = %d, want 1", inFlightInside)
	}
	st := dependency(t, c, dep)
	if st.InFlight != 0 || st.ExpiredTotal != 0 {
		t.Fatalf("after a failing callback: in_flight=%d expired_total=%d, want 0 and 0", st.InFlight, st.ExpiredTotal)
	}
	if held == nil {
		t.Fatal("callback never saw its lease")
	}
	if released, err := c.Release(ctx, held.ID, governorv1.Outcome_OUTCOME_FAILURE, 0); err != nil || released {
		t.Fatalf("Release of the WithPermit lease again = %v, %v; want false (already released)", released, err)
	}
	if errs := bg.list(); len(errs) != 0 {
		t.Fatalf("background errors: %v", errs)
	}
}

func TestWithPermitReleasesOnPanic(t *testing.T) {
	c, bg := newClient(t, governorclient.Options{})
	ctx := testCtx(t)
	const dep = "go-callback-panic"

	recovered := func() (r interface{}) {
		defer func() { r = recover() }()
		_ = c.WithPermit(ctx, dep, func(context.Context) error { panic("callback panicked") })
		return nil
	}()
	if recovered != "callback panicked" {
		t.Fatalf("panic was not propagated: recovered %v", recovered)
	}
	if st := dependency(t, c, dep); st.InFlight != 0 || st.GrantedTotal != 1 {
		t.Fatalf("after a panicking callback: in_flight=%d granted_total=%d, want 0 and 1", st.InFlight, st.GrantedTotal)
	}
	if errs := bg.list(); len(errs) != 0 {
		t.Fatalf("background errors: %v", errs)
	}
}

func TestWithPermitReleasesWhenCallerCancelled(t *testing.T) {
	c, bg := newClient(t, governorclient.Options{})
	const dep = "go-callback-cancel"
	ctx, cancel := context.WithCancel(testCtx(t))

	err := c.WithPermit(ctx, dep, func(ctx context.Context) error {
		cancel()
		<-ctx.Done()
		return ctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("WithPermit = %v, want context.Canceled", err)
	}
	if st := dependency(t, c, dep); st.InFlight != 0 {
		t.Fatalf("after a cancelled caller: in_flight=%d, want 0 (Release must not use the cancelled context)", st.InFlight)
	}
	if errs := bg.list(); len(errs) != 0 {
		t.Fatalf("background errors: %v", errs)
	}
}

func TestRejectionIsTypedError(t *testing.T) {
	c, _ := newClient(t, governorclient.Options{})
	ctx := testCtx(t)
	const dep = "go-reject" // max_concurrency = 1, max_queue = 0

	holder, err := c.Acquire(ctx, dep)
	if err != nil {
		t.Fatalf("first Acquire: %v", err)
	}

	called := false
	err = c.WithPermit(ctx, dep, func(context.Context) error { called = true; return nil })
	if called {
		t.Fatal("the callback ran without a permit")
	}
	rej, ok := governorclient.AsRejected(err)
	if !ok {
		t.Fatalf("WithPermit = %v (%T), want a *RejectedError", err, err)
	}
	if !errors.Is(err, governorclient.ErrRejected) {
		t.Error("errors.Is(err, ErrRejected) = false")
	}
	if rej.Reason != governorv1.RejectReason_REJECT_REASON_QUEUE_FULL {
		t.Errorf("reason = %s, want REJECT_REASON_QUEUE_FULL", rej.Reason)
	}
	if rej.Dependency != dep || rej.Limit != 1 || rej.InFlight != 1 || rej.RetryAfter < 0 {
		t.Errorf("rejection details = %+v, want dependency %s, limit 1, in_flight 1, retry_after >= 0", rej, dep)
	}
	if !strings.Contains(err.Error(), "REJECT_REASON_QUEUE_FULL") {
		t.Errorf("error text %q does not name the reason", err.Error())
	}

	if released, err := c.Release(ctx, holder.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0); err != nil || !released {
		t.Fatalf("Release holder = %v, %v", released, err)
	}
	if err := c.WithPermit(ctx, dep, func(context.Context) error { called = true; return nil }); err != nil || !called {
		t.Fatalf("WithPermit after the slot came back = %v (called %v), want nil and called", err, called)
	}
}

func TestQueueTimeoutRejection(t *testing.T) {
	c, _ := newClient(t, governorclient.Options{})
	ctx := testCtx(t)
	const dep = "go-queue" // max_concurrency = 1, max_queue = 4, max_wait = 150ms

	holder, err := c.Acquire(ctx, dep)
	if err != nil {
		t.Fatalf("first Acquire: %v", err)
	}
	defer c.Release(ctx, holder.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0)

	_, err = c.Acquire(ctx, dep)
	rej, ok := governorclient.AsRejected(err)
	if !ok {
		t.Fatalf("queued Acquire = %v, want a *RejectedError", err)
	}
	if rej.Reason != governorv1.RejectReason_REJECT_REASON_QUEUE_TIMEOUT {
		t.Errorf("reason = %s, want REJECT_REASON_QUEUE_TIMEOUT", rej.Reason)
	}
	if rej.QueueWait < 100*time.Millisecond {
		t.Errorf("queue_wait = %s, want about the configured max_wait of 150ms", rej.QueueWait)
	}

	// Try-acquire: max_wait 0 never queues.
	_, err = c.Acquire(ctx, dep, governorclient.WithMaxWait(0))
	rej, ok = governorclient.AsRejected(err)
	if !ok {
		t.Fatalf("try-acquire = %v, want a *RejectedError", err)
	}
	if rej.QueueWait >= 100*time.Millisecond {
		t.Errorf("try-acquire queue_wait = %s, want no queueing", rej.QueueWait)
	}
}

func TestRetryAttemptDrawsOnBudget(t *testing.T) {
	c, _ := newClient(t, governorclient.Options{})
	ctx := testCtx(t)
	const dep = "go-budget"

	_, err := c.Admin().UpdateDependency(ctx, &governorv1.UpdateDependencyRequest{
		Name: dep,
		Limits: &governorv1.DependencyLimits{
			RetryBudget: &governorv1.RetryBudget{Ratio: 0, MinPerSecond: 0, Ttl: durationpb.New(10 * time.Second)},
		},
	})
	if err != nil {
		t.Fatalf("UpdateDependency(empty retry budget): %v", err)
	}

	err = c.WithPermit(ctx, dep, func(context.Context) error { return nil }, governorclient.WithAttempt(1))
	rej, ok := governorclient.AsRejected(err)
	if !ok || rej.Reason != governorv1.RejectReason_REJECT_REASON_RETRY_BUDGET_EXHAUSTED {
		t.Fatalf("retry with an empty budget = %v, want REJECT_REASON_RETRY_BUDGET_EXHAUSTED", err)
	}
	if err := c.WithPermit(ctx, dep, func(context.Context) error { return nil }, governorclient.WithAttempt(0)); err != nil {
		t.Fatalf("first attempt with an empty retry budget = %v, want granted", err)
	}
}

func TestWithPermitRenewsWhileHeld(t *testing.T) {
	c, bg := newClient(t, governorclient.Options{})
	ctx := testCtx(t)
	const dep = "go-renew" // lease_ttl = 500ms
	const hold = 2 * time.Second

	var lease *governorclient.Lease
	err := c.WithPermit(ctx, dep, func(ctx context.Context) error {
		lease, _ = governorclient.LeaseFromContext(ctx)
		// Hold the permit for four lease TTLs, checking all along that the
		// sidecar still counts it (an unrenewed lease would expire).
		deadline := time.Now().Add(hold)
		for time.Now().Before(deadline) {
			st := dependency(t, c, dep)
			if st.InFlight != 1 || st.ExpiredTotal != 0 {
				return fmt.Errorf("while held: in_flight=%d expired_total=%d, want 1 and 0", st.InFlight, st.ExpiredTotal)
			}
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if lease == nil || lease.TTL != 500*time.Millisecond {
		t.Fatalf("lease = %+v, want TTL 500ms", lease)
	}
	if st := dependency(t, c, dep); st.InFlight != 0 || st.ExpiredTotal != 0 {
		t.Fatalf("after release: in_flight=%d expired_total=%d, want 0 and 0", st.InFlight, st.ExpiredTotal)
	}
	if errs := bg.list(); len(errs) != 0 {
		t.Fatalf("background errors (renew or release failed): %v", errs)
	}
}

// The counterpart of TestWithPermitRenewsWhileHeld: a lease nobody renews
// expires and gives its slot back.
func TestUnrenewedLeaseExpires(t *testing.T) {
	c, _ := newClient(t, governorclient.Options{})
	ctx := testCtx(t)
	const dep = "go-expire" // lease_ttl = 200ms

	lease, err := c.Acquire(ctx, dep)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if !eventually(5*time.Second, func() bool { return dependency(t, c, dep).InFlight == 0 }) {
		t.Fatal("an unrenewed 200ms lease still holds its slot after 5s")
	}
	if st := dependency(t, c, dep); st.ExpiredTotal != 1 {
		t.Errorf("expired_total = %d, want 1", st.ExpiredTotal)
	}
	if released, err := c.Release(ctx, lease.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0); err != nil || released {
		t.Fatalf("Release of an expired lease = %v, %v; want false, nil", released, err)
	}
}

func TestInvalidDependencyIsGRPCError(t *testing.T) {
	c, _ := newClient(t, governorclient.Options{})
	ctx := testCtx(t)
	for _, name := range []string{"", "bad name!", strings.Repeat("x", 129)} {
		_, err := c.Acquire(ctx, name)
		if _, rejected := governorclient.AsRejected(err); rejected {
			t.Errorf("Acquire(%q) = %v, want a gRPC error, not a rejection", name, err)
			continue
		}
		st, _ := status.FromError(err)
		if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "dependency") {
			t.Errorf("Acquire(%q) = %v, want INVALID_ARGUMENT naming the dependency field", name, err)
		}
	}
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestFailClosedAndFailOpen(t *testing.T) {
	addr := closedAddr(t)
	ctx := testCtx(t)

	closed, err := governorclient.Dial(addr, governorclient.Options{FailClosed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer closed.Close()
	called := false
	err = closed.WithPermit(ctx, "go-unreachable", func(context.Context) error { called = true; return nil })
	if called || !governorclient.IsUnavailable(err) {
		t.Fatalf("fail-closed: err=%v called=%v, want UNAVAILABLE and no call", err, called)
	}
	if n := closed.Degraded(); n != 0 {
		t.Errorf("fail-closed Degraded() = %d, want 0", n)
	}

	// The default policy is fail open.
	bg := &bgErrors{}
	open, err := governorclient.Dial(addr, governorclient.Options{OnBackgroundError: bg.record})
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	sentinel := errors.New("downstream result")
	err = open.WithPermit(ctx, "go-unreachable", func(ctx context.Context) error {
		called = true
		if _, ok := governorclient.LeaseFromContext(ctx); ok {
			t.Error("fail-open callback claims a lease")
		}
		return sentinel
	})
	if !called || !errors.Is(err, sentinel) {
		t.Fatalf("fail-open: err=%v called=%v, want the callback's error and a call", err, called)
	}
	if n := open.Degraded(); n != 1 {
		t.Errorf("fail-open Degraded() = %d, want 1", n)
	}
	if errs := bg.list(); len(errs) != 1 || !strings.HasPrefix(errs[0], "acquire ") {
		t.Errorf("fail-open background errors = %v, want one acquire error", errs)
	}
}

// A second sidecar, also on a Unix socket; it must drain and exit 0 on
// SIGTERM.
func TestUnixSocketAndGracefulShutdown(t *testing.T) {
	dir, err := os.MkdirTemp("", "gov-uds-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "g.sock")
	p, err := startGovernor(testConfig, "--uds", sock)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			p.kill()
		}
	}()
	if p.uds != sock {
		t.Fatalf("ready line %q: uds=%q, want %q", p.readyText, p.uds, sock)
	}

	c, err := governorclient.Dial("unix://"+sock, governorclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ran := false
	if err := c.WithPermit(testCtx(t), "go-uds", func(context.Context) error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("WithPermit over the Unix socket = %v (ran %v)", err, ran)
	}

	exit, err := p.stop()
	stopped = true
	if err != nil || exit != 0 {
		t.Fatalf("SIGTERM: exit %d, %v, want 0; stderr:\n%s", exit, err, p.logTail())
	}
}

// The example program, built and run against the sidecar.
func TestExampleProgram(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "governor-example")
	build := exec.Command("go", "build", "-o", bin, "github.com/governor-sidecar/governor/client/go/cmd/governor-example")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build the example: %v\n%s", err, out)
	}
	c, _ := newClient(t, governorclient.Options{})

	out, err := exec.Command(bin, "-addr", gov.grpcAddr, "-dependency", "go-example", "-calls", "2").CombinedOutput()
	if err != nil {
		t.Fatalf("example: %v\n%s", err, out)
	}
	for _, want := range []string{"attempt 0: permit ", "call 1: ok", "call 2: ok"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("example output lacks %q:\n%s", want, out)
		}
	}
	if st := dependency(t, c, "go-example"); st.GrantedTotal != 2 || st.InFlight != 0 {
		t.Errorf("after the example: granted_total=%d in_flight=%d, want 2 and 0", st.GrantedTotal, st.InFlight)
	}

	// With the only slot held, the example sees backpressure, retries with
	// attempt set and finally fails.
	ctx := testCtx(t)
	holder, err := c.Acquire(ctx, "go-example-reject")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release(ctx, holder.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0)
	out, err = exec.Command(bin, "-addr", gov.grpcAddr, "-dependency", "go-example-reject", "-calls", "1", "-attempts", "2").CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitCode() != 1 {
		t.Fatalf("example against a saturated dependency: %v, want exit 1\n%s", err, out)
	}
	for _, want := range []string{"attempt 0: rejected: REJECT_REASON_QUEUE_FULL", "attempt 1: rejected:", "call 1: failed"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("example output lacks %q:\n%s", want, out)
		}
	}
}
