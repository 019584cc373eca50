"""End to end: the client's OpenTelemetry trace context reaches the REAL sidecar.

An in-test OTLP/gRPC trace receiver (``TraceService/Export``) collects what the
governor binary exports; the sidecar is pointed at it through ``[telemetry]``.
A permit is acquired and released inside a known remote span context, and the
sidecar's ``governor.acquire`` span must be a child of that span.
"""
from __future__ import annotations

import os
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import grpc
import pytest

if sys.version_info < (3, 10):  # opentelemetry-proto (the [test] extra) needs 3.10+
    pytest.skip("opentelemetry-proto needs Python 3.10+", allow_module_level=True)

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from governor_client import AsyncGovernor, Governor, Outcome

from conftest import Sidecar, governor_binary, render_config
from helpers import async_wait_until, wait_until

SPAN_TIMEOUT = 10.0


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Records every span exported to it (OTLP/gRPC)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: List = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        with self._lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self._spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, trace_id: int) -> Dict[str, list]:
        """The spans of ``trace_id``, by name."""
        wanted = trace_id.to_bytes(16, "big")
        out: Dict[str, list] = {}
        with self._lock:
            for span in self._spans:
                if span.trace_id == wanted:
                    out.setdefault(span.name, []).append(span)
        return out

    def stop(self) -> None:
        self.server.stop(grace=None)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Sidecar, TraceReceiver]]:
    """A dedicated sidecar exporting its traces to an in-test receiver."""
    receiver = TraceReceiver()
    config = render_config({"traced-sync": {}, "traced-async": {}}) + (
        "\n[telemetry]\n"
        f'otlp_endpoint = "http://127.0.0.1:{receiver.port}"\n'
        'export_delay = "50ms"\n'
    )
    with pytest.MonkeyPatch.context() as mp:
        # The standard variables override the file: keep the environment out of it.
        for name in list(os.environ):
            if name.startswith("OTEL_"):
                mp.delenv(name)
        sidecar = Sidecar(governor_binary(), Path(tmp_path_factory.mktemp("governor-traced")), config)
    try:
        yield sidecar, receiver
    finally:
        sidecar.stop()
        receiver.stop()


@pytest.fixture
def caller_span() -> Iterator[SpanContext]:
    """A sampled remote span made current, with the W3C propagator set globally."""
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(TraceContextTextMapPropagator())
    span_context = SpanContext(
        trace_id=int.from_bytes(os.urandom(16), "big") | 1,
        span_id=int.from_bytes(os.urandom(8), "big") | 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(span_context)))
    try:
        yield span_context
    finally:
        otel_context.detach(token)
        propagate.set_global_textmap(previous)


def _assert_spans(spans: Dict[str, list], caller: SpanContext) -> None:
    (acquire,) = spans["governor.acquire"]
    (permit,) = spans["governor.permit"]
    assert acquire.parent_span_id == caller.span_id.to_bytes(8, "big"), (
        f"governor.acquire parent {acquire.parent_span_id.hex()} is not the caller's span "
        f"{caller.span_id:016x}"
    )
    attributes = {kv.key: kv.value for kv in permit.attributes}
    assert "governor.outcome" in attributes, f"governor.permit attributes: {sorted(attributes)}"
    assert attributes["governor.outcome"].string_value == "success"


def _have_both(receiver: TraceReceiver, trace_id: int):
    spans = receiver.spans(trace_id)
    return spans if {"governor.acquire", "governor.permit"} <= spans.keys() else None


def test_sync_trace_context_reaches_the_sidecar(traced, caller_span):
    sidecar, receiver = traced
    gov = Governor(sidecar.addr, fail_open=False)
    try:
        with gov.permit("traced-sync") as permit:
            assert not permit.degraded
        assert permit.released and permit.outcome == Outcome.SUCCESS
    finally:
        gov.close()
    spans = wait_until(
        lambda: _have_both(receiver, caller_span.trace_id),
        SPAN_TIMEOUT,
        interval=0.05,
        what=f"governor.acquire and governor.permit spans of trace {caller_span.trace_id:032x}",
    )
    _assert_spans(spans, caller_span)


@pytest.mark.asyncio
async def test_async_trace_context_reaches_the_sidecar(traced, caller_span):
    sidecar, receiver = traced
    async with AsyncGovernor(sidecar.addr, fail_open=False) as gov:
        async with gov.permit("traced-async") as permit:
            assert not permit.degraded
        assert permit.released and permit.outcome == Outcome.SUCCESS
    spans = await async_wait_until(
        lambda: _have_both(receiver, caller_span.trace_id),
        SPAN_TIMEOUT,
        interval=0.05,
        what=f"governor.acquire and governor.permit spans of trace {caller_span.trace_id:032x}",
    )
    _assert_spans(spans, caller_span)
