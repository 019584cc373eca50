package governorclient_test

import (
	"context"
	"sort"
	"strings"
	"testing"

	governorv1 "github.com/governor-sidecar/governor/client/go/gen/governor/v1"
	"github.com/governor-sidecar/governor/client/go/governorclient"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// tenantOf is the one entry of tenant in a status's tenants.
func tenantOf(t *testing.T, st *governorv1.DependencyStatus, tenant string) *governorv1.TenantStatus {
	t.Helper()
	var found []*governorv1.TenantStatus
	for _, ts := range st.GetTenants() {
		if ts.GetTenant() == tenant {
			found = append(found, ts)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%q listed %d times in %v", tenant, len(found), st.GetTenants())
	}
	return found[0]
}

// routesOf maps each listed route of a tenant to its in_flight.
func routesOf(ts *governorv1.TenantStatus) map[string]uint32 {
	routes := map[string]uint32{}
	for _, r := range ts.GetRoutes() {
		routes[r.GetRoute()] = r.GetInFlight()
	}
	return routes
}

func updateFairness(t *testing.T, c *governorclient.Client, name string, limits *governorv1.DependencyLimits) *governorv1.DependencyStatus {
	t.Helper()
	st, err := c.Admin().UpdateDependency(testCtx(t), &governorv1.UpdateDependencyRequest{Name: name, Limits: limits})
	if err != nil {
		t.Fatalf("UpdateDependency(%s): %v", name, err)
	}
	return st
}

// go-fair has fairness by tenant_route from the config file, acme named
// (weight 3) so that it is listed while idle too.
func TestRouteListedUnderTenantWhileHeld(t *testing.T) {
	c, _ := newClient(t, governorclient.Options{})
	ctx := testCtx(t)
	const dep = "go-fair"
	before := dependency(t, c, dep)
	if by := before.GetFairness().GetBy(); by != governorv1.FairBy_FAIR_BY_TENANT_ROUTE {
		t.Fatalf("fairness.by = %s, want FAIR_BY_TENANT_ROUTE from the config", by)
	}
	granted := tenantOf(t, before, "acme").GetGrantedTotal()

	err := c.WithPermit(ctx, dep, func(ctx context.Context) error {
		acme := tenantOf(t, dependency(t, c, dep), "acme")
		if !acme.GetNamed() || acme.GetWeight() != 3 || acme.GetInFlight() != 1 {
			t.Errorf("while held: named=%v weight=%d in_flight=%d, want true 3 1", acme.GetNamed(), acme.GetWeight(), acme.GetInFlight())
		}
		if got := routesOf(acme); len(got) != 1 || got["/search"] != 1 {
			t.Errorf("while held: routes %v, want /search with 1 in flight", got)
		}
		return nil
	}, governorclient.WithTenant("acme"), governorclient.WithRoute("/search"))
	if err != nil {
		t.Fatalf("WithPermit: %v", err)
	}
	acme := tenantOf(t, dependency(t, c, dep), "acme")
	if acme.GetInFlight() != 0 || acme.GetGrantedTotal() != granted+1 || len(acme.GetRoutes()) != 0 {
		t.Fatalf("after release: in_flight=%d granted_total=%d routes=%v, want 0, %d and none (only routes with a permit or a waiter)",
			acme.GetInFlight(), acme.GetGrantedTotal(), routesOf(acme), granted+1)
	}

	// The same through Acquire and Release.
	lease, err := c.Acquire(ctx, dep, governorclient.WithTenant("acme"), governorclient.WithRoute("/orders"))
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if got := routesOf(tenantOf(t, dependency(t, c, dep), "acme")); len(got) != 1 || got["/orders"] != 1 {
		t.Errorf("while held: routes %v, want /orders with 1 in flight", got)
	}
	if released, err := c.Release(ctx, lease.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0); err != nil || !released {
		t.Fatalf("Release = %v, %v; want true, nil", released, err)
	}
	if acme := tenantOf(t, dependency(t, c, dep), "acme"); acme.GetInFlight() != 0 || len(acme.GetRoutes()) != 0 {
		t.Fatalf("after release: in_flight=%d routes=%v, want 0 and none", acme.GetInFlight(), routesOf(acme))
	}
}

func TestRouteTooLongIsInvalidArgument(t *testing.T) {
	for _, tc := range []struct {
		name    string
		session bool
	}{{"session", true}, {"unary", false}} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := newClient(t, governorclient.Options{DisableSession: !tc.session})
			ctx := testCtx(t)
			ran := false
			err := c.WithPermit(ctx, "go-fair", func(context.Context) error {
				ran = true
				return nil
			}, governorclient.WithTenant("acme"), governorclient.WithRoute(strings.Repeat("r", 129)))
			st, _ := status.FromError(err)
			if st.Code() != codes.InvalidArgument || !strings.HasPrefix(st.Message(), "route:") {
				t.Fatalf("WithPermit with a 129-byte route = %v, want INVALID_ARGUMENT starting \"route:\"", err)
			}
			if ran || c.Degraded() != 0 {
				t.Fatalf("ran=%v degraded=%d: an INVALID_ARGUMENT is never failed open", ran, c.Degraded())
			}
			// 128 bytes is the limit, not over it.
			lease, err := c.Acquire(ctx, "go-fair", governorclient.WithTenant("acme"), governorclient.WithRoute(strings.Repeat("r", 128)))
			if err != nil {
				t.Fatalf("Acquire with a 128-byte route: %v", err)
			}
			if lease.OnSession() != tc.session {
				t.Errorf("OnSession = %v, want %v", lease.OnSession(), tc.session)
			}
			if _, err := c.Release(ctx, lease.ID, governorv1.Outcome_OUTCOME_SUCCESS, 0); err != nil {
				t.Fatalf("Release: %v", err)
			}
		})
	}
}

func TestAdminSetsFairnessAndTurnsItOff(t *testing.T) {
	c, _ := newClient(t, governorclient.Options{})
	const dep = "go-fair-admin"
	if f := dependency(t, c, dep).GetFairness(); f != nil {
		t.Fatalf("fairness = %v before any was set, want none", f)
	}
	fairness := &governorv1.Fairness{
		By:            governorv1.FairBy_FAIR_BY_TENANT,
		Weights:       map[string]uint32{"gold": 5, "silver": 2},
		DefaultWeight: 2,
		MaxTenants:    64,
	}
	if set := updateFairness(t, c, dep, &governorv1.DependencyLimits{Fairness: fairness}); !proto.Equal(set.GetFairness(), fairness) {
		t.Fatalf("UpdateDependency answered fairness %v, want %v", set.GetFairness(), fairness)
	}
	st := dependency(t, c, dep)
	if !proto.Equal(st.GetFairness(), fairness) {
		t.Fatalf("read back fairness %v, want %v", st.GetFairness(), fairness)
	}
	var named []string
	for _, ts := range st.GetTenants() {
		if ts.GetNamed() && ts.GetInFlight() == 0 {
			named = append(named, ts.GetTenant())
		}
		if w := fairness.Weights[ts.GetTenant()]; w != ts.GetWeight() {
			t.Errorf("tenant %q weight %d, want %d", ts.GetTenant(), ts.GetWeight(), w)
		}
	}
	sort.Strings(named)
	if strings.Join(named, ",") != "gold,silver" || st.GetTenantsTracked() != 2 {
		t.Fatalf("idle named tenants %v, tracked %d; want gold,silver and 2", named, st.GetTenantsTracked())
	}

	// Zeros take the defaults; limits without fairness keep it.
	updateFairness(t, c, dep, &governorv1.DependencyLimits{Fairness: &governorv1.Fairness{By: governorv1.FairBy_FAIR_BY_TENANT_ROUTE}})
	maxQueue := uint32(8)
	kept := updateFairness(t, c, dep, &governorv1.DependencyLimits{MaxQueue: &maxQueue}).GetFairness()
	want := &governorv1.Fairness{By: governorv1.FairBy_FAIR_BY_TENANT_ROUTE, DefaultWeight: 1, MaxTenants: 1024}
	if !proto.Equal(kept, want) {
		t.Fatalf("fairness after an update without it = %v, want %v", kept, want)
	}

	off := updateFairness(t, c, dep, &governorv1.DependencyLimits{Fairness: &governorv1.Fairness{By: governorv1.FairBy_FAIR_BY_NONE}})
	if off.GetFairness() != nil || len(off.GetTenants()) != 0 || off.GetTenantsTracked() != 0 {
		t.Fatalf("by NONE answered fairness=%v tenants=%v tracked=%d, want none", off.GetFairness(), off.GetTenants(), off.GetTenantsTracked())
	}
	if f := dependency(t, c, dep).GetFairness(); f != nil {
		t.Fatalf("read back fairness %v after by NONE, want none", f)
	}
}
