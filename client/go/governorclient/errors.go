package governorclient

import (
	"context"
	"errors"
	"fmt"
	"time"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrRejected matches every *RejectedError with errors.Is.
var ErrRejected = errors.New("governor: permit rejected")

// ErrDegrade matches, with errors.Is, a *RejectedError of reason
// REJECT_REASON_DEGRADE: a degradable request (WithDegradable) that would
// have had to wait. Serve the cheaper answer; WithPermitOrFallback does.
var ErrDegrade = errors.New("governor: degrade")

// RejectedError is returned when the sidecar answered granted=false. It is
// backpressure, not a failure of the sidecar: do not call the dependency,
// and retry (with WithAttempt(n)) no sooner than RetryAfter, or give up.
type RejectedError struct {
	Dependency string
	Reason     governorv1.RejectReason
	// RetryAfter is the sidecar's estimate of when a retry could succeed.
	RetryAfter time.Duration
	// QueueWait is how long the request waited in the queue before rejection.
	QueueWait time.Duration
	// The dependency's state right after the decision.
	Limit, InFlight, Queued uint32
	// Pressure is the dependency's load right after the decision
	// (PRESSURE_UNSPECIFIED from a sidecar that predates the field).
	Pressure governorv1.Pressure
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("governor: permit for %q rejected: %s (retry after %s, in_flight %d/%d, queued %d, %s)",
		e.Dependency, e.Reason, e.RetryAfter, e.InFlight, e.Limit, e.Queued, e.Pressure)
}

// Is makes errors.Is(err, ErrRejected) true for any rejection, and
// errors.Is(err, ErrDegrade) true for a DEGRADE one.
func (e *RejectedError) Is(target error) bool {
	return target == ErrRejected || (target == ErrDegrade && e.Reason == governorv1.RejectReason_REJECT_REASON_DEGRADE)
}

// AsRejected reports whether err is (or wraps) a *RejectedError.
func AsRejected(err error) (*RejectedError, bool) {
	var rej *RejectedError
	if errors.As(err, &rej) {
		return rej, true
	}
	return nil, false
}

// grpcCode extracts the gRPC status code of err, looking through wrapping.
// It returns codes.OK for nil and codes.Unknown for non-gRPC errors.
func grpcCode(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Code()
	}
	return codes.Unknown
}

// IsUnavailable reports whether err means the sidecar gave no answer: gRPC
// UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, UNKNOWN, INTERNAL or DATA_LOSS
// (down, frozen, a broken connection, a crash mid-call). These, and only
// these, are what WithPermit fails open on unless Options.FailClosed is set;
// every other code (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED for the
// dependency cap, UNIMPLEMENTED, ...) is an answer: a bug or a configuration
// error, never bypassed. An error that is not a gRPC status (nil included) is
// not unavailable.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return false
	}
	switch se.GRPCStatus().Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Unknown, codes.Internal, codes.DataLoss:
		return true
	}
	return false
}

// OutcomeFor maps the error of a downstream call to the Outcome reported on
// Release: nil is SUCCESS, a deadline (context.DeadlineExceeded or gRPC
// DEADLINE_EXCEEDED) is TIMEOUT, a cancellation (context.Canceled or gRPC
// CANCELLED) is CANCELLED, anything else is FAILURE.
func OutcomeFor(err error) governorv1.Outcome {
	switch {
	case err == nil:
		return governorv1.Outcome_OUTCOME_SUCCESS
	case errors.Is(err, context.DeadlineExceeded) || grpcCode(err) == codes.DeadlineExceeded:
		return governorv1.Outcome_OUTCOME_TIMEOUT
	case errors.Is(err, context.Canceled) || grpcCode(err) == codes.Canceled:
		return governorv1.Outcome_OUTCOME_CANCELLED
	default:
		return governorv1.Outcome_OUTCOME_FAILURE
	}
}
