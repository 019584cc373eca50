//! Checks of the gRPC message framing of every request, before tonic decodes
//! it, for the two things tonic gets wrong or lets through:
//!
//! - A message longer than `server.max_message_bytes` is refused with
//!   RESOURCE_EXHAUSTED, as the gRPC spec and grpc-go and grpc-java do
//!   (tonic's own limit, kept as a backstop, answers OUT_OF_RANGE).
//! - A unary call (every method we serve except reflection's and Session's streams) that
//!   carries a second request message is refused with INTERNAL, as
//!   grpc-java does ("too many requests"); tonic would decode the first one
//!   and silently drop the rest.
//!
//! The check reads only the 5-byte headers of the length-prefixed messages
//! and skips their bodies, so it costs a few comparisons per DATA frame.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tonic::Status;
use tonic::codegen::http;
use tower::{Layer, Service};

/// Paths whose requests are streams of messages; every other one is unary.
const STREAMING_PREFIXES: [&str; 2] = ["/grpc.reflection.", "/governor.v1.Governor/Session"];

/// Wraps every request body in a [`Checked`] one.
#[derive(Clone, Copy, Debug)]
pub struct FramingLayer {
    max_message_bytes: usize,
}

impl FramingLayer {
    pub fn new(max_message_bytes: usize) -> Self {
        FramingLayer { max_message_bytes }
    }
}

impl<S> Layer<S> for FramingLayer {
    type Service = Framing<S>;

    fn layer(&self, inner: S) -> Framing<S> {
        Framing {
            inner,
            max_message_bytes: self.max_message_bytes,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Framing<S> {
    inner: S,
    max_message_bytes: usize,
}

impl<S> Service<http::Request<tonic::body::Body>> for Framing<S>
where
    S: Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let path = request.uri().path();
        let unary = !STREAMING_PREFIXES.iter().any(|p| path.starts_with(p));
        let (parts, body) = request.into_parts();
        let body = Checked {
            inner: body,
            scanner: Scanner::new(self.max_message_bytes, unary),
            failed: false,
        };
        self.inner.call(http::Request::from_parts(
            parts,
            tonic::body::Body::new(body),
        ))
    }
}

/// A request body whose message framing is checked as it streams by.
#[derive(Debug)]
pub struct Checked {
    inner: tonic::body::Body,
    scanner: Scanner,
    failed: bool,
}

impl Body for Checked {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                if let Err(status) = this.scanner.scan(data) {
                    this.failed = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Follows the length-prefixed messages (1 flag byte, 4 length bytes, the
/// message) across arbitrarily split DATA frames.
#[derive(Debug)]
struct Scanner {
    max_message_bytes: usize,
    unary: bool,
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
    messages: u32,
}

impl Scanner {
    fn new(max_message_bytes: usize, unary: bool) -> Self {
        Scanner {
            max_message_bytes,
            unary,
            header: [0; 5],
            header_len: 0,
            body_left: 0,
            messages: 0,
        }
    }

    fn scan(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(data.len());
                self.body_left -= n;
                data = &data[n..];
                continue;
            }
            if self.header_len == 0 && self.unary && self.messages >= 1 {
                return Err(Status::internal(
                    "protocol violation: a unary call carries exactly one request message, \
                     and this one has more",
                ));
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                let header = self.header;
                let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
                if len > self.max_message_bytes {
                    return Err(Status::resource_exhausted(format!(
                        "request message of {len} bytes is larger than the limit of {} \
                         (server.max_message_bytes)",
                        self.max_message_bytes
                    )));
                }
                self.messages += 1;
                self.body_left = len;
                self.header_len = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        bytes.extend(std::iter::repeat_n(7, len));
        bytes
    }

    /// Feeds `bytes` in chunks of every size from 1 up, and returns the first
    /// error of each feeding.
    fn outcomes(bytes: &[u8], max: usize, unary: bool) -> Vec<Option<tonic::Code>> {
        (1..=bytes.len())
            .map(|chunk| {
                let mut scanner = Scanner::new(max, unary);
                bytes
                    .chunks(chunk)
                    .find_map(|c| scanner.scan(c).err())
                    .map(|status| status.code())
            })
            .collect()
    }

    #[test]
    fn one_message_passes_however_it_is_split() {
        let bytes = message(40);
        assert!(outcomes(&bytes, 40, true).iter().all(Option::is_none));
        let empty = message(0);
        assert!(outcomes(&empty, 40, true).iter().all(Option::is_none));
    }

    #[test]
    fn a_second_message_on_a_unary_call_is_refused() {
        let mut bytes = message(10);
        bytes.extend(message(3));
        assert!(
            outcomes(&bytes, 40, true)
                .iter()
                .all(|o| *o == Some(tonic::Code::Internal))
        );
        // A stream may carry many.
        assert!(outcomes(&bytes, 40, false).iter().all(Option::is_none));
    }

    #[test]
    fn an_oversized_message_is_resource_exhausted() {
        let bytes = message(41);
        assert!(
            outcomes(&bytes, 40, true)
                .iter()
                .all(|o| *o == Some(tonic::Code::ResourceExhausted))
        );
    }
}
