//! Who created which dependency: the per-peer cap on names callers create.
//!
//! `max_dependencies` bounds the table, and idle names make room, but one
//! client with a loop can still keep every slot busy (one waiter each) and
//! lock everyone else out of new names. So each peer may hold at most
//! `max_dependencies_per_peer` of the names it created; names in the config
//! file and names the control plane touched never count.
//!
//! The shell says who the peer is ([`Peer`]); the ledger only counts. The
//! book is bounded by the dependencies that exist: an entry goes when its
//! dependency is evicted or becomes configured, and a peer's count with it
//! when it reaches zero, so a peer that disconnected leaves nothing behind
//! once its names are gone.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Who asked, as the gRPC shell identifies callers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A client on another host, by its address.
    Host(IpAddr),
    /// A client connection on this host, by its address and port.
    Connection(SocketAddr),
    /// A process connected over the Unix socket.
    Process(i32),
    /// A user connected over the Unix socket (when the pid is unknown).
    User(u32),
}

/// The names each peer created; taken under the ledger's creation lock.
#[derive(Debug, Default)]
pub(crate) struct PeerBook {
    created: HashMap<Peer, usize>,
    creator: HashMap<Arc<str>, Peer>,
}

impl PeerBook {
    /// How many live names `peer` created.
    pub(crate) fn count(&self, peer: &Peer) -> usize {
        self.created.get(peer).copied().unwrap_or(0)
    }

    pub(crate) fn record(&mut self, name: Arc<str>, peer: Peer) {
        if let Some(previous) = self.creator.insert(name, peer) {
            // Not expected (a name is recorded when created), but keep the
            // counts exact if it happens.
            self.decrement(&previous);
        }
        *self.created.entry(peer).or_insert(0) += 1;
    }

    /// `name` is gone, or is no longer the peer's (configured, or touched by
    /// the control plane).
    pub(crate) fn forget(&mut self, name: &str) {
        if let Some(peer) = self.creator.remove(name) {
            self.decrement(&peer);
        }
    }

    fn decrement(&mut self, peer: &Peer) {
        if let Some(count) = self.created.get_mut(peer) {
            *count -= 1;
            if *count == 0 {
                self.created.remove(peer);
            }
        }
    }

    /// Entries held (for the bound's test).
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.created.len(), self.creator.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_names_and_empty_peers_go() {
        let a = Peer::Connection("127.0.0.1:4000".parse().unwrap());
        let b = Peer::Process(42);
        let mut book = PeerBook::default();
        book.record("x".into(), a);
        book.record("y".into(), a);
        book.record("z".into(), b);
        assert_eq!((book.count(&a), book.count(&b)), (2, 1));
        book.forget("x");
        book.forget("never-recorded");
        assert_eq!(book.count(&a), 1);
        book.forget("y");
        book.forget("z");
        assert_eq!(book.count(&a), 0);
        assert_eq!(book.len(), (0, 0));
    }

    mod in_the_ledger {
        use std::time::Duration;

        use tokio::time::{Instant, advance};

        use super::super::super::{
            AcquireRequest, LeaseId, Ledger, LedgerConfig, LedgerError, Limits, LimitsPatch, Peer,
            Priority, Report,
        };

        fn ledger(per_peer: usize, max_dependencies: usize) -> Ledger {
            Ledger::new(LedgerConfig {
                max_dependencies,
                max_dependencies_per_peer: per_peer,
                idle_ttl: Duration::from_secs(60),
                dependencies: vec![("configured".to_owned(), Limits::default())],
                ..LedgerConfig::default()
            })
        }

        async fn acquire(
            ledger: &Ledger,
            name: &str,
            peer: Option<Peer>,
        ) -> Result<LeaseId, LedgerError> {
            let request = AcquireRequest {
                dependency: name,
                tenant: None,
                route: None,
                attempt: 0,
                priority: Priority::Normal,
                max_wait: None,
                degradable: false,
            };
            let decision = ledger.acquire_as(&request, peer).await?;
            Ok(decision.granted().expect("an idle dependency grants").lease)
        }

        fn host(last: u8) -> Peer {
            Peer::Host(std::net::IpAddr::from([192, 0, 2, last]))
        }

        #[tokio::test(start_paused = true)]
        async fn a_peer_past_its_share_is_refused_and_nobody_else_is() {
            let ledger = ledger(2, 100);
            let (a, b) = (host(1), host(2));
            acquire(&ledger, "a1", Some(a)).await.unwrap();
            acquire(&ledger, "a2", Some(a)).await.unwrap();
            assert_eq!(
                acquire(&ledger, "a3", Some(a)).await.unwrap_err(),
                LedgerError::TooManyForPeer(2)
            );
            assert!(!ledger.contains("a3"), "a refused name leaves nothing");
            // Names that exist, configured names and other peers are unaffected.
            acquire(&ledger, "a1", Some(a)).await.unwrap();
            acquire(&ledger, "configured", Some(a)).await.unwrap();
            acquire(&ledger, "b1", Some(b)).await.unwrap();
            acquire(&ledger, "b1", Some(a)).await.unwrap();
            acquire(&ledger, "anonymous", None).await.unwrap();
            // The control plane may still create names, and takes one over.
            ledger.update("a3", &LimitsPatch::default()).unwrap();
            ledger.update("a2", &LimitsPatch::default()).unwrap();
            acquire(&ledger, "a4", Some(a)).await.unwrap();
            assert_eq!(
                acquire(&ledger, "a5", Some(a)).await.unwrap_err(),
                LedgerError::TooManyForPeer(2)
            );
        }

        #[tokio::test(start_paused = true)]
        async fn an_evicted_name_gives_its_peer_room_and_leaves_no_entry() {
            let ledger = ledger(1, 100);
            let a = Peer::Connection("127.0.0.1:40000".parse().unwrap());
            let lease = acquire(&ledger, "x", Some(a)).await.unwrap();
            assert!(acquire(&ledger, "y", Some(a)).await.is_err());
            ledger.release(&lease, Report::default()).unwrap();
            advance(Duration::from_secs(61)).await;
            ledger.evict_idle(Instant::now());
            assert!(!ledger.contains("x"));
            assert_eq!(ledger.lock_peers().len(), (0, 0));
            let lease = acquire(&ledger, "y", Some(a)).await.unwrap();
            // A reload that configures `y` takes it off the peer's count.
            ledger.release(&lease, Report::default()).unwrap();
            ledger.reconfigure(LedgerConfig {
                max_dependencies_per_peer: 1,
                dependencies: vec![("y".to_owned(), Limits::default())],
                ..LedgerConfig::default()
            });
            assert_eq!(ledger.lock_peers().len(), (0, 0));
            acquire(&ledger, "z", Some(a)).await.unwrap();
        }

        #[tokio::test(start_paused = true)]
        async fn at_the_cap_an_idle_name_of_the_same_peer_is_counted_out_when_evicted() {
            // Two places in all (one taken by "configured"): a's idle name
            // is evicted to make room for b's, and a's count falls with it.
            let ledger = ledger(1, 2);
            let (a, b) = (host(1), host(2));
            let lease = acquire(&ledger, "a1", Some(a)).await.unwrap();
            ledger.release(&lease, Report::default()).unwrap();
            acquire(&ledger, "b1", Some(b)).await.unwrap();
            assert!(!ledger.contains("a1"));
            assert_eq!(ledger.lock_peers().count(&a), 0);
            assert_eq!(ledger.lock_peers().count(&b), 1);
        }
    }
}
