"""A lease id is a bearer credential: no repr, str, format or log line of the
clients may carry it, while the permit keeps it for Release and Renew.

Checked against the real governor binary, through a whole lifecycle
(acquire, background renewals, release) with every logger at DEBUG.
"""
from __future__ import annotations

import hashlib
import logging
import pprint

import pytest
import pytest_asyncio

from governor_client import AsyncGovernor, Governor

from helpers import async_wait_until, wait_until


def renderings(permit) -> list[str]:
    return [
        repr(permit),
        str(permit),
        f"{permit}",
        f"{permit!r}",
        "%s %r" % (permit, permit),
        pprint.pformat(permit),
        pprint.pformat({"permit": permit, "all": [permit]}),
    ]


def assert_redacted(permit, texts: list[str]) -> None:
    lease = permit.lease_id
    assert lease, "the permit must hold a real lease for the check to mean anything"
    handle = hashlib.sha256(lease.encode()).hexdigest()[:8]
    assert permit.lease_handle == handle
    assert f"lease={handle}" in repr(permit)
    leaked = [t for t in texts if lease in t]
    assert not leaked, f"lease id in output: {leaked}"


@pytest.fixture
def gov(sidecar):
    client = Governor(sidecar.addr, fail_open=False)
    yield client
    client.close()


def test_sync_permit_never_shows_its_lease_id(sidecar, gov, caplog):
    with caplog.at_level(logging.DEBUG):
        with gov.permit("renew-sync") as permit:
            logging.getLogger("app").info("holding %s (%r)", permit, permit)
            # Renewals run in the background and log at DEBUG.
            wait_until(lambda: permit.renewals >= 1, timeout=5)
            texts = renderings(permit)
            assert sidecar.in_flight("renew-sync") == 1
        texts += renderings(permit)
    assert permit.released and sidecar.in_flight("renew-sync") == 0
    logged = [r.getMessage() for r in caplog.records]
    assert any(permit.lease_handle in line for line in logged), logged
    assert_redacted(permit, texts + logged + [caplog.text])


def test_sync_release_still_uses_the_lease_id(sidecar, gov):
    permit = gov.acquire("basic-sync")
    assert "lease=" in repr(permit) and sidecar.in_flight("basic-sync") == 1
    permit.release()
    assert sidecar.in_flight("basic-sync") == 0


@pytest_asyncio.fixture
async def agov(sidecar):
    client = AsyncGovernor(sidecar.addr, fail_open=False)
    yield client
    await client.close()


@pytest.mark.asyncio
async def test_async_permit_never_shows_its_lease_id(sidecar, agov, caplog):
    with caplog.at_level(logging.DEBUG):
        async with agov.permit("renew-async") as permit:
            logging.getLogger("app").info("holding %s (%r)", permit, permit)
            await async_wait_until(lambda: permit.renewals >= 1, timeout=5)
            texts = renderings(permit)
            assert sidecar.in_flight("renew-async") == 1
        texts += renderings(permit)
    assert permit.released and sidecar.in_flight("renew-async") == 0
    logged = [r.getMessage() for r in caplog.records]
    assert any(permit.lease_handle in line for line in logged), logged
    assert_redacted(permit, texts + logged + [caplog.text])
