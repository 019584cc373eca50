package governorclient

// The Session stream (governor.v1.Governor/Session): one per Client, opened
// by the first Acquire. Acquire, Release and Renew go over it as messages
// matched by id; each Acquire waits on its own channel, so one that queues
// never holds up a later one. Leases granted on the stream belong to it: when
// the stream ends (the process dies, the connection drops, Close), the
// sidecar frees them at once instead of after their TTL.
//
// Policies (the same in the Rust, Python and Node clients):
//
//   - UNIMPLEMENTED (an older sidecar, a proxy without streams): remembered;
//     the unary RPCs are used, and the stream is tried again after
//     SessionUnaryRetry. Acquires waiting on that stream were never read:
//     they are sent again as unary calls.
//   - A stream the sidecar ends cleanly (status OK: it drains) ends only when
//     it holds and waits for nothing, so the acquires still waiting on it
//     were never read: they are sent again as unary calls too.
//   - A broken stream: the acquires waiting on it fail with an UNAVAILABLE
//     status (the sidecar withdrew them; fail open applies); the leases
//     granted on it are lost (Release returns ErrPermitLost). The next
//     stream is opened after a jittered, capped backoff (SessionBackoff);
//     acquires made meanwhile use the unary RPCs.
//   - A caller whose context ends while its acquire waits: the acquire stays
//     queued in the sidecar (a stream has no cancel message); if it is
//     granted later, the client releases it at once (OUTCOME_CANCELLED, id 0,
//     no answer wanted).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"sync"
	"time"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// SessionUnaryRetry is how long a Client uses the unary RPCs after the
// sidecar answered the Session stream with UNIMPLEMENTED.
const SessionUnaryRetry = 60 * time.Second

// SessionBackoff is the delay before the n-th consecutive reopening of a
// broken stream: 50 ms doubling up to 5 s, with full jitter.
func SessionBackoff(n int) time.Duration {
	d := 50 * time.Millisecond
	for i := 1; i < n && d < 5*time.Second; i++ {
		d *= 2
	}
	if d > 5*time.Second {
		d = 5 * time.Second
	}
	return time.Duration(rand.Int63n(int64(d) + 1))
}

// ErrPermitLost is returned (wrapped, match it with errors.Is) by Release and
// WithPermit for a lease whose session ended before it was released: the
// sidecar freed it then (release outcome session_closed), so the downstream
// call ran without a slot. The lease is not released a second time.
var ErrPermitLost = errors.New("governor: permit lost: its session to the sidecar ended")

// errRetryUnary: the stream ended without having read the acquire.
var errRetryUnary = errors.New("governor: retry over the unary RPC")

type session struct {
	c          *Client
	mu         sync.Mutex
	cur        *stream
	breaks     int
	notBefore  time.Time
	unaryUntil time.Time
	closed     bool
}

// stream returns the open stream, opening one if need be, or nil: use the
// unary RPCs.
func (s *session) stream() *stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	if s.cur != nil && !s.cur.isDone() {
		return s.cur
	}
	now := time.Now()
	if now.Before(s.unaryUntil) || now.Before(s.notBefore) {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	call, err := s.c.gov.Session(ctx)
	if err != nil {
		cancel()
		s.brokeLocked(now)
		return nil
	}
	st := &stream{
		s:       s,
		rpc:     call,
		cancel:  cancel,
		pending: map[uint64]*waiter{},
		done:    make(chan struct{}),
	}
	s.cur = st
	go st.read()
	return st
}

func (s *session) brokeLocked(now time.Time) {
	s.breaks++
	s.notBefore = now.Add(SessionBackoff(s.breaks))
}

func (s *session) ended(st *stream, code codes.Code) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case code == codes.Unimplemented:
		s.unaryUntil = time.Now().Add(SessionUnaryRetry)
	case !s.closed:
		s.brokeLocked(time.Now())
	}
	if s.cur == st {
		s.cur = nil
	}
}

func (s *session) close() {
	s.mu.Lock()
	s.closed = true
	st := s.cur
	s.cur = nil
	s.mu.Unlock()
	if st != nil {
		st.close()
	}
}

type waiter struct {
	ch        chan *governorv1.SessionResponse // buffered 1
	abandoned bool
}

type stream struct {
	s      *session
	rpc    governorv1.Governor_SessionClient
	cancel context.CancelFunc
	sendMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*waiter
	done    chan struct{}
	// Set before done is closed.
	endErr  error
	retry   bool // the pending acquires were never read: send them unary
	answers bool
}

func (st *stream) isDone() bool {
	select {
	case <-st.done:
		return true
	default:
		return false
	}
}

func (st *stream) register() (uint64, *waiter) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.nextID++
	w := &waiter{ch: make(chan *governorv1.SessionResponse, 1)}
	st.pending[st.nextID] = w
	return st.nextID, w
}

func (st *stream) send(req *governorv1.SessionRequest) error {
	st.sendMu.Lock()
	defer st.sendMu.Unlock()
	return st.rpc.Send(req)
}

func (st *stream) read() {
	for {
		resp, err := st.rpc.Recv()
		if err != nil {
			st.end(err)
			return
		}
		st.mu.Lock()
		first := !st.answers
		st.answers = true
		w := st.pending[resp.GetId()]
		delete(st.pending, resp.GetId())
		abandoned := w != nil && w.abandoned
		st.mu.Unlock()
		if first {
			st.s.mu.Lock()
			st.s.breaks = 0
			st.s.mu.Unlock()
		}
		switch {
		case w == nil:
		case abandoned:
			st.releaseLate(resp)
		default:
			w.ch <- resp
		}
	}
}

func (st *stream) end(err error) {
	code := status.Code(err)
	clean := errors.Is(err, io.EOF)
	st.mu.Lock()
	st.retry = clean || code == codes.Unimplemented
	switch {
	case clean:
		st.endErr = errors.New("the sidecar ended the stream")
	case code == codes.Unimplemented:
		st.endErr = errors.New("the sidecar has no Session RPC")
	default:
		st.endErr = err
	}
	st.pending = map[uint64]*waiter{}
	st.mu.Unlock()
	st.cancel()
	st.s.ended(st, code)
	close(st.done)
}

// releaseLate gives back a grant nobody waits for any more.
func (st *stream) releaseLate(resp *governorv1.SessionResponse) {
	a := resp.GetAcquire()
	if !a.GetGranted() || a.GetLeaseId() == "" {
		return
	}
	_ = st.send(&governorv1.SessionRequest{Op: &governorv1.SessionRequest_Release{
		Release: &governorv1.ReleaseRequest{LeaseId: a.GetLeaseId(), Outcome: governorv1.Outcome_OUTCOME_CANCELLED},
	}})
}

// call sends one message with an id and waits for its answer, the stream's
// end (errStreamEnded wrapping why) or ctx.
func (st *stream) call(ctx context.Context, build func(id uint64) *governorv1.SessionRequest) (*governorv1.SessionResponse, error) {
	id, w := st.register()
	if st.isDone() {
		return nil, st.ended()
	}
	if err := st.send(build(id)); err != nil {
		<-st.done // a failed Send means the stream ended; Recv reports how
		return nil, st.ended()
	}
	select {
	case resp := <-w.ch:
		return resp, nil
	case <-st.done:
		select {
		case resp := <-w.ch:
			return resp, nil
		default:
		}
		return nil, st.ended()
	case <-ctx.Done():
		st.mu.Lock()
		_, waiting := st.pending[id]
		w.abandoned = true
		st.mu.Unlock()
		if !waiting {
			// Taken by the reader before it saw abandoned (it is about to
			// hand it over) or dropped by the stream's end (nothing to do).
			select {
			case resp := <-w.ch:
				st.releaseLate(resp)
			case <-st.done:
			}
		}
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

type streamEnded struct {
	why   error
	retry bool
}

func (e *streamEnded) Error() string { return fmt.Sprintf("the session ended: %v", e.why) }

func (st *stream) ended() error {
	<-st.done
	st.mu.Lock()
	defer st.mu.Unlock()
	return &streamEnded{why: st.endErr, retry: st.retry}
}

// acquire runs one Acquire over the stream. errRetryUnary means: send it
// unary.
func (st *stream) acquire(ctx context.Context, req *governorv1.AcquireRequest) (*governorv1.AcquireResponse, error) {
	resp, err := st.call(ctx, func(id uint64) *governorv1.SessionRequest {
		return &governorv1.SessionRequest{Id: id, Op: &governorv1.SessionRequest_Acquire{Acquire: req}}
	})
	var ended *streamEnded
	if errors.As(err, &ended) {
		if ended.retry {
			return nil, errRetryUnary
		}
		code := status.Code(ended.why)
		if !IsUnavailable(ended.why) {
			code = codes.Unavailable
		}
		return nil, status.Errorf(code,
			"governor: the session to the sidecar ended (%v); the sidecar withdrew the acquire of %q", ended.why, req.GetDependency())
	}
	if err != nil {
		return nil, err
	}
	if e := resp.GetError(); e != nil {
		return nil, sessionError("acquire", e)
	}
	if a := resp.GetAcquire(); a != nil {
		return a, nil
	}
	return nil, status.Errorf(codes.Internal, "governor: the sidecar answered an acquire with %T", resp.GetResult())
}

// sessionError is a per-message error as the status the unary call would
// have returned: the sidecar names the field from the message
// ("acquire.dependency: ..."); the status keeps the unary form.
func sessionError(op string, e *governorv1.SessionError) error {
	msg := e.GetMessage()
	if len(msg) > len(op)+1 && msg[:len(op)+1] == op+"." {
		msg = msg[len(op)+1:]
	}
	return status.Error(codes.Code(e.GetCode()), msg)
}

func (st *stream) close() {
	st.sendMu.Lock()
	_ = st.rpc.CloseSend()
	st.sendMu.Unlock()
	select {
	case <-st.done:
	case <-time.After(2 * time.Second):
		st.cancel()
		<-st.done
	}
}

// carriesTrace reports whether ctx's outgoing metadata carry a W3C trace
// context: a stream's metadata are sent once, so such an Acquire goes unary
// and the sidecar's span joins the caller's trace.
func carriesTrace(ctx context.Context) bool {
	md, ok := metadata.FromOutgoingContext(ctx)
	return ok && len(md.Get("traceparent")) > 0
}

// lostError is what Release returns for a lease of an ended session.
func lostError(lease *Lease, why error) error {
	return fmt.Errorf("%w (lease for %q: %v)", ErrPermitLost, lease.Dependency, why)
}

// releaseOnSession releases lease over its stream, waiting for the answer.
func (c *Client) releaseOnSession(ctx context.Context, lease *Lease, req *governorv1.ReleaseRequest) (bool, error) {
	st := lease.stream
	if st.isDone() {
		return false, lostError(lease, st.ended().(*streamEnded).why)
	}
	ctx, cancel := context.WithTimeout(ctx, c.callTimeout())
	defer cancel()
	resp, err := st.call(ctx, func(id uint64) *governorv1.SessionRequest {
		return &governorv1.SessionRequest{Id: id, Op: &governorv1.SessionRequest_Release{Release: req}}
	})
	var ended *streamEnded
	if errors.As(err, &ended) {
		return false, lostError(lease, ended.why)
	}
	if err != nil {
		return false, err
	}
	if e := resp.GetError(); e != nil {
		return false, sessionError("release", e)
	}
	return resp.GetRelease().GetReleased(), nil
}

func (c *Client) renewOnSession(ctx context.Context, lease *Lease, timeout time.Duration) (time.Duration, bool, error) {
	st := lease.stream
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := st.call(ctx, func(id uint64) *governorv1.SessionRequest {
		return &governorv1.SessionRequest{Id: id, Op: &governorv1.SessionRequest_Renew{
			Renew: &governorv1.RenewRequest{LeaseId: string(lease.ID)},
		}}
	})
	var ended *streamEnded
	if errors.As(err, &ended) {
		return 0, false, lostError(lease, ended.why)
	}
	if err != nil {
		return 0, false, err
	}
	if e := resp.GetError(); e != nil {
		return 0, false, sessionError("renew", e)
	}
	r := resp.GetRenew()
	return r.GetLeaseTtl().AsDuration(), r.GetRenewed(), nil
}
