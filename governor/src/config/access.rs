//! Who may reach what: the control plane's bearer token and the Unix
//! socket's peer allow-list (`[server] admin_token_file`,
//! `uds_allowed_uids`, `uds_allowed_gids`).
//!
//! The token is read when the config is (at start, `--check-config` and on
//! every reload), so a bad token file is a config error naming its key.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use super::ConfigError;

/// Which listeners serve the control plane. It can change every limit, so it
/// answers without credentials only where the network cannot reach it: the
/// Unix socket (guarded by its mode and, optionally, peer credentials) and
/// loopback TCP listeners. See the README's threat model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlPlane {
    /// The Unix socket and loopback TCP listeners without credentials; a
    /// non-loopback TCP listener only with `server.admin_token_file`'s bearer
    /// token (without a token file it refuses every call, PERMISSION_DENIED).
    All,
    /// Only the Unix socket (`server.uds` must be set), token or not.
    UnixSocket,
    /// Nowhere.
    Off,
}

impl FromStr for ControlPlane {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "all" => Ok(ControlPlane::All),
            "uds" => Ok(ControlPlane::UnixSocket),
            "off" => Ok(ControlPlane::Off),
            other => Err(format!(
                "unknown value {other:?}: use \"all\", \"uds\" or \"off\""
            )),
        }
    }
}

/// Longest token file accepted: a token is a line, not a document.
const MAX_TOKEN_BYTES: usize = 4096;

/// The control plane's bearer token. Never shown: `Debug` prints its length.
#[derive(Clone)]
pub struct AdminToken {
    secret: Arc<[u8]>,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminToken(<{} bytes, redacted>)", self.secret.len())
    }
}

impl PartialEq for AdminToken {
    fn eq(&self, other: &Self) -> bool {
        self.matches(&other.secret)
    }
}

impl AdminToken {
    /// Reads the token from `path`: the file's content with trailing
    /// newlines (and a carriage return) trimmed. `key` names the setting in
    /// errors. Empty, unreadable, oversized and multi-line files are refused.
    pub fn read(path: &Path, key: &str) -> Result<AdminToken, ConfigError> {
        let at = |problem: String| ConfigError::at(key, format!("{}: {problem}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| at(format!("cannot read: {e}")))?;
        if bytes.len() > MAX_TOKEN_BYTES {
            return Err(at(format!(
                "the file has {} bytes; a token is at most {MAX_TOKEN_BYTES}",
                bytes.len()
            )));
        }
        let mut end = bytes.len();
        while end > 0 && matches!(bytes[end - 1], b'\n' | b'\r') {
            end -= 1;
        }
        let token = &bytes[..end];
        if token.is_empty() {
            return Err(at("the file is empty; write the token in it".into()));
        }
        if let Some(at_byte) = token.iter().position(|&b| !(0x21..=0x7e).contains(&b)) {
            return Err(at(format!(
                "the token must be printable ASCII without spaces (it travels in an HTTP header); \
                 byte {at_byte} is not"
            )));
        }
        Ok(AdminToken {
            secret: Arc::from(token),
        })
    }

    /// The token's text, to send it (`governor status --admin-token-file`);
    /// never to show it.
    pub fn reveal(&self) -> &str {
        // `read` admits printable ASCII only.
        std::str::from_utf8(&self.secret).unwrap_or_default()
    }

    /// Whether `presented` is the token, in time that depends only on the
    /// token's length, never on where the two differ (written here rather
    /// than taken from `subtle`: a dozen lines the compiler cannot turn into
    /// an early exit, as every byte's difference is folded into one value
    /// read through `black_box`).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let secret = &self.secret[..];
        // A length difference is folded in rather than returned early.
        let mut difference = u8::from(secret.len() != presented.len());
        for (i, &byte) in secret.iter().enumerate() {
            let other = presented.get(i).copied().unwrap_or(!byte);
            difference |= std::hint::black_box(byte ^ other);
        }
        std::hint::black_box(difference) == 0
    }
}

/// Which local users may connect to the Unix socket, by the credentials the
/// kernel reports for the connecting process (SO_PEERCRED): its uid is in
/// `uids` or its (effective, primary) gid is in `gids`. Both empty: anyone
/// who can open the socket (mode 0660).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerAllowList {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl PeerAllowList {
    /// Whether both lists are empty (no check at accept).
    pub fn is_open(&self) -> bool {
        self.uids.is_empty() && self.gids.is_empty()
    }

    pub fn admits(&self, uid: u32, gid: u32) -> bool {
        self.is_open() || self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &[u8]) -> Result<AdminToken, String> {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        AdminToken::read(file.path(), "server.admin_token_file").map_err(|e| e.0)
    }

    #[test]
    fn a_token_is_the_file_without_its_trailing_newline() {
        let t = token(b"s3cret-Token_1\n").unwrap();
        assert!(t.matches(b"s3cret-Token_1"));
        assert!(!t.matches(b"s3cret-Token_1\n"));
        assert!(!t.matches(b"s3cret-Token_"));
        assert!(!t.matches(b"s3cret-Token_12"));
        assert!(!t.matches(b"S3cret-Token_1"));
        assert!(!t.matches(b""));
        assert!(token(b"abc\r\n").unwrap().matches(b"abc"));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let t = token(b"hunter2hunter2").unwrap();
        let shown = format!("{t:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("14 bytes"), "{shown}");
    }

    #[test]
    fn bad_token_files_are_refused_naming_the_key() {
        for (content, says) in [
            (&b""[..], "empty"),
            (b"\n\n", "empty"),
            (b"two words", "printable ASCII"),
            (b"line1\nline2", "printable ASCII"),
        ] {
            let error = token(content).unwrap_err();
            assert!(
                error.starts_with("server.admin_token_file:") && error.contains(says),
                "{content:?}: {error}"
            );
        }
        let big = vec![b'a'; MAX_TOKEN_BYTES + 1];
        assert!(token(&big).unwrap_err().contains("at most 4096"));
        let missing = AdminToken::read(Path::new("/nonexistent/token"), "server.admin_token_file")
            .unwrap_err()
            .0;
        assert!(
            missing.starts_with("server.admin_token_file: /nonexistent/token: cannot read"),
            "{missing}"
        );
    }

    #[test]
    fn the_allow_list_admits_by_uid_or_gid() {
        let open = PeerAllowList::default();
        assert!(open.is_open() && open.admits(1000, 1000));
        let uids = PeerAllowList {
            uids: vec![1000],
            gids: vec![],
        };
        assert!(uids.admits(1000, 5) && !uids.admits(1001, 1000));
        let both = PeerAllowList {
            uids: vec![1000],
            gids: vec![2000],
        };
        assert!(both.admits(1000, 1) && both.admits(7, 2000) && !both.admits(7, 1));
    }
}
