package governorclient_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
	"github.com/governor-sidecar/governor/client/go/governorclient"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const success = governorv1.Outcome_OUTCOME_SUCCESS

func inFlight(t *testing.T, c *governorclient.Client, name string) uint32 {
	t.Helper()
	return dependency(t, c, name).GetInFlight()
}

// The normal path: leases come from the session, and closing the client
// frees them in the sidecar at once, without a Release and without expiry.
func TestSessionIsTheDefaultAndCloseFreesItsLeases(t *testing.T) {
	ctx := testCtx(t)
	admin, _ := newClient(t, governorclient.Options{DisableSession: true})
	c, err := governorclient.Dial(gov.grpcAddr, governorclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := c.Acquire(ctx, "go-sess-close")
	if err != nil {
		t.Fatal(err)
	}
	second, err := c.Acquire(ctx, "go-sess-close")
	if err != nil {
		t.Fatal(err)
	}
	if !first.OnSession() || !second.OnSession() {
		t.Fatalf("leases not on the session: %v %v", first.OnSession(), second.OnSession())
	}
	if n := inFlight(t, admin, "go-sess-close"); n != 2 {
		t.Fatalf("in_flight = %d, want 2", n)
	}
	released, err := c.Release(ctx, first.ID, success, time.Millisecond)
	if err != nil || !released {
		t.Fatalf("Release over the session = %v, %v", released, err)
	}
	if n := inFlight(t, admin, "go-sess-close"); n != 1 {
		t.Fatalf("in_flight after one release = %d, want 1", n)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	st := dependency(t, admin, "go-sess-close")
	if st.GetInFlight() != 0 || st.GetExpiredTotal() != 0 {
		t.Fatalf("after Close: in_flight %d expired %d, want 0 0", st.GetInFlight(), st.GetExpiredTotal())
	}
}

// A waiting acquire on the session never delays a later one.
func TestSessionAcquiresAreIndependent(t *testing.T) {
	ctx := testCtx(t)
	holder, _ := newClient(t, governorclient.Options{DisableSession: true})
	c, _ := newClient(t, governorclient.Options{})
	held, err := holder.Acquire(ctx, "go-sess-full")
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		lease *governorclient.Lease
		err   error
	}
	waited := make(chan result, 1)
	go func() {
		l, err := c.Acquire(ctx, "go-sess-full")
		waited <- result{l, err}
	}()
	if !eventually(5*time.Second, func() bool { return dependency(t, holder, "go-sess-full").GetQueued() == 1 }) {
		t.Fatal("the first acquire did not queue")
	}
	other, err := c.Acquire(ctx, "go-sess-free", governorclient.WithMaxWait(0))
	if err != nil || !other.OnSession() {
		t.Fatalf("second acquire: %v (on session %v)", err, other != nil && other.OnSession())
	}
	select {
	case r := <-waited:
		t.Fatalf("the waiting acquire finished early: %+v", r)
	default:
	}
	if _, err := c.Release(ctx, other.ID, success, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Release(ctx, held.ID, success, 0); err != nil {
		t.Fatal(err)
	}
	r := <-waited
	if r.err != nil || !r.lease.OnSession() {
		t.Fatalf("the waiting acquire: %v", r.err)
	}
	if ok, err := c.Release(ctx, r.lease.ID, success, 0); err != nil || !ok {
		t.Fatalf("release: %v %v", ok, err)
	}
}

// A caller that gives up on a waiting acquire: the grant that comes later
// is given back by the client at once.
func TestSessionAbandonedAcquireIsReleasedWhenGranted(t *testing.T) {
	ctx := testCtx(t)
	holder, _ := newClient(t, governorclient.Options{DisableSession: true})
	c, _ := newClient(t, governorclient.Options{})
	before := dependency(t, holder, "go-sess-full")
	held, err := holder.Acquire(ctx, "go-sess-full")
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := c.Acquire(short, "go-sess-full")
		done <- err
	}()
	if !eventually(5*time.Second, func() bool { return dependency(t, holder, "go-sess-full").GetQueued() == 1 }) {
		t.Fatal("the acquire did not queue")
	}
	cancel()
	if err := <-done; status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled acquire: %v, want CANCELED", err)
	}
	if _, err := holder.Release(ctx, held.ID, success, 0); err != nil {
		t.Fatal(err)
	}
	if !eventually(5*time.Second, func() bool {
		st := dependency(t, holder, "go-sess-full")
		return st.GetGrantedTotal() == before.GetGrantedTotal()+2 && st.GetInFlight() == 0
	}) {
		t.Fatalf("the late grant was not released: %+v", dependency(t, holder, "go-sess-full"))
	}
	if st := dependency(t, holder, "go-sess-full"); st.GetExpiredTotal() != before.GetExpiredTotal() {
		t.Fatalf("expired_total moved: %d -> %d", before.GetExpiredTotal(), st.GetExpiredTotal())
	}
}

// A sidecar that dies: the held lease is reported lost, by Release and by
// WithPermit, and never released a second time.
func TestSessionDeathReportsThePermitLost(t *testing.T) {
	ctx := testCtx(t)
	p, err := startGovernor(testConfig)
	if err != nil {
		t.Fatal(err)
	}
	defer p.kill()
	c, err := governorclient.Dial(p.grpcAddr, governorclient.Options{FailClosed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lease, err := c.Acquire(ctx, "go-sess-lost")
	if err != nil || !lease.OnSession() {
		t.Fatalf("acquire: %v", err)
	}
	inBlock := make(chan struct{})
	proceed := make(chan struct{})
	permitErr := make(chan error, 1)
	go func() {
		permitErr <- c.WithPermit(ctx, "go-sess-lost", func(ctx context.Context) error {
			close(inBlock)
			<-proceed
			return nil
		})
	}()
	<-inBlock
	p.kill()
	_, err = c.Release(ctx, lease.ID, success, 0)
	if !errors.Is(err, governorclient.ErrPermitLost) || !strings.Contains(err.Error(), "go-sess-lost") {
		t.Fatalf("Release after the session died = %v, want ErrPermitLost", err)
	}
	// No second release: the lease is no longer the client's (the unary
	// Release it would fall back to finds no sidecar).
	if ok, err := c.Release(ctx, lease.ID, success, 0); ok || errors.Is(err, governorclient.ErrPermitLost) {
		t.Fatalf("second Release = %v, %v", ok, err)
	}
	close(proceed)
	if err := <-permitErr; !errors.Is(err, governorclient.ErrPermitLost) {
		t.Fatalf("WithPermit = %v, want ErrPermitLost", err)
	}
}

// A sidecar without the Session RPC: the unary calls, and the stream is not
// tried again for every acquire.
type unaryOnly struct {
	*scriptedGovernor
	sessions int32
}

func (u *unaryOnly) Session(governorv1.Governor_SessionServer) error {
	atomic.AddInt32(&u.sessions, 1)
	return status.Error(codes.Unimplemented, "unknown method Session for service governor.v1.Governor")
}

func TestSessionFallsBackToUnaryWhenUnimplemented(t *testing.T) {
	ctx := testCtx(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	fake := &unaryOnly{scriptedGovernor: &scriptedGovernor{ttl: 30 * time.Second, renew: make(chan struct{}, 1)}}
	governorv1.RegisterGovernorServer(srv, fake)
	go srv.Serve(lis)
	defer srv.Stop()
	c := dial(t, lis.Addr().String(), governorclient.Options{FailClosed: true})
	for i := 0; i < 3; i++ {
		lease, err := c.Acquire(ctx, "payments")
		if err != nil {
			t.Fatalf("acquire %d: %v", i, err)
		}
		if lease.OnSession() {
			t.Fatal("a lease on a session the sidecar does not have")
		}
		if ok, err := c.Release(ctx, lease.ID, success, 0); err != nil || !ok {
			t.Fatalf("release %d: %v %v", i, ok, err)
		}
	}
	if n := len(fake.of("Acquire")); n != 3 {
		t.Fatalf("unary Acquires = %d, want 3", n)
	}
	if n := len(fake.of("Release")); n != 3 {
		t.Fatalf("unary Releases = %d, want 3", n)
	}
	if n := atomic.LoadInt32(&fake.sessions); n != 1 {
		t.Fatalf("Session attempts = %d, want 1 (remembered for %s)", n, governorclient.SessionUnaryRetry)
	}
}

// A per-message error does not end the session.
func TestSessionPerMessageErrorKeepsTheStream(t *testing.T) {
	ctx := testCtx(t)
	c, _ := newClient(t, governorclient.Options{})
	first, err := c.Acquire(ctx, "go-sess-free")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Acquire(ctx, "bad name!")
	if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "dependency:") {
		t.Fatalf("bad name: %v", err)
	}
	second, err := c.Acquire(ctx, "go-sess-free")
	if err != nil || !second.OnSession() {
		t.Fatalf("after the error: %v", err)
	}
	for _, l := range []*governorclient.Lease{first, second} {
		if ok, err := c.Release(ctx, l.ID, success, 0); err != nil || !ok {
			t.Fatalf("release: %v %v", ok, err)
		}
	}
}
