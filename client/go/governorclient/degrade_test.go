package governorclient_test

// Degradable acquires and pressure (issue 10, "Degrade and pressure"): the
// wire and the answers against the scripted fake, unary and over a Session
// stream it serves too; then the real binary.

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
	"github.com/governor-sidecar/governor/client/go/governorclient"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
)

const (
	pressureElevated   = governorv1.Pressure_PRESSURE_ELEVATED
	pressureSaturated  = governorv1.Pressure_PRESSURE_SATURATED
	pressureOverloaded = governorv1.Pressure_PRESSURE_OVERLOADED
	reasonDegrade      = governorv1.RejectReason_REJECT_REASON_DEGRADE
)

// sessionScripted is the scripted fake with the Session RPC: each acquire on
// the stream is answered from the same script (a code: a SessionError) and
// recorded as "Session.Acquire".
type sessionScripted struct {
	*scriptedGovernor
}

func (s sessionScripted) Session(stream governorv1.Governor_SessionServer) error {
	for {
		msg, err := stream.Recv()
		if err != nil {
			return nil
		}
		out := &governorv1.SessionResponse{Id: msg.GetId()}
		switch op := msg.GetOp().(type) {
		case *governorv1.SessionRequest_Acquire:
			req := op.Acquire
			s.record(stream.Context(), "Session.Acquire", req)
			s.mu.Lock()
			var next interface{}
			if len(s.script) > 0 {
				next, s.script = s.script[0], s.script[1:]
			}
			s.mu.Unlock()
			switch v := next.(type) {
			case codes.Code:
				out.Result = &governorv1.SessionResponse_Error{Error: &governorv1.SessionError{Code: int32(v), Message: "dependency: forced by the fake"}}
			case *governorv1.AcquireResponse:
				out.Result = &governorv1.SessionResponse_Acquire{Acquire: v}
			default:
				out.Result = &governorv1.SessionResponse_Acquire{Acquire: &governorv1.AcquireResponse{
					Granted: true, LeaseId: "lease-" + req.GetDependency(), LeaseTtl: durationpb.New(s.ttl)}}
			}
		case *governorv1.SessionRequest_Release:
			s.record(stream.Context(), "Session.Release", op.Release)
			if msg.GetId() == 0 {
				continue
			}
			out.Result = &governorv1.SessionResponse_Release{Release: &governorv1.ReleaseResponse{Released: true}}
		case *governorv1.SessionRequest_Renew:
			out.Result = &governorv1.SessionResponse_Renew{Renew: &governorv1.RenewResponse{Renewed: true, LeaseTtl: durationpb.New(s.ttl)}}
		}
		if err := stream.Send(out); err != nil {
			return nil
		}
	}
}

// startFake serves the scripted fake, with the Session RPC when session is true.
func startFake(t *testing.T, session bool) (*scriptedGovernor, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	fake := &scriptedGovernor{ttl: 30 * time.Second, renew: make(chan struct{}, 1)}
	if session {
		governorv1.RegisterGovernorServer(srv, sessionScripted{fake})
	} else {
		governorv1.RegisterGovernorServer(srv, fake)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return fake, lis.Addr().String()
}

func granted(p governorv1.Pressure) *governorv1.AcquireResponse {
	return &governorv1.AcquireResponse{Granted: true, LeaseId: "lease-p", LeaseTtl: durationpb.New(30 * time.Second), Limit: 4, InFlight: 3, Pressure: p}
}

func degraded(p governorv1.Pressure, retryAfter time.Duration) *governorv1.AcquireResponse {
	return &governorv1.AcquireResponse{Reason: reasonDegrade, RetryAfter: durationpb.New(retryAfter), Limit: 1, InFlight: 1, Pressure: p}
}

// degradables lists the degradable flag of every Acquire the fake received
// on method ("Acquire" or "Session.Acquire").
func degradables(fake *scriptedGovernor, method string) []bool {
	var out []bool
	for _, c := range fake.of(method) {
		out = append(out, c.request.(*governorv1.AcquireRequest).GetDegradable())
	}
	return out
}

func sameBools(a, b []bool) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

var paths = []struct {
	name    string
	session bool
	method  string
}{{"unary", false, "Acquire"}, {"session", true, "Session.Acquire"}}

func TestDegradableIsSentAndPressureIsRead(t *testing.T) {
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			fake, addr := startFake(t, p.session)
			c := dial(t, addr, governorclient.Options{FailClosed: true})
			ctx := testCtx(t)
			fake.push(granted(pressureElevated), granted(pressureOverloaded))
			first, err := c.Acquire(ctx, "payments", governorclient.WithDegradable(true))
			if err != nil {
				t.Fatal(err)
			}
			var inFn governorv1.Pressure
			if err := c.WithPermit(ctx, "payments", func(ctx context.Context) error {
				l, _ := governorclient.LeaseFromContext(ctx)
				inFn = l.Pressure
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			old, err := c.Acquire(ctx, "payments") // the fake's default grant: an old sidecar, no pressure
			if err != nil {
				t.Fatal(err)
			}
			if first.OnSession() != p.session {
				t.Errorf("OnSession = %v, want %v", first.OnSession(), p.session)
			}
			if first.Pressure != pressureElevated || inFn != pressureOverloaded || old.Pressure != governorv1.Pressure_PRESSURE_UNSPECIFIED {
				t.Errorf("pressures = %v, %v, %v; want ELEVATED, OVERLOADED, UNSPECIFIED", first.Pressure, inFn, old.Pressure)
			}
			for _, l := range []*governorclient.Lease{first, old} {
				if _, err := c.Release(ctx, l.ID, success, 0); err != nil {
					t.Fatal(err)
				}
			}
			if got := degradables(fake, p.method); !sameBools(got, []bool{true, false, false}) {
				t.Errorf("degradable sent = %v, want [true false false]", got)
			}
		})
	}
}

func TestDegradeRunsTheFallbackNotFn(t *testing.T) {
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			fake, addr := startFake(t, p.session)
			c := dial(t, addr, governorclient.Options{FailClosed: true})
			fake.push(degraded(pressureSaturated, 250*time.Millisecond))
			var ran []string
			var got *governorclient.RejectedError
			errCached := errors.New("served from the cache")
			err := c.WithPermitOrFallback(testCtx(t), "payments",
				func(context.Context) error { ran = append(ran, "fn"); return nil },
				func(ctx context.Context, rej *governorclient.RejectedError) error {
					ran = append(ran, "fallback")
					got = rej
					return errCached
				})
			if !errors.Is(err, errCached) {
				t.Fatalf("WithPermitOrFallback = %v, want the fallback's error", err)
			}
			if len(ran) != 1 || ran[0] != "fallback" {
				t.Fatalf("ran %v, want [fallback]", ran)
			}
			if got.Reason != reasonDegrade || got.Pressure != pressureSaturated || got.RetryAfter != 250*time.Millisecond {
				t.Errorf("rejection = %+v", got)
			}
			// A fallback implies degradable; nothing to release.
			if d := degradables(fake, p.method); !sameBools(d, []bool{true}) {
				t.Errorf("degradable sent = %v, want [true]", d)
			}
			if n := len(fake.of("Release")) + len(fake.of("Session.Release")); n != 0 {
				t.Errorf("%d releases, want none", n)
			}
		})
	}
}

func TestExplicitDegradableFalseWinsOverTheFallback(t *testing.T) {
	fake, addr := startScripted(t)
	c := dial(t, addr, governorclient.Options{FailClosed: true})
	ran := ""
	err := c.WithPermitOrFallback(testCtx(t), "payments",
		func(context.Context) error { ran = "fn"; return nil },
		func(context.Context, *governorclient.RejectedError) error { ran = "fallback"; return nil },
		governorclient.WithDegradable(false))
	if err != nil || ran != "fn" {
		t.Fatalf("err=%v ran=%q, want nil, fn", err, ran)
	}
	if d := degradables(fake, "Acquire"); !sameBools(d, []bool{false}) {
		t.Errorf("degradable sent = %v, want [false]", d)
	}
}

func TestOtherRejectionsStillReturnWithAFallback(t *testing.T) {
	fake, addr := startScripted(t)
	c := dial(t, addr, governorclient.Options{}) // fail open: rejections are never bypassed
	for _, reason := range reasons {
		fake.push(&governorv1.AcquireResponse{Reason: reason, Pressure: pressureOverloaded})
		err := c.WithPermitOrFallback(testCtx(t), "payments",
			func(context.Context) error { t.Errorf("%v: ran fn", reason); return nil },
			func(context.Context, *governorclient.RejectedError) error {
				t.Errorf("%v: ran the fallback", reason)
				return nil
			})
		rej, ok := governorclient.AsRejected(err)
		if !ok || rej.Reason != reason || rej.Pressure != pressureOverloaded || errors.Is(err, governorclient.ErrDegrade) {
			t.Errorf("%v: err=%v, want that rejection, not ErrDegrade", reason, err)
		}
	}
}

func TestDegradeWithoutAFallbackIsTheTypedError(t *testing.T) {
	fake, addr := startScripted(t)
	c := dial(t, addr, governorclient.Options{})
	ctx := testCtx(t)
	fake.push(degraded(pressureElevated, time.Second), degraded(pressureSaturated, time.Second))
	_, err := c.Acquire(ctx, "payments", governorclient.WithDegradable(true))
	rej, ok := governorclient.AsRejected(err)
	if !ok || !errors.Is(err, governorclient.ErrDegrade) || !errors.Is(err, governorclient.ErrRejected) {
		t.Fatalf("Acquire = %v, want a *RejectedError matching ErrDegrade and ErrRejected", err)
	}
	if rej.Pressure != pressureElevated || rej.RetryAfter != time.Second {
		t.Errorf("rejection = %+v", rej)
	}
	if msg := err.Error(); !strings.Contains(msg, "REJECT_REASON_DEGRADE") || !strings.Contains(msg, "PRESSURE_ELEVATED") {
		t.Errorf("error text %q names neither reason nor pressure", msg)
	}
	err = c.WithPermit(ctx, "payments", func(context.Context) error { t.Error("ran fn"); return nil }, governorclient.WithDegradable(true))
	if !errors.Is(err, governorclient.ErrDegrade) {
		t.Errorf("WithPermit = %v, want ErrDegrade", err)
	}
	if err := c.WithPermitOrFallback(ctx, "payments", func(context.Context) error { return nil }, nil); !errors.Is(err, governorclient.ErrNoFallback) {
		t.Errorf("nil fallback = %v, want ErrNoFallback", err)
	}
	if n := len(fake.of("Acquire")); n != 2 {
		t.Errorf("%d Acquires, want 2 (none for the nil fallback)", n)
	}
}

func TestFailOpenIsUnchangedByAFallback(t *testing.T) {
	fake, addr := startScripted(t)
	open := dial(t, addr, governorclient.Options{OnBackgroundError: func(string, *governorclient.Lease, error) {}})
	closed := dial(t, addr, governorclient.Options{FailClosed: true})
	fallback := func(context.Context, *governorclient.RejectedError) error { t.Error("ran the fallback"); return nil }
	fake.push(codes.Unavailable, codes.Unavailable)
	ran := false
	if err := open.WithPermitOrFallback(testCtx(t), "payments", func(context.Context) error { ran = true; return nil }, fallback); err != nil || !ran {
		t.Errorf("fail open: err=%v ran=%v, want fn run without a permit", err, ran)
	}
	if err := closed.WithPermitOrFallback(testCtx(t), "payments", func(context.Context) error { t.Error("ran fn"); return nil }, fallback); !governorclient.IsUnavailable(err) {
		t.Errorf("fail closed: err=%v, want unavailable", err)
	}
}

// The real binary: a degradable acquire on a saturated dependency runs the
// fallback at once, and a grant at max_concurrency = 1 reads SATURATED.
func TestRealSidecarDegradesASaturatedDependency(t *testing.T) {
	for _, p := range paths {
		t.Run(p.name, func(t *testing.T) {
			ctx := testCtx(t)
			holder, _ := newClient(t, governorclient.Options{FailClosed: true})
			c, _ := newClient(t, governorclient.Options{FailClosed: true, DisableSession: !p.session})
			const dep = "go-degrade" // max_concurrency = 1, max_queue = 4
			held, err := holder.Acquire(ctx, dep)
			if err != nil {
				t.Fatal(err)
			}
			if held.Pressure != pressureSaturated {
				t.Errorf("held.Pressure = %v, want PRESSURE_SATURATED (1 of 1 in use)", held.Pressure)
			}
			var rej *governorclient.RejectedError
			err = c.WithPermitOrFallback(ctx, dep,
				func(context.Context) error { t.Error("ran fn on a saturated dependency"); return nil },
				func(_ context.Context, r *governorclient.RejectedError) error { rej = r; return nil })
			if err != nil || rej == nil {
				t.Fatalf("WithPermitOrFallback = %v (fallback ran: %v), want the fallback", err, rej != nil)
			}
			if rej.Reason != reasonDegrade || rej.Pressure != pressureSaturated {
				t.Errorf("rejection = %+v, want DEGRADE at SATURATED (a DEGRADE is not an overload)", rej)
			}
			if st := dependency(t, c, dep); st.GetInFlight() != 1 || st.GetQueued() != 0 {
				t.Errorf("in_flight %d queued %d, want 1 and 0 (it never queued)", st.GetInFlight(), st.GetQueued())
			}
			if _, err := holder.Release(ctx, held.ID, success, 0); err != nil {
				t.Fatal(err)
			}
			var got governorv1.Pressure
			err = c.WithPermitOrFallback(ctx, dep, func(ctx context.Context) error {
				l, _ := governorclient.LeaseFromContext(ctx)
				got = l.Pressure
				return nil
			}, func(context.Context, *governorclient.RejectedError) error {
				t.Error("fallback on a free dependency")
				return nil
			})
			if err != nil || got != pressureSaturated {
				t.Errorf("free again: err=%v pressure=%v, want a grant at PRESSURE_SATURATED", err, got)
			}
		})
	}
}
