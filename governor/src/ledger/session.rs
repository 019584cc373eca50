//! Sessions: leases owned by one stream, all freed the moment it ends.
//!
//! A lease granted through [`Ledger::acquire_in`] belongs to its
//! [`Session`]. Closing the session (or dropping it) releases every lease it
//! still holds, with the outcome [`Outcome::SessionClosed`], and withdraws
//! every acquire it has waiting. A session lease is an ordinary lease
//! otherwise: it keeps its TTL, and [`Ledger::release`] or [`Ledger::renew`]
//! work on it from anywhere; its dependency's lease map stays the one arbiter
//! of who frees a slot, so a lease released by a caller and by the closing
//! session at once is freed once.
//!
//! # Why ownership is taken after the grant
//! The grant goes through the same path as any acquire; the session adopts
//! the lease once the acquire returns. Between the two the lease is in its
//! dependency's map but not in the session. If the session closed in that
//! gap, adoption sees it (both happen under the session's lock) and releases
//! the lease at once, so no interleaving leaks one.
//!
//! Lock order: a dependency's lock, then a session's. Closing takes the
//! session's lock only to take its leases out.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio_util::sync::CancellationToken;

use super::decision::{AcquireRequest, Decision, Outcome, Report};
use super::lease::{LeaseId, LeaseKey, LeaseKeyHash};
use super::shared::Shared;
use super::{Ledger, LedgerError, Peer};

/// The state one session shares with the leases it owns.
#[derive(Debug, Default)]
pub(crate) struct Owner {
    state: Mutex<OwnerState>,
    /// Cancelled on close: wakes and withdraws the acquires still waiting.
    closing: CancellationToken,
    /// Acquires in progress, against `max_session_pending`.
    pending: AtomicUsize,
}

#[derive(Default)]
struct OwnerState {
    closed: bool,
    leases: HashSet<LeaseKey, LeaseKeyHash>,
}

impl std::fmt::Debug for OwnerState {
    /// By hand: lease keys are parts of lease ids.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerState")
            .field("closed", &self.closed)
            .field("leases", &self.leases.len())
            .finish()
    }
}

impl Owner {
    fn lock(&self) -> MutexGuard<'_, OwnerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease ended (released, expired): it is no longer ours.
    pub(crate) fn forget(&self, key: LeaseKey) {
        self.lock().leases.remove(&key);
    }

    /// Takes the lease `key` (if it is still `live`) unless the session
    /// closed; false if it did. Called under the lease's dependency's lock.
    pub(crate) fn take(&self, key: LeaseKey, live: bool) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        if live {
            state.leases.insert(key);
        }
        true
    }
}

/// Why an acquire on a session was not decided.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionAcquireError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{0} acquires are already pending on this session")]
    TooManyPending(usize),
    /// The session closed first; whatever the acquire got went back.
    #[error("the session is closed")]
    Closed,
}

/// What closing a session freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionClosed {
    /// Leases it still held, now released.
    pub released: usize,
    /// Acquires it still had pending, now withdrawn.
    pub withdrawn: usize,
}

/// A set of leases that live at most as long as it: see the module docs.
/// Dropping it closes it.
#[derive(Debug)]
pub struct Session {
    shared: Arc<Shared>,
    owner: Arc<Owner>,
    /// Who opened it: names its acquires create count against this peer.
    peer: Option<Peer>,
}

/// Gives a session's pending place back, however the acquire ends.
struct Pending<'a>(&'a Owner);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ledger {
    /// A new, empty session, for `peer` (see [`Ledger::acquire_as`]).
    pub fn open_session(&self, peer: Option<Peer>) -> Session {
        Session {
            shared: self.shared.clone(),
            owner: Arc::default(),
            peer,
        }
    }

    /// [`Ledger::acquire`] on behalf of `session`, which owns the lease if
    /// one is granted. At most `max_session_pending` may be in progress per
    /// session.
    ///
    /// # Cancel safety
    /// As [`Ledger::acquire`]: dropping the future withdraws the request and
    /// returns a grant that raced with the drop. Closing the session does the
    /// same to every acquire of it in progress, which then answer
    /// [`SessionAcquireError::Closed`].
    pub async fn acquire_in(
        &self,
        session: &Session,
        request: &AcquireRequest<'_>,
    ) -> Result<Decision, SessionAcquireError> {
        let owner = &*session.owner;
        let max = self.shared.max_session_pending();
        owner
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| SessionAcquireError::TooManyPending(max))?;
        let _pending = Pending(owner);
        if owner.closing.is_cancelled() {
            return Err(SessionAcquireError::Closed);
        }
        let decision = tokio::select! {
            biased;
            () = owner.closing.cancelled() => return Err(SessionAcquireError::Closed),
            decision = self.acquire_as(request, session.peer) => decision?,
        };
        if let Ok(grant) = &decision.outcome {
            if !session.adopt(grant.lease) {
                return Err(SessionAcquireError::Closed);
            }
        }
        Ok(decision)
    }
}

impl Session {
    /// Takes a fresh grant into the session; if the session closed since the
    /// grant, releases it instead and returns false.
    fn adopt(&self, lease: LeaseId) -> bool {
        let adopted = match self.shared.dependency_of(&lease) {
            Some(dependency) => dependency.adopt(lease.key, &self.owner),
            // Gone with its dependency: nothing to take.
            None => self.owner.take(lease.key, false),
        };
        if adopted {
            return true;
        }
        // Outside both locks: releasing takes the dependency's.
        if let Some(ended) = self
            .shared
            .release(&lease, Report::new(Outcome::SessionClosed, None))
        {
            self.shared.observer.session_lease_released(&ended);
        }
        false
    }

    /// Releases every lease the session holds (outcome `session_closed`,
    /// told to the ledger's observer) and withdraws its pending acquires;
    /// later acquires on it answer [`SessionAcquireError::Closed`].
    /// Idempotent: a second close frees nothing.
    ///
    /// Pending acquires leave their queues when their futures next run (a
    /// caller that drops them first withdraws them synchronously).
    pub fn close(&self) -> SessionClosed {
        let keys = {
            let mut state = self.owner.lock();
            if state.closed {
                return SessionClosed::default();
            }
            state.closed = true;
            std::mem::take(&mut state.leases)
        };
        let withdrawn = self.owner.pending.load(Ordering::Acquire);
        self.owner.closing.cancel();
        let mut released = 0;
        for key in keys {
            let lease = LeaseId {
                epoch: self.shared.epoch,
                key,
            };
            // `None`: released by a caller or expired in the meantime.
            if let Some(ended) = self
                .shared
                .release(&lease, Report::new(Outcome::SessionClosed, None))
            {
                released += 1;
                self.shared.observer.session_lease_released(&ended);
            }
        }
        SessionClosed {
            released,
            withdrawn,
        }
    }

    /// Leases it holds now.
    pub fn leases(&self) -> usize {
        self.owner.lock().leases.len()
    }

    /// Acquires of it in progress now.
    pub fn pending(&self) -> usize {
        self.owner.pending.load(Ordering::Acquire)
    }

    /// Whether `lease` is one of its leases.
    pub fn owns(&self, lease: &LeaseId) -> bool {
        lease.epoch == self.shared.epoch && self.owner.lock().leases.contains(&lease.key)
    }

    pub fn is_closed(&self) -> bool {
        self.owner.lock().closed
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}
