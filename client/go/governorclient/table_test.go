package governorclient_test

// The table of docs/any-language.md ("What every client does"): the rows a
// fake server has to force (gRPC codes, exact deadlines) here, the rows that
// involve the sidecar against the real binary.

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
	"github.com/governor-sidecar/governor/client/go/governorclient"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The fail-open row: the sidecar gave no answer.
var noAnswer = []codes.Code{
	codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unknown, codes.Internal, codes.DataLoss,
}

// The "always an error" row.
var answers = []codes.Code{
	codes.InvalidArgument, codes.NotFound, codes.ResourceExhausted, codes.Unimplemented,
	codes.PermissionDenied, codes.Unauthenticated, codes.FailedPrecondition, codes.OutOfRange,
	codes.AlreadyExists, codes.Aborted,
}

var reasons = []governorv1.RejectReason{
	governorv1.RejectReason_REJECT_REASON_QUEUE_FULL,
	governorv1.RejectReason_REJECT_REASON_QUEUE_TIMEOUT,
	governorv1.RejectReason_REJECT_REASON_RETRY_BUDGET_EXHAUSTED,
	governorv1.RejectReason_REJECT_REASON_SHED,
	governorv1.RejectReason_REJECT_REASON_SHUTTING_DOWN,
	governorv1.RejectReason_REJECT_REASON_RATE_LIMITED,
}

// seen is one call the scripted fake received: its request and how much
// time its deadline left.
type seen struct {
	method   string
	request  interface{}
	deadline time.Duration // 0: none
}

// scriptedGovernor answers Acquire from a script (an error code, a response,
// or nil for "hang until the call ends"), grants otherwise, and records every call.
type scriptedGovernor struct {
	governorv1.UnimplementedGovernorServer
	mu     sync.Mutex
	script []interface{}
	calls  []seen
	ttl    time.Duration
	renew  chan struct{} // gets a value at every Renew
}

var hang = struct{}{}

func (s *scriptedGovernor) record(ctx context.Context, method string, req interface{}) {
	var left time.Duration
	if d, ok := ctx.Deadline(); ok {
		left = time.Until(d)
	}
	s.mu.Lock()
	s.calls = append(s.calls, seen{method, req, left})
	s.mu.Unlock()
}

func (s *scriptedGovernor) of(method string) []seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []seen
	for _, c := range s.calls {
		if c.method == method {
			out = append(out, c)
		}
	}
	return out
}

func (s *scriptedGovernor) push(answers ...interface{}) {
	s.mu.Lock()
	s.script = append(s.script, answers...)
	s.mu.Unlock()
}

func (s *scriptedGovernor) Acquire(ctx context.Context, req *governorv1.AcquireRequest) (*governorv1.AcquireResponse, error) {
	s.record(ctx, "Acquire", req)
	s.mu.Lock()
	var next interface{}
	if len(s.script) > 0 {
		next, s.script = s.script[0], s.script[1:]
	}
	s.mu.Unlock()
	switch v := next.(type) {
	case codes.Code:
		return nil, status.Error(v, "dependency: forced by the fake")
	case *governorv1.AcquireResponse:
		return v, nil
	case struct{}:
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return &governorv1.AcquireResponse{Granted: true, LeaseId: "lease-" + req.GetDependency(), LeaseTtl: durationpb.New(s.ttl)}, nil
}

func (s *scriptedGovernor) Renew(ctx context.Context, req *governorv1.RenewRequest) (*governorv1.RenewResponse, error) {
	s.record(ctx, "Renew", req)
	select {
	case s.renew <- struct{}{}:
	default:
	}
	return &governorv1.RenewResponse{Renewed: true, LeaseTtl: durationpb.New(s.ttl)}, nil
}

func (s *scriptedGovernor) Release(ctx context.Context, req *governorv1.ReleaseRequest) (*governorv1.ReleaseResponse, error) {
	s.record(ctx, "Release", req)
	return &governorv1.ReleaseResponse{Released: true}, nil
}

func startScripted(t *testing.T) (*scriptedGovernor, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	fake := &scriptedGovernor{ttl: 30 * time.Second, renew: make(chan struct{}, 1)}
	governorv1.RegisterGovernorServer(srv, fake)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return fake, lis.Addr().String()
}

func dial(t *testing.T, addr string, opts governorclient.Options) *governorclient.Client {
	t.Helper()
	c, err := governorclient.Dial(addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestTableEveryCode(t *testing.T) {
	fake, addr := startScripted(t)
	open := dial(t, addr, governorclient.Options{OnBackgroundError: func(string, *governorclient.Lease, error) {}})
	closed := dial(t, addr, governorclient.Options{FailClosed: true})
	ctx := testCtx(t)
	for i, code := range noAnswer {
		fake.push(code, code)
		ran := false
		if err := open.WithPermit(ctx, "payments", func(context.Context) error { ran = true; return nil }); err != nil || !ran {
			t.Errorf("%v, fail open: err=%v ran=%v, want a run without a permit", code, err, ran)
		}
		if got := open.Degraded(); got != uint64(i+1) {
			t.Errorf("%v: Degraded() = %d, want %d", code, got, i+1)
		}
		err := closed.WithPermit(ctx, "payments", func(context.Context) error { t.Errorf("%v: fail closed ran fn", code); return nil })
		if status.Code(err) != code || !governorclient.IsUnavailable(err) {
			t.Errorf("%v, fail closed: err=%v, want that code, unavailable", code, err)
		}
	}
	for _, code := range answers {
		for name, c := range map[string]*governorclient.Client{"open": open, "closed": closed} {
			fake.push(code)
			err := c.WithPermit(ctx, "payments", func(context.Context) error { t.Errorf("%v: %s ran fn", code, name); return nil })
			if status.Code(err) != code || governorclient.IsUnavailable(err) {
				t.Errorf("%v, %s: err=%v, want that code, not unavailable", code, name, err)
			}
			if s, _ := status.FromError(err); s.Message() != "dependency: forced by the fake" {
				t.Errorf("%v: message %q", code, s.Message())
			}
		}
	}
	if got := open.Degraded(); got != uint64(len(noAnswer)) {
		t.Errorf("Degraded() = %d after the answers, want %d", got, len(noAnswer))
	}
	if got := closed.Degraded(); got != 0 {
		t.Errorf("fail-closed Degraded() = %d, want 0", got)
	}
}

func TestTableEveryRejectionIsReturnedEvenFailingOpen(t *testing.T) {
	fake, addr := startScripted(t)
	open := dial(t, addr, governorclient.Options{})
	for _, reason := range reasons {
		fake.push(&governorv1.AcquireResponse{Reason: reason, RetryAfter: durationpb.New(time.Second)})
		err := open.WithPermit(testCtx(t), "payments", func(context.Context) error { t.Errorf("%v: ran fn", reason); return nil })
		rej, ok := governorclient.AsRejected(err)
		if !ok || rej.Reason != reason || rej.RetryAfter != time.Second {
			t.Errorf("%v: err=%v, want that rejection", reason, err)
		}
	}
	if got := open.Degraded(); got != 0 {
		t.Errorf("Degraded() = %d, want 0", got)
	}
}

func within(t *testing.T, what string, got, low, high time.Duration) {
	t.Helper()
	if got <= low || got > high {
		t.Errorf("%s deadline = %v, want in (%v, %v]", what, got, low, high)
	}
}

func TestTableDeadlines(t *testing.T) {
	fake, addr := startScripted(t)
	fake.ttl = 300 * time.Millisecond
	c := dial(t, addr, governorclient.Options{})
	// No deadline on the caller's context: the client's own.
	ctx := context.Background()
	if _, err := c.Acquire(ctx, "bounded", governorclient.WithMaxWait(250*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	err := c.WithPermit(ctx, "unbounded", func(context.Context) error {
		select {
		case <-fake.renew:
			return nil
		case <-time.After(5 * time.Second):
			return errors.New("no Renew within 5 s of a 300 ms lease")
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	// A shorter deadline of the caller's wins.
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := c.Acquire(short, "caller"); err != nil {
		t.Fatal(err)
	}
	acquires := fake.of("Acquire")
	within(t, "Acquire with max_wait 250ms", acquires[0].deadline, 1150*time.Millisecond, 1250*time.Millisecond)
	within(t, "Acquire without max_wait", acquires[1].deadline, 3600900*time.Millisecond, 3601*time.Second)
	within(t, "Acquire under a 3 s caller deadline", acquires[2].deadline, 2900*time.Millisecond, 3*time.Second)
	within(t, "Renew of a 300 ms lease", fake.of("Renew")[0].deadline, 50*time.Millisecond, 100*time.Millisecond)
	within(t, "Release", fake.of("Release")[0].deadline, 1900*time.Millisecond, 2*time.Second)
}

func TestTableTheCallersCancellationIsNeverFailedOpen(t *testing.T) {
	fake, addr := startScripted(t)
	open := dial(t, addr, governorclient.Options{})
	fake.push(hang)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for len(fake.of("Acquire")) == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	err := open.WithPermit(ctx, "payments", func(context.Context) error { t.Error("ran fn for a cancelled caller"); return nil })
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	if got := open.Degraded(); got != 0 {
		t.Errorf("Degraded() = %d, want 0", got)
	}
}

func TestTableCloseReleasesHeldLeasesUnspecified(t *testing.T) {
	fake, addr := startScripted(t)
	c, err := governorclient.Dial(addr, governorclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	kept, err := c.Acquire(ctx, "kept")
	if err != nil {
		t.Fatal(err)
	}
	given, err := c.Acquire(ctx, "given")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Release(ctx, given.ID, governorv1.Outcome_OUTCOME_SUCCESS, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range fake.of("Release") {
		req := r.request.(*governorv1.ReleaseRequest)
		got = append(got, req.GetLeaseId()+" "+req.GetOutcome().String())
	}
	want := []string{string(given.ID) + " OUTCOME_SUCCESS", string(kept.ID) + " OUTCOME_UNSPECIFIED"}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("releases = %v, want %v", got, want)
	}
	if _, err := c.Acquire(ctx, "after"); !errors.Is(err, governorclient.ErrClosed) {
		t.Errorf("Acquire after Close = %v, want ErrClosed", err)
	}
}

// Against the real sidecar.

func TestTableDefaultDeadlineNeverCutsALongMaxWaitShort(t *testing.T) {
	// go-slow has max_wait 6 s, longer than the old 5 s and 1.5 s defaults.
	c, _ := newClient(t, governorclient.Options{FailClosed: true})
	held, err := c.Acquire(context.Background(), "go-slow")
	if err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	_, err = c.Acquire(context.Background(), "go-slow")
	rej, ok := governorclient.AsRejected(err)
	if !ok || rej.Reason != governorv1.RejectReason_REJECT_REASON_QUEUE_TIMEOUT {
		t.Fatalf("err = %v, want QUEUE_TIMEOUT", err)
	}
	if waited := time.Since(started); waited < 5900*time.Millisecond || rej.QueueWait < 5900*time.Millisecond {
		t.Errorf("waited %v (queue_wait %v), want the sidecar's whole 6 s", waited, rej.QueueWait)
	}
	if _, err := c.Release(context.Background(), held.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0); err != nil {
		t.Fatal(err)
	}
}

func TestTableCloseGivesLeasesBackToTheSidecar(t *testing.T) {
	observer, _ := newClient(t, governorclient.Options{FailClosed: true})
	c, err := governorclient.Dial(gov.grpcAddr, governorclient.Options{FailClosed: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if _, err := c.Acquire(testCtx(t), "go-close"); err != nil {
			t.Fatal(err)
		}
	}
	if st := dependency(t, observer, "go-close"); st.GetInFlight() != 2 {
		t.Fatalf("in_flight = %d, want 2", st.GetInFlight())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if st := dependency(t, observer, "go-close"); st.GetInFlight() != 0 || st.GetExpiredTotal() != 0 {
		t.Errorf("after Close: in_flight %d, expired %d; want 0, 0", st.GetInFlight(), st.GetExpiredTotal())
	}
}

func TestTableDependencyCapIsAnErrorEvenFailingOpen(t *testing.T) {
	p, err := startGovernor("[limits]\nmax_dependencies = 1\n")
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	c := dial(t, p.grpcAddr, governorclient.Options{})
	ctx := testCtx(t)
	// Held, so that it cannot be evicted to make room.
	first, err := c.Acquire(ctx, "first")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release(ctx, first.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0)
	err = c.WithPermit(ctx, "second", func(context.Context) error { t.Error("ran fn past the dependency cap"); return nil })
	if s, _ := status.FromError(err); s.Code() != codes.ResourceExhausted || len(s.Message()) < 11 || s.Message()[:11] != "dependency:" {
		t.Errorf("err = %v, want RESOURCE_EXHAUSTED naming the dependency", err)
	}
	if got := c.Degraded(); got != 0 {
		t.Errorf("Degraded() = %d, want 0", got)
	}
}

func TestTableDrainingSidecarRejectsEvenFailingOpen(t *testing.T) {
	p, err := startGovernor("[defaults]\n")
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	c := dial(t, p.grpcAddr, governorclient.Options{})
	ctx := testCtx(t)
	held, err := c.Acquire(ctx, "drain") // keeps the sidecar in its drain grace period
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := c.WithPermit(ctx, "drain", func(context.Context) error { return nil }, governorclient.WithMaxWait(0))
		if rej, ok := governorclient.AsRejected(err); ok {
			if rej.Reason != governorv1.RejectReason_REJECT_REASON_SHUTTING_DOWN {
				t.Fatalf("rejection %v, want SHUTTING_DOWN", rej.Reason)
			}
			break
		}
		if err != nil {
			t.Fatalf("err = %v, want a rejection", err)
		}
		if c.Degraded() != 0 {
			t.Fatal("failed open on a draining sidecar")
		}
		if time.Now().After(deadline) {
			t.Fatal("no SHUTTING_DOWN rejection within 5 s of SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := c.Degraded(); got != 0 {
		t.Errorf("Degraded() = %d, want 0", got)
	}
	if released, err := c.Release(ctx, held.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0); err != nil || !released {
		t.Errorf("release of the held lease: %v %v", released, err)
	}
}

// A frozen sidecar (SIGSTOP) during a queued Acquire that may wait an hour:
// the keepalive drops the connection and the call fails open. grpc-go pings
// at most every 10 s, so this takes about 11 s; it runs beside the others.
func TestTableKeepaliveNoticesAFrozenSidecar(t *testing.T) {
	t.Parallel()
	p, err := startGovernor("[dependencies.frozen]\nmax_concurrency = 1\nmax_queue = 4\nmax_wait = \"1h\"\n")
	if err != nil {
		t.Fatal(err)
	}
	defer p.stop()
	holder := dial(t, p.grpcAddr, governorclient.Options{FailClosed: true})
	held, err := holder.Acquire(context.Background(), "frozen")
	if err != nil {
		t.Fatal(err)
	}
	// DefaultKeepalive with a shorter answer time (grpc-go's shortest ping interval is 10 s).
	quick := governorclient.DefaultKeepalive
	quick.Timeout = time.Second
	c, err := governorclient.Dial(p.grpcAddr, governorclient.Options{}, grpc.WithInsecure(), grpc.WithKeepaliveParams(quick))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	ran := false
	go func() {
		done <- c.WithPermit(context.Background(), "frozen", func(ctx context.Context) error {
			_, hasLease := governorclient.LeaseFromContext(ctx)
			ran = !hasLease
			return nil
		})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for dependency(t, holder, "frozen").GetQueued() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the acquire never queued")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		err = errors.New("keepalive did not notice the frozen sidecar within 20 s")
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	if err != nil || !ran || c.Degraded() != 1 {
		t.Fatalf("err=%v ran-without-lease=%v degraded=%d; want a fail-open run", err, ran, c.Degraded())
	}
	if _, err := holder.Release(context.Background(), held.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0); err != nil {
		t.Fatal(err)
	}
}
