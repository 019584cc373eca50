"""A tiny in-test governor.v1.Governor server that records requests and metadata.

Used only for what the real sidecar does not expose to a client: the metadata
it received (trace context), the outcome/latency a Release reported, the
deadline of a call, and scripted rejections.
"""
from __future__ import annotations

import threading
import uuid
from concurrent import futures
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import grpc

from governor_client.v1 import governor_pb2 as pb
from governor_client.v1 import governor_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2


def dur(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


@dataclass
class Call:
    method: str
    request: object
    metadata: Dict[str, str]
    time_remaining: Optional[float]


@dataclass
class FakeGovernor(pb_grpc.GovernorServicer):
    lease_ttl: float = 30.0
    #: What Renew answers (False: "the lease is unknown or expired").
    renew_answer: bool = True
    #: Scripted Acquire answers, consumed in order (a StatusCode: that error); then: granted.
    acquire_script: List[object] = field(default_factory=list)
    calls: List[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cv = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_GovernorServicer_to_server(self, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)

    def _record(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        md = {k: v for k, v in context.invocation_metadata()}
        with self._cv:
            self.calls.append(Call(method, request, md, context.time_remaining()))
            self._cv.notify_all()

    def wait_for(self, predicate: Callable[[List[Call]], bool], timeout: float = 5.0) -> List[Call]:
        """Wait until ``predicate(calls)`` holds; return a snapshot of the calls."""
        with self._cv:
            if not self._cv.wait_for(lambda: predicate(self.calls), timeout=timeout):
                raise AssertionError(f"fake governor: condition not met within {timeout}s; calls: {self.calls}")
            return list(self.calls)

    def of(self, method: str) -> List[Call]:
        with self._cv:
            return [c for c in self.calls if c.method == method]

    # -- governor.v1.Governor ---------------------------------------------------

    def _next_acquire(self) -> object:
        with self._cv:
            scripted = self.acquire_script.pop(0) if self.acquire_script else None
        if scripted is not None:
            return scripted
        return pb.AcquireResponse(
            granted=True, lease_id=uuid.uuid4().hex, lease_ttl=dur(self.lease_ttl), limit=8, in_flight=1
        )

    def Acquire(self, request: pb.AcquireRequest, context: grpc.ServicerContext) -> pb.AcquireResponse:
        self._record("Acquire", request, context)
        answer = self._next_acquire()
        if isinstance(answer, grpc.StatusCode):
            context.abort(answer, "dependency: forced by the fake")
        return answer  # type: ignore[return-value]

    def Release(self, request: pb.ReleaseRequest, context: grpc.ServicerContext) -> pb.ReleaseResponse:
        self._record("Release", request, context)
        return pb.ReleaseResponse(released=True)

    def Renew(self, request: pb.RenewRequest, context: grpc.ServicerContext) -> pb.RenewResponse:
        self._record("Renew", request, context)
        if not self.renew_answer:
            return pb.RenewResponse(renewed=False)
        return pb.RenewResponse(renewed=True, lease_ttl=dur(self.lease_ttl))


@dataclass
class SessionFakeGovernor(FakeGovernor):
    """:class:`FakeGovernor` with the Session stream too: each message is
    answered in order from the same script (a StatusCode: a SessionError of
    that code) and recorded as "Session.Acquire", "Session.Release" or
    "Session.Renew"."""

    def Session(self, request_iterator, context: grpc.ServicerContext):  # noqa: N802 - the gRPC method name
        for msg in request_iterator:
            op = msg.WhichOneof("op")
            self._record(f"Session.{op.capitalize()}", getattr(msg, op), context)
            if op == "acquire":
                answer = self._next_acquire()
                if isinstance(answer, grpc.StatusCode):
                    err = pb.SessionError(code=answer.value[0], message="dependency: forced by the fake")
                    yield pb.SessionResponse(id=msg.id, error=err)
                else:
                    yield pb.SessionResponse(id=msg.id, acquire=answer)
            elif op == "release":
                if msg.id:
                    yield pb.SessionResponse(id=msg.id, release=pb.ReleaseResponse(released=True))
            elif op == "renew":
                yield pb.SessionResponse(
                    id=msg.id, renew=pb.RenewResponse(renewed=self.renew_answer, lease_ttl=dur(self.lease_ttl))
                )
