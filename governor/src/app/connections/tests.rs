use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio_stream::StreamExt;

use super::*;

const LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 2,
    handshake_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
};

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut bytes = vec![len[1], len[2], len[3], kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// One tracked connection over an in-memory pipe: (server side, client side).
fn connection(gate: &Arc<Gate>) -> (Tracked<DuplexStream>, DuplexStream) {
    let (server, client) = duplex(64 * 1024);
    (gate.admit(server).expect("under the cap"), client)
}

fn gate() -> Arc<Gate> {
    Gate::new(LIMITS, ConnectionMetrics::default())
}

fn closed(gate: &Gate, reason: &'static str) -> u64 {
    gate.metrics
        .closed
        .get_or_create(&ReasonLabels { reason })
        .get()
}

#[test]
fn frames_are_followed_across_split_writes() {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(0x4, 0, 0, &[0; 6])); // SETTINGS
    bytes.extend(frame(HEADERS, 0x4, 1, &[0; 20]));
    bytes.extend(frame(DATA, END_STREAM, 1, &[0; 30]));
    bytes.extend(frame(HEADERS, 0x5, 3, &[0; 7]));
    bytes.extend(frame(RST_STREAM, 0, 3, &[0; 4]));
    for split in [1, 2, 5, 9, 13, 1000] {
        let mut frames = Frames::client();
        let mut streams = Streams::default();
        for chunk in bytes.chunks(split) {
            frames
                .feed(chunk, |f| streams.client_frame(f))
                .expect("valid bytes");
        }
        assert!(frames.at_boundary(), "split {split}");
        // Stream 1 stays open (only the server ends it); 3 was reset.
        assert_eq!(streams.open, HashSet::from([1]), "split {split}");
        assert_eq!(streams.last_opened, 3);
    }
}

#[test]
fn a_server_end_stream_closes_and_trailers_do_not_reopen() {
    let mut streams = Streams::default();
    let head = |kind, flags, stream| FrameHead {
        kind,
        flags,
        stream,
    };
    streams.client_frame(head(HEADERS, 0, 1));
    streams.client_frame(head(HEADERS, 0, 5));
    streams.server_frame(head(HEADERS, 0, 1)); // response headers
    streams.server_frame(head(DATA, 0, 1));
    assert_eq!(streams.open.len(), 2);
    streams.server_frame(head(HEADERS, END_STREAM, 1)); // trailers
    // Client trailers on an old stream id, and a reset of a closed one.
    streams.client_frame(head(HEADERS, END_STREAM, 1));
    streams.client_frame(head(RST_STREAM, 0, 1));
    assert_eq!(streams.open, HashSet::from([5]));
    streams.server_frame(head(RST_STREAM, 0, 5));
    assert!(streams.open.is_empty());
}

#[test]
fn a_wrong_preface_is_an_error() {
    let mut frames = Frames::client();
    let error = frames
        .feed(b"GET / HTTP/1.1\r\n", |_| {})
        .expect_err("HTTP/1.1 is refused");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_sends_nothing_is_closed_after_the_handshake_timeout() {
    let gate = gate();
    let (mut server, _client) = connection(&gate);
    let started = Instant::now();
    let mut buf = [0; 16];
    let n = server.read(&mut buf).await.expect("read");
    assert_eq!(n, 0, "end of stream");
    assert_eq!(started.elapsed(), LIMITS.handshake_timeout);
    assert_eq!(closed(&gate, "handshake"), 1);
    assert_eq!(closed(&gate, "idle"), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_gets_a_goaway_naming_its_last_stream() {
    let gate = gate();
    let (mut server, mut client) = connection(&gate);
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(HEADERS, 0x4, 7, &[0; 3]));
    client.write_all(&hello).await.unwrap();
    let mut buf = vec![0; 1024];
    let n = server.read(&mut buf).await.unwrap();
    assert_eq!(n, hello.len());
    // With stream 7 open, the connection outlives the idle timeout.
    let pending = tokio::time::timeout(LIMITS.idle_timeout * 2, server.read(&mut buf)).await;
    assert!(pending.is_err(), "an open stream keeps the connection");

    // The server answers half a frame, then the rest.
    let answer = frame(HEADERS, 0x5, 7, &[0; 10]);
    server.write_all(&answer[..4]).await.unwrap();
    server.write_all(&answer[4..]).await.unwrap();
    let quiet_since = Instant::now();
    let n = server.read(&mut buf).await.unwrap();
    assert_eq!(n, 0, "end of stream after the GOAWAY");
    assert_eq!(quiet_since.elapsed(), LIMITS.idle_timeout);
    assert_eq!(closed(&gate, "idle"), 1);
    assert!(
        server.write(b"x").await.is_err(),
        "no write after the GOAWAY"
    );

    let mut seen = vec![0; answer.len() + 17];
    client.read_exact(&mut seen).await.unwrap();
    assert_eq!(&seen[..answer.len()], &answer[..]);
    assert_eq!(
        &seen[answer.len()..],
        &frame(0x7, 0, 0, &[0, 0, 0, 7, 0, 0, 0, 0])[..],
        "GOAWAY, last stream 7, NO_ERROR"
    );
}

#[tokio::test(start_paused = true)]
async fn the_idle_goaway_waits_for_a_half_written_frame() {
    let gate = gate();
    let (mut server, mut client) = connection(&gate);
    client.write_all(PREFACE).await.unwrap();
    let mut buf = vec![0; 1024];
    let n = server.read(&mut buf).await.unwrap();
    assert_eq!(n, PREFACE.len());
    let ping = frame(0x6, 0, 0, &[1; 8]);
    server.write_all(&ping[..5]).await.unwrap();
    let waited = tokio::time::timeout(LIMITS.idle_timeout * 2, server.read(&mut buf)).await;
    assert!(waited.is_err(), "no GOAWAY inside a frame");
    server.write_all(&ping[5..]).await.unwrap();
    assert_eq!(server.read(&mut buf).await.unwrap(), 0);
    let mut seen = vec![0; ping.len() + 17];
    client.read_exact(&mut seen).await.unwrap();
    assert_eq!(&seen[..ping.len()], &ping[..]);
    assert_eq!(seen[ping.len() + 3], 0x7, "then the GOAWAY");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_accept() {
    let gate = gate();
    let (sockets, clients): (Vec<_>, Vec<_>) = (0..3).map(|_| duplex(1024)).unzip();
    let accepted = tokio_stream::iter(sockets.into_iter().map(Ok::<_, io::Error>));
    let mut incoming = gate.incoming(accepted);
    let first = incoming.next().await.unwrap().unwrap();
    let _second = incoming.next().await.unwrap().unwrap();
    assert!(incoming.next().await.is_none(), "the third is refused");
    assert_eq!(gate.metrics.refused.get(), 1);
    assert_eq!(gate.metrics.open.get(), 2);
    let mut third = clients.into_iter().nth(2).unwrap();
    assert_eq!(third.read(&mut [0; 1]).await.unwrap(), 0, "closed");

    drop(first);
    assert_eq!(gate.metrics.open.get(), 1);
    let (server, _client) = duplex(1024);
    assert!(gate.admit(server).is_some(), "a freed permit is reused");
}
