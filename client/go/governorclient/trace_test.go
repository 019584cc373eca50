package governorclient_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
	"github.com/governor-sidecar/governor/client/go/governorclient"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"
)

// recordingGovernor is an in-process Governor service that grants every
// Acquire with a short TTL and records the metadata and outcome of each
// call. The sidecar's own trace export is tested elsewhere; this checks what
// the client puts on the wire.
type recordingGovernor struct {
	governorv1.UnimplementedGovernorServer
	mu       sync.Mutex
	calls    map[string][]metadata.MD
	outcomes []governorv1.Outcome
	renewed  chan struct{} // closed at the first Renew
	once     sync.Once
}

func (r *recordingGovernor) record(ctx context.Context, method string) {
	md, _ := metadata.FromIncomingContext(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[method] = append(r.calls[method], md)
}

func (r *recordingGovernor) Acquire(ctx context.Context, _ *governorv1.AcquireRequest) (*governorv1.AcquireResponse, error) {
	r.record(ctx, "Acquire")
	return &governorv1.AcquireResponse{Granted: true, LeaseId: "lease-1", LeaseTtl: durationpb.New(60 * time.Millisecond)}, nil
}

func (r *recordingGovernor) Renew(ctx context.Context, _ *governorv1.RenewRequest) (*governorv1.RenewResponse, error) {
	r.record(ctx, "Renew")
	r.once.Do(func() { close(r.renewed) })
	return &governorv1.RenewResponse{Renewed: true, LeaseTtl: durationpb.New(60 * time.Millisecond)}, nil
}

func (r *recordingGovernor) Release(ctx context.Context, req *governorv1.ReleaseRequest) (*governorv1.ReleaseResponse, error) {
	r.record(ctx, "Release")
	r.mu.Lock()
	r.outcomes = append(r.outcomes, req.GetOutcome())
	r.mu.Unlock()
	return &governorv1.ReleaseResponse{Released: true}, nil
}

// Trace context reaches Acquire, Renew and Release, including the Release of
// a caller whose context was cancelled meanwhile, which reports CANCELLED.
func TestTraceContextOnEveryCall(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	fake := &recordingGovernor{calls: map[string][]metadata.MD{}, renewed: make(chan struct{})}
	governorv1.RegisterGovernorServer(srv, fake)
	go srv.Serve(lis)
	defer srv.Stop()

	c, err := governorclient.Dial(lis.Addr().String(), governorclient.Options{FailClosed: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	const tracestate = "vendor=go-tests"
	ctx, cancel := context.WithCancel(governorclient.WithTraceContext(testCtx(t), traceparent, tracestate))
	err = c.WithPermit(ctx, "traced", func(ctx context.Context) error {
		select {
		case <-fake.renewed:
		case <-time.After(5 * time.Second):
			return errors.New("no Renew within 5s of a 60ms lease")
		}
		cancel()
		return ctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("WithPermit = %v, want context.Canceled", err)
	}

	fake.mu.Lock()
	defer fake.mu.Unlock()
	for _, method := range []string{"Acquire", "Renew", "Release"} {
		mds := fake.calls[method]
		if len(mds) == 0 {
			t.Errorf("no %s call recorded", method)
			continue
		}
		for _, md := range mds {
			if got := md.Get("traceparent"); len(got) != 1 || got[0] != traceparent {
				t.Errorf("%s traceparent = %v, want [%s]", method, got, traceparent)
			}
			if got := md.Get("tracestate"); len(got) != 1 || got[0] != tracestate {
				t.Errorf("%s tracestate = %v, want [%s]", method, got, tracestate)
			}
		}
	}
	if len(fake.outcomes) != 1 || fake.outcomes[0] != governorv1.Outcome_OUTCOME_CANCELLED {
		t.Errorf("release outcomes = %v, want [OUTCOME_CANCELLED]", fake.outcomes)
	}
}
