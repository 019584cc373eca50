package governorclient_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log"
	"strings"
	"testing"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
	"github.com/governor-sidecar/governor/client/go/governorclient"
)

// A lease id is a bearer credential: no fmt verb, String, GoString, log line
// or JSON of a Lease or its ID may carry it, while Release still takes it.
func TestLeaseIDNeverPrints(t *testing.T) {
	c, _ := newClient(t, governorclient.Options{})
	ctx := testCtx(t)
	lease, err := c.Acquire(ctx, "go-lease-redaction")
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	raw := string(lease.ID)
	if len(raw) <= 8 {
		t.Fatalf("the sidecar granted a lease id of %d bytes; the check needs a real one", len(raw))
	}
	sum := sha256.Sum256([]byte(raw))
	handle := hex.EncodeToString(sum[:4])
	if lease.ID.Handle() != handle {
		t.Fatalf("Handle() = %q, want %q", lease.ID.Handle(), handle)
	}

	var out []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d", "%10.3s"} {
		out = append(out,
			fmt.Sprintf(verb, lease), fmt.Sprintf(verb, *lease), fmt.Sprintf(verb, lease.ID),
			fmt.Sprintf(verb, []*governorclient.Lease{lease}),
			fmt.Sprintf(verb, struct{ L governorclient.Lease }{*lease}),
			fmt.Sprintf(verb, map[string]governorclient.LeaseID{"id": lease.ID}))
	}
	out = append(out, lease.String(), lease.GoString(), lease.ID.String(), lease.ID.GoString(), fmt.Sprint(lease, lease.ID))
	var logged bytes.Buffer
	logger := log.New(&logged, "", 0)
	logger.Printf("holding %v (%s)", lease, lease.ID)
	logger.Println(lease, *lease, lease.ID)
	out = append(out, logged.String())
	// log/slog's text and JSON handlers write what MarshalText returns.
	text, err := lease.ID.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	js, err := json.Marshal(map[string]interface{}{"lease": lease, "id": lease.ID})
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, string(text), string(js))

	for _, s := range out {
		if strings.Contains(s, raw) {
			t.Errorf("lease id printed in %q", s)
		}
	}
	for _, s := range []string{fmt.Sprint(lease), fmt.Sprintf("%+v", lease), fmt.Sprintf("%#v", lease), string(text), string(js)} {
		if !strings.Contains(s, handle) {
			t.Errorf("%q does not name the lease by its handle %s", s, handle)
		}
	}

	if st := dependency(t, c, "go-lease-redaction"); st.InFlight != 1 {
		t.Fatalf("while held: in_flight=%d, want 1", st.InFlight)
	}
	released, err := c.Release(ctx, lease.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0)
	if err != nil || !released {
		t.Fatalf("Release with the id = %v, %v; want true, nil", released, err)
	}
	if st := dependency(t, c, "go-lease-redaction"); st.InFlight != 0 {
		t.Fatalf("after release: in_flight=%d, want 0", st.InFlight)
	}
}

func TestEmptyLeaseIDHasNoHandle(t *testing.T) {
	var id governorclient.LeaseID
	if id.Handle() != "" || fmt.Sprint(id) != "" {
		t.Fatalf("empty id: handle %q, printed %q", id.Handle(), fmt.Sprint(id))
	}
}
