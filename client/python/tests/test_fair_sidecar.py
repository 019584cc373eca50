"""Routes and fair shares against the real governor binary.

"fair-sync" and "fair-async" have fairness by tenant_route from the config
file, with the tenant "acme" named (weight 3) so that it is always listed;
"fair-admin" gets its fair shares through the admin API.
"""
from __future__ import annotations

import grpc
import pytest

from governor_client import AsyncGovernor, Governor, InvalidRequest
from governor_client.v1 import governor_pb2 as pb


@pytest.fixture
def gov(sidecar):
    client = Governor(sidecar.addr, fail_open=False)
    yield client
    client.close()


def tenant_status(status: pb.DependencyStatus, tenant: str) -> pb.TenantStatus:
    listed = [t for t in status.tenants if t.tenant == tenant]
    assert len(listed) == 1, f"{tenant!r} listed {len(listed)} times in {status.tenants}"
    return listed[0]


def routes(tenant: pb.TenantStatus) -> dict:
    return {r.route: r.in_flight for r in tenant.routes}


def test_route_is_listed_under_its_tenant_while_held(sidecar, gov):
    before = sidecar.status("fair-sync")
    assert before.fairness.by == pb.FAIR_BY_TENANT_ROUTE
    assert dict(before.fairness.weights) == {"acme": 3}
    granted = tenant_status(before, "acme").granted_total
    with gov.permit("fair-sync", tenant="acme", route="/search"):
        acme = tenant_status(sidecar.status("fair-sync"), "acme")
        assert (acme.named, acme.weight, acme.in_flight) == (True, 3, 1)
        assert routes(acme) == {"/search": 1}
        assert acme.routes[0].granted_total == 1
    acme = tenant_status(sidecar.status("fair-sync"), "acme")
    assert acme.in_flight == 0
    assert acme.granted_total == granted + 1
    assert routes(acme) == {}, "only routes with a permit or a waiter are listed"


@pytest.mark.parametrize("use_session", [True, False], ids=["session", "unary"])
def test_route_too_long_is_invalid_argument(sidecar, use_session):
    gov = Governor(sidecar.addr, fail_open=True, use_session=use_session)
    try:
        with pytest.raises(InvalidRequest) as invalid:
            gov.acquire("fair-sync", tenant="acme", route="r" * 129)
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert invalid.value.details.startswith("route:"), invalid.value.details
        assert gov.degraded_total == 0
        # 128 bytes is the limit, not over it.
        gov.acquire("fair-sync", tenant="acme", route="r" * 128).release()
    finally:
        gov.close()
    assert tenant_status(sidecar.status("fair-sync"), "acme").in_flight == 0


def test_admin_sets_fairness_reads_it_back_and_turns_it_off(sidecar):
    assert not sidecar.status("fair-admin").HasField("fairness"), "no fair shares unless set"
    fairness = pb.Fairness(by=pb.FAIR_BY_TENANT, weights={"gold": 5, "silver": 2}, default_weight=2, max_tenants=64)
    set_ = sidecar.admin.UpdateDependency(
        pb.UpdateDependencyRequest(name="fair-admin", limits=pb.DependencyLimits(fairness=fairness)), timeout=5
    )
    assert set_.fairness == fairness
    status = sidecar.status("fair-admin")
    assert status.fairness == fairness
    # The named tenants are listed (and tracked) from the start, idle.
    assert sorted((t.tenant, t.weight, t.named, t.in_flight) for t in status.tenants) == [
        ("gold", 5, True, 0),
        ("silver", 2, True, 0),
    ]
    assert status.tenants_tracked == 2

    # Zeros take the defaults; an unset fairness keeps what is in force.
    defaults = pb.Fairness(by=pb.FAIR_BY_TENANT_ROUTE)
    sidecar.admin.UpdateDependency(
        pb.UpdateDependencyRequest(name="fair-admin", limits=pb.DependencyLimits(fairness=defaults)), timeout=5
    )
    sidecar.admin.UpdateDependency(
        pb.UpdateDependencyRequest(name="fair-admin", limits=pb.DependencyLimits(max_queue=8)), timeout=5
    )
    kept = sidecar.status("fair-admin").fairness
    assert (kept.by, dict(kept.weights), kept.default_weight, kept.max_tenants) == (pb.FAIR_BY_TENANT_ROUTE, {}, 1, 1024)

    off = sidecar.admin.UpdateDependency(
        pb.UpdateDependencyRequest(
            name="fair-admin", limits=pb.DependencyLimits(fairness=pb.Fairness(by=pb.FAIR_BY_NONE))
        ),
        timeout=5,
    )
    assert not off.HasField("fairness")
    status = sidecar.status("fair-admin")
    assert not status.HasField("fairness")
    assert (list(status.tenants), status.tenants_tracked) == ([], 0)


@pytest.mark.asyncio
async def test_async_route_is_listed_under_its_tenant_while_held(sidecar):
    agov = AsyncGovernor(sidecar.addr, fail_open=False)
    try:
        granted = tenant_status(sidecar.status("fair-async"), "acme").granted_total
        async with agov.permit("fair-async", tenant="acme", route="/search"):
            acme = tenant_status(sidecar.status("fair-async"), "acme")
            assert (acme.in_flight, routes(acme)) == (1, {"/search": 1})
        acme = tenant_status(sidecar.status("fair-async"), "acme")
        assert (acme.in_flight, acme.granted_total, routes(acme)) == (0, granted + 1, {})

        with pytest.raises(InvalidRequest) as invalid:
            await agov.acquire("fair-async", tenant="acme", route="r" * 129)
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert invalid.value.details.startswith("route:"), invalid.value.details
    finally:
        await agov.close()
