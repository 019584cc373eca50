package governorclient

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
)

// LeaseID is the sidecar's id of a lease. It is a bearer credential: whoever
// has it can release or renew the lease. So it never prints: every fmt verb
// (%v, %+v, %#v, %s, %q, %x), String, GoString and MarshalText give its
// Handle instead. That covers log.Printf, fmt, encoding/json and
// log/slog, whose text and JSON handlers write a value's MarshalText. Pass
// it to Release and Renew as is; string(id) is the id itself, for callers
// that must hand it on (never to a log).
type LeaseID string

// Handle is the first 8 hex digits of the id's SHA-256: it tells leases
// apart in logs without revealing them. Empty for an empty id.
func (id LeaseID) Handle() string {
	if id == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:4])
}

// String returns the Handle.
func (id LeaseID) String() string { return id.Handle() }

// GoString returns the Handle, for %#v.
func (id LeaseID) GoString() string {
	return "governorclient.LeaseID(" + strconv.Quote(id.Handle()) + ")"
}

// Format prints the Handle whatever the verb and flags, so no verb (%x, %d)
// reaches the id's bytes.
func (id LeaseID) Format(f fmt.State, verb rune) {
	switch {
	case verb == 'v' && f.Flag('#'):
		_, _ = f.Write([]byte(id.GoString()))
	case verb == 'q':
		_, _ = f.Write([]byte(strconv.Quote(id.Handle())))
	default:
		_, _ = f.Write([]byte(id.Handle()))
	}
}

// MarshalText returns the Handle: what log/slog's handlers and
// encoding/json write for a LeaseID.
func (id LeaseID) MarshalText() ([]byte, error) { return []byte(id.Handle()), nil }

// String names the lease by its Handle.
func (l Lease) String() string {
	return fmt.Sprintf("Lease{%s %s ttl=%s}", l.Dependency, l.ID.Handle(), l.TTL)
}

// GoString names the lease by its Handle, for %#v.
func (l Lease) GoString() string {
	return fmt.Sprintf("governorclient.Lease{ID:%#v, Dependency:%q, TTL:%s, QueueWait:%s}",
		l.ID, l.Dependency, l.TTL, l.QueueWait)
}
