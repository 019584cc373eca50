// Command governor-example calls a (simulated) downstream dependency through
// the governor sidecar: it asks for a permit, does the work while the permit
// is held, releases it with the outcome, and on backpressure retries after
// the sidecar's retry_after hint with attempt set, up to -attempts times.
//
//	governor-example -addr 127.0.0.1:50051 -dependency payments -calls 3
//
// It prints one line per call and exits 0 when every call got a permit and
// succeeded, 1 otherwise.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
	"github.com/governor-sidecar/governor/client/go/governorclient"
)

func main() {
	addr := flag.String("addr", envOr("GOVERNOR_ADDR", governorclient.DefaultAddress),
		"sidecar address (host:port or unix:///path); env GOVERNOR_ADDR")
	dependency := flag.String("dependency", "payments", "downstream dependency name")
	calls := flag.Int("calls", 3, "number of downstream calls to make")
	attempts := flag.Int("attempts", 4, "tries per call, including the first")
	work := flag.Duration("work", 20*time.Millisecond, "simulated downstream latency")
	failClosed := flag.Bool("fail-closed", false, "fail the call when the sidecar is unreachable (default: call the dependency without a permit)")
	traceparent := flag.String("traceparent", "", "W3C traceparent to propagate to the sidecar (optional)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("governor-example: ")

	client, err := governorclient.Dial(*addr, governorclient.Options{
		FailClosed: *failClosed,
		OnBackgroundError: func(op string, lease *governorclient.Lease, err error) {
			if lease == nil {
				log.Printf("%s failed, proceeding without a permit: %v", op, err)
				return
			}
			log.Printf("%s of lease %s failed: %v", op, lease.ID, err)
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	ctx := context.Background()
	if *traceparent != "" {
		ctx = governorclient.WithTraceContext(ctx, *traceparent, "")
	}

	failures := 0
	for i := 1; i <= *calls; i++ {
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := callWithRetries(callCtx, client, *dependency, *attempts, *work)
		cancel()
		if err != nil {
			failures++
			fmt.Printf("call %d: failed: %v\n", i, err)
			continue
		}
		fmt.Printf("call %d: ok\n", i)
	}
	if failures > 0 {
		os.Exit(1)
	}
}

// callWithRetries makes one downstream call under a permit. A rejection is
// backpressure: wait retry_after, then try again with attempt = n so the
// sidecar can charge the retry budget.
func callWithRetries(ctx context.Context, client *governorclient.Client, dependency string, attempts int, work time.Duration) error {
	var err error
	for attempt := 0; attempt < attempts; attempt++ {
		err = client.WithPermit(ctx, dependency, func(ctx context.Context) error {
			if lease, ok := governorclient.LeaseFromContext(ctx); ok {
				fmt.Printf("  attempt %d: permit %s (ttl %s, queued %s)\n", attempt, lease.ID, lease.TTL, lease.QueueWait)
			} else {
				fmt.Printf("  attempt %d: no permit (sidecar unreachable, failing open)\n", attempt)
			}
			return callDownstream(ctx, work)
		}, governorclient.WithAttempt(uint32(attempt)), governorclient.WithPriority(governorv1.Priority_PRIORITY_NORMAL))

		rej, rejected := governorclient.AsRejected(err)
		if !rejected {
			return err
		}
		fmt.Printf("  attempt %d: rejected: %s, retry after %s\n", attempt, rej.Reason, rej.RetryAfter)
		wait := rej.RetryAfter
		if wait <= 0 {
			wait = 50 * time.Millisecond
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return err
}

// callDownstream stands in for the real call (an HTTP request, a database
// query, ...). It honours ctx like a real client would.
func callDownstream(ctx context.Context, work time.Duration) error {
	select {
	case <-time.After(work):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
