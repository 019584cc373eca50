"""The sync client against the real governor binary."""
from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

import governor_client
from governor_client import (
    Governor,
    GovernorError,
    GovernorUnavailable,
    InvalidRequest,
    Outcome,
    Priority,
    RejectReason,
    Rejected,
)

from helpers import wait_until

PKG_SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def gov(sidecar):
    client = Governor(sidecar.addr, fail_open=False)
    yield client
    client.close()


def test_permit_is_held_in_block_and_released_after(sidecar, gov):
    before = sidecar.status("basic-sync")
    with gov.permit("basic-sync", priority=Priority.CRITICAL, tenant="checkout") as permit:
        assert not permit.degraded
        assert permit.lease_id
        assert permit.lease_ttl == pytest.approx(30.0, abs=0.01)
        assert sidecar.in_flight("basic-sync") == 1
    assert permit.released
    assert permit.outcome == Outcome.SUCCESS
    assert permit.latency is not None and permit.latency >= 0
    after = sidecar.status("basic-sync")
    assert after.in_flight == 0
    assert after.granted_total == before.granted_total + 1


def test_slot_returns_after_block_raises(sidecar, gov):
    with pytest.raises(ValueError, match="downstream broke"):
        with gov.permit("solo-sync") as permit:
            assert sidecar.in_flight("solo-sync") == 1
            raise ValueError("downstream broke")
    assert permit.outcome == Outcome.FAILURE
    assert sidecar.in_flight("solo-sync") == 0
    # max_concurrency=1, max_queue=0: a second try-acquire only succeeds if the slot came back.
    with gov.permit("solo-sync", max_wait=0) as again:
        assert again.lease_id and again.lease_id != permit.lease_id


def test_rejection_queue_full_is_typed(sidecar, gov):
    with gov.permit("full-sync"):
        with pytest.raises(Rejected) as info:
            gov.acquire("full-sync")
    rej = info.value
    assert isinstance(rej, GovernorError)
    assert not isinstance(rej, GovernorUnavailable)
    assert rej.reason is RejectReason.QUEUE_FULL
    assert rej.dependency == "full-sync"
    assert isinstance(rej.retry_after, float) and rej.retry_after >= 0
    assert rej.limit == 1
    assert rej.in_flight == 1
    assert rej.queued == 0
    assert sidecar.in_flight("full-sync") == 0


def test_rejection_queue_timeout(sidecar, gov):
    with gov.permit("qtimeout-sync"):
        start = time.monotonic()
        with pytest.raises(Rejected) as info:
            gov.acquire("qtimeout-sync", max_wait=0.2)
        elapsed = time.monotonic() - start
    assert info.value.reason is RejectReason.QUEUE_TIMEOUT
    assert elapsed >= 0.15
    assert info.value.queue_wait >= 0.15
    assert elapsed < 3.0, "the request max_wait must shorten the configured 5s"


def test_renewal_keeps_permit_alive_past_ttl(sidecar, gov):
    before = sidecar.status("renew-sync").expired_total
    permit = gov.acquire("renew-sync")
    assert permit.lease_ttl == pytest.approx(0.6, abs=0.01)
    # Hold for 3 TTLs: without renewal the lease would expire (see the next test).
    time.sleep(1.8)
    assert sidecar.in_flight("renew-sync") == 1
    assert permit.renewals >= 4
    assert not permit.lease_lost
    assert permit.release() is True
    status = sidecar.status("renew-sync")
    assert status.in_flight == 0
    assert status.expired_total == before
    # Renewal stops at release: no further Renew turns the lease back on.
    renewals = permit.renewals
    time.sleep(0.5)  # more than two renewal periods
    assert permit.renewals == renewals


def test_without_renewal_the_lease_expires(sidecar):
    gov = Governor(sidecar.addr, fail_open=False, auto_renew=False)
    try:
        before = sidecar.status("norenew-sync").expired_total
        permit = gov.acquire("norenew-sync")
        wait_until(lambda: sidecar.status("norenew-sync").expired_total > before, timeout=5, what="lease expiry")
        assert sidecar.in_flight("norenew-sync") == 0
        assert permit.release() is False
    finally:
        gov.close()


def _killed_child_gives_back(sidecar, use_session: bool) -> None:
    before = sidecar.status("killed-client").expired_total
    script = (
        "import sys, time, governor_client\n"
        "gov = governor_client.Governor(sys.argv[1], fail_open=False, use_session=sys.argv[2] == '1')\n"
        "p = gov.acquire('killed-client')\n"
        "print('acquired', p.on_session, flush=True)\n"
        "time.sleep(600)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PKG_SRC), os.environ.get("PYTHONPATH")])))
    child = subprocess.Popen(
        [sys.executable, "-c", script, sidecar.addr, "1" if use_session else "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = child.stdout.readline()
        assert line.split() == ["acquired", str(use_session)], f"child did not acquire: {line!r}"
        assert sidecar.in_flight("killed-client") == 1
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        wait_until(lambda: sidecar.in_flight("killed-client") == 0, timeout=5, what="in_flight == 0")
        # On a session the sidecar frees it when the connection drops; unary leases wait for the TTL.
        assert sidecar.status("killed-client").expired_total == before + (0 if use_session else 1)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()


def test_killed_client_process_permit_returns_at_once_on_a_session(sidecar):
    _killed_child_gives_back(sidecar, use_session=True)


def test_killed_client_process_permit_returns_by_lease_expiry_without_a_session(sidecar):
    _killed_child_gives_back(sidecar, use_session=False)


def test_garbage_collected_permit_is_released(sidecar, gov):
    permit = gov.acquire("gc-sync")
    assert sidecar.in_flight("gc-sync") == 1
    del permit
    gc.collect()
    wait_until(lambda: sidecar.in_flight("gc-sync") == 0, timeout=3, what="release of the dropped permit")
    assert sidecar.status("gc-sync").expired_total == 0


def test_close_releases_held_permits(sidecar):
    gov = Governor(sidecar.addr)
    permit = gov.acquire("close-sync")
    assert sidecar.in_flight("close-sync") == 1
    gov.close()
    assert permit.released and permit.outcome == Outcome.UNSPECIFIED
    assert sidecar.in_flight("close-sync") == 0


def test_release_is_idempotent(sidecar, gov):
    permit = gov.acquire("basic-sync")
    assert permit.release(Outcome.FAILURE, latency=0.25) is True
    assert permit.release() is False
    assert permit.outcome == Outcome.FAILURE and permit.latency == 0.25


def test_invalid_dependency_raises_even_when_fail_open(sidecar):
    gov = Governor(sidecar.addr, fail_open=True)
    try:
        with pytest.raises(InvalidRequest) as info:
            gov.acquire("not a valid name!")
        assert "dependency" in str(info.value)
        assert isinstance(info.value, GovernorError)
        assert gov.degraded_total == 0
    finally:
        gov.close()


def test_fail_open_proceeds_degraded(dead_target, caplog):
    gov = Governor(dead_target, fail_open=True)
    try:
        ran = False
        with caplog.at_level(logging.WARNING, logger="governor_client"):
            with gov.permit("payments", max_wait=0.2) as permit:
                ran = True
        assert ran
        assert permit.degraded
        assert isinstance(permit.degraded_error, GovernorUnavailable)
        assert permit.lease_id == ""
        assert gov.degraded_total == 1
        assert any("unavailable" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        assert permit.release() is False
        gov.acquire("payments", max_wait=0.2)
        assert gov.degraded_total == 2
    finally:
        gov.close()


def test_fail_closed_raises_unavailable(dead_target):
    gov = Governor(dead_target, fail_open=False)
    try:
        ran = False
        with pytest.raises(GovernorUnavailable) as info:
            with gov.permit("payments", max_wait=0.2):
                ran = True
        assert not ran
        assert not isinstance(info.value, Rejected)
        assert isinstance(info.value, GovernorError)
        assert info.value.code is not None
        assert gov.degraded_total == 0
    finally:
        gov.close()


def test_call_with_retries_retries_failures_then_succeeds(sidecar, gov):
    before = sidecar.status("retry-sync").granted_total
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("flaky")
        return "ok"

    assert gov.call_with_retries("retry-sync", flaky, max_attempts=3, backoff=lambda n: 0.01) == "ok"
    assert len(calls) == 3
    status = sidecar.status("retry-sync")
    assert status.granted_total == before + 3
    assert status.in_flight == 0


def test_call_with_retries_gives_up_after_max_attempts(sidecar, gov):
    calls = []

    def broken():
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        gov.call_with_retries("retry-sync", broken, max_attempts=2, backoff=lambda n: 0)
    assert len(calls) == 2
    assert sidecar.in_flight("retry-sync") == 0


def test_call_with_retries_stops_when_budget_exhausted(sidecar, gov):
    calls = []

    def broken():
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(Rejected) as info:
        gov.call_with_retries("nobudget-sync", broken, max_attempts=5, backoff=lambda n: 0)
    assert info.value.reason is RejectReason.RETRY_BUDGET_EXHAUSTED
    assert isinstance(info.value.__cause__, ConnectionError)
    assert len(calls) == 1
    assert sidecar.in_flight("nobudget-sync") == 0


def test_unix_socket_target(start_sidecar, tmp_path):
    sock = tmp_path / "gov.sock"
    sc = start_sidecar({}, extra_args=["--uds", str(sock)])
    assert sc.uds == str(sock)
    gov = Governor(f"unix://{sock}", fail_open=False)
    try:
        with gov.permit("over-uds") as permit:
            assert permit.lease_id
            assert sc.in_flight("over-uds") == 1
        assert sc.in_flight("over-uds") == 0
    finally:
        gov.close()


def test_version_and_public_api():
    assert governor_client.__version__
    for name in governor_client.__all__:
        assert hasattr(governor_client, name), name


def test_draining_sidecar_rejects_under_both_policies(start_sidecar):
    sc = start_sidecar({})
    closed = Governor(sc.addr, fail_open=False)
    opened = Governor(sc.addr, fail_open=True)
    try:
        held = closed.acquire("drain")  # keeps the sidecar in its drain grace period
        sc.proc.send_signal(signal.SIGTERM)

        def shutting_down():
            try:
                closed.acquire("drain", max_wait=0).release()
            except Rejected as rej:
                return rej
            return None

        rej = wait_until(shutting_down, timeout=5, what="a SHUTTING_DOWN rejection")
        assert rej.reason is RejectReason.SHUTTING_DOWN
        # A rejection is an answer: fail-open does not apply (docs/any-language.md).
        with pytest.raises(Rejected) as rej_open:
            opened.acquire("drain", max_wait=0)
        assert rej_open.value.reason is RejectReason.SHUTTING_DOWN and opened.degraded_total == 0
        assert held.release() is True
        assert sc.proc.wait(timeout=15) == 0
    finally:
        closed.close()
        opened.close()


def test_default_deadline_never_cuts_a_long_max_wait_short(start_sidecar):
    # A sidecar max_wait of 6 s is longer than any old client default (1.5 s, 5 s):
    # without a max_wait of its own, the caller must wait all of it.
    sc = start_sidecar({"slow": {"max_concurrency": 1, "max_queue": 4, "max_wait": "6s"}})
    gov = Governor(sc.addr, fail_open=False)
    try:
        held = gov.acquire("slow")
        started = time.monotonic()
        with pytest.raises(Rejected) as rej:
            gov.acquire("slow")
        assert rej.value.reason is RejectReason.QUEUE_TIMEOUT
        assert rej.value.queue_wait >= 5.9 and time.monotonic() - started >= 5.9
        held.release()
    finally:
        gov.close()


def test_resource_exhausted_dependency_cap_is_an_error_even_failing_open(start_sidecar):
    capped = start_sidecar({}, limits={"max_dependencies": 1})
    gov = Governor(capped.addr, fail_open=True)
    try:
        # Held, so that it cannot be evicted to make room.
        first = gov.acquire("first")
        with pytest.raises(InvalidRequest) as invalid:
            gov.acquire("second")
        assert invalid.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert invalid.value.details.startswith("dependency:")
        assert gov.degraded_total == 0
        first.release()
    finally:
        gov.close()


def test_keepalive_notices_a_frozen_sidecar_during_a_long_wait(start_sidecar):
    sc = start_sidecar({"frozen": {"max_concurrency": 1, "max_queue": 4, "max_wait": "1h"}})
    holder = Governor(sc.addr, fail_open=False)
    # The package's keepalive options, with shorter times so the test is quick.
    quick = [("grpc.keepalive_time_ms", 200), ("grpc.keepalive_timeout_ms", 300), ("grpc.http2.ping_timeout_ms", 300)]
    gov = Governor(sc.addr, channel_options=quick)
    result = {}

    def wait_for_a_permit():
        result["permit"] = gov.acquire("frozen")  # no max_wait: the deadline is 1 h + 1 s

    held = holder.acquire("frozen")
    waiter = threading.Thread(target=wait_for_a_permit, daemon=True)
    waiter.start()
    try:
        wait_until(lambda: sc.status("frozen").queued == 1, timeout=5, what="the acquire to queue")
        sc.proc.send_signal(signal.SIGSTOP)
        waiter.join(timeout=10)
    finally:
        sc.proc.send_signal(signal.SIGCONT)
    assert not waiter.is_alive(), "keepalive did not notice the frozen sidecar within 10 s"
    permit = result["permit"]
    assert permit.degraded and permit.degraded_error.code == grpc.StatusCode.UNAVAILABLE
    assert gov.degraded_total == 1
    held.release()
    gov.close()
    holder.close()
