//! The console's sessions: a signed cookie, and nothing kept on the server, so a
//! session works on every replica.
//!
//! The cookie holds who signed in (the admin, or the SHA-256 of a client key —
//! never a key), when the session ends and a random nonce, under an HMAC-SHA256.
//! The MAC key derives from the admin key when there is one (sessions then outlive
//! a restart, and all end when the admin key changes), else it is random for the
//! process. A session says who signed in, not what they may do: every page asks
//! the key table again, so a revoked, rotated or expired key ends its sessions at
//! once.
//!
//! Changes are guarded against cross-site requests twice: the cookies are
//! `SameSite=Strict`, and every change carries a token only a page of this
//! session can know (the MAC of its nonce). Before sign-in the same is done with a
//! nonce cookie of its own, so no other site can sign a browser in either.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How long a sign-in form may wait to be sent.
pub const SIGN_IN_SECS: u64 = 600;

/// How long a session lasts from sign-in.
pub const LIFETIME_SECS: u64 = 8 * 3600;

const VERSION: u8 = 1;
/// Version, kind, key hash, expiry, nonce.
const PAYLOAD: usize = 1 + 1 + 32 + 8 + 16;

/// Who signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Admin,
    /// A client key, by its SHA-256.
    Key([u8; 32]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub who: Who,
    /// Unix seconds.
    pub expires: u64,
    nonce: [u8; 16],
}

pub struct Sessions {
    key: [u8; 32],
}

impl Sessions {
    /// Sessions signed with a key derived from `admin_key`, or with this
    /// process's random one.
    pub fn new(admin_key: Option<&str>) -> Sessions {
        static PROCESS_KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let key = match admin_key {
            Some(admin) => Sha256::new()
                .chain_update(b"ragway console sessions\0")
                .chain_update(admin.as_bytes())
                .finalize()
                .into(),
            None => *PROCESS_KEY.get_or_init(crate::admit::grant::random_bytes),
        };
        Sessions { key }
    }

    /// A new session for `who`, from `now` (Unix seconds), as the cookie's value.
    pub fn issue(&self, who: Who, now: u64) -> (Session, String) {
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&crate::admit::grant::random_bytes()[..16]);
        let session = Session {
            who,
            expires: now.saturating_add(LIFETIME_SECS),
            nonce,
        };
        let payload = encode(&session);
        let mac = self.mac(b"session", &payload);
        let value = format!("{}.{}", B64.encode(payload), B64.encode(mac));
        (session, value)
    }

    /// The session a cookie's value holds, if it is this gateway's, whole and
    /// not over.
    pub fn read(&self, value: &str, now: u64) -> Option<Session> {
        let (payload, mac) = value.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let mac = B64.decode(mac).ok()?;
        self.verify(b"session", &payload, &mac)?;
        let session = decode(&payload)?;
        (session.expires > now).then_some(session)
    }

    /// The token every change in this session must carry.
    pub fn csrf(&self, session: &Session) -> String {
        B64.encode(self.mac(b"csrf", &session.nonce))
    }

    /// Whether `presented` is this session's token.
    pub fn csrf_matches(&self, session: &Session, presented: &str) -> bool {
        B64.decode(presented.trim())
            .ok()
            .and_then(|mac| self.verify(b"csrf", &session.nonce, &mac))
            .is_some()
    }

    /// A nonce for the sign-in form's own cookie (the time it was made, and
    /// random bytes), and the token its form carries.
    pub fn sign_in_nonce(&self, now: u64) -> (String, String) {
        let random = B64.encode(&crate::admit::grant::random_bytes()[..16]);
        let nonce = format!("{now}.{random}");
        let token = B64.encode(self.mac(b"sign-in", nonce.as_bytes()));
        (nonce, token)
    }

    /// Whether a sign-in form's token belongs to the nonce in its cookie, made in
    /// the last [`SIGN_IN_SECS`] (a pair copied from an old form is no use).
    pub fn sign_in_matches(&self, nonce: &str, presented: &str, now: u64) -> bool {
        let made = nonce
            .split_once('.')
            .and_then(|(t, _)| t.parse::<u64>().ok());
        let fresh = made.is_some_and(|t| t <= now && now - t < SIGN_IN_SECS);
        fresh
            && B64
                .decode(presented.trim())
                .ok()
                .and_then(|mac| self.verify(b"sign-in", nonce.as_bytes(), &mac))
                .is_some()
    }

    fn hmac(&self, purpose: &[u8], data: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(purpose);
        mac.update(&[0]);
        mac.update(data);
        mac
    }

    fn mac(&self, purpose: &[u8], data: &[u8]) -> [u8; 32] {
        self.hmac(purpose, data).finalize().into_bytes().into()
    }

    /// `Some` when `mac` is right, compared in constant time.
    fn verify(&self, purpose: &[u8], data: &[u8], mac: &[u8]) -> Option<()> {
        self.hmac(purpose, data).verify_slice(mac).ok()
    }
}

fn encode(session: &Session) -> [u8; PAYLOAD] {
    let mut out = [0u8; PAYLOAD];
    out[0] = VERSION;
    match session.who {
        Who::Admin => out[1] = 0,
        Who::Key(hash) => {
            out[1] = 1;
            out[2..34].copy_from_slice(&hash);
        }
    }
    out[34..42].copy_from_slice(&session.expires.to_le_bytes());
    out[42..58].copy_from_slice(&session.nonce);
    out
}

fn decode(bytes: &[u8]) -> Option<Session> {
    if bytes.len() != PAYLOAD || bytes[0] != VERSION {
        return None;
    }
    let who = match bytes[1] {
        0 => Who::Admin,
        1 => Who::Key(bytes[2..34].try_into().ok()?),
        _ => return None,
    };
    Some(Session {
        who,
        expires: u64::from_le_bytes(bytes[34..42].try_into().ok()?),
        nonce: bytes[42..58].try_into().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn a_session_reads_back_until_it_ends() {
        let sessions = Sessions::new(Some("admin-secret"));
        let who = Who::Key([7; 32]);
        let (session, cookie) = sessions.issue(who, NOW);
        assert_eq!(sessions.read(&cookie, NOW + 60), Some(session.clone()));
        assert_eq!(sessions.read(&cookie, NOW + LIFETIME_SECS), None);
        // Another gateway with the same admin key reads it; another key does not.
        assert!(
            Sessions::new(Some("admin-secret"))
                .read(&cookie, NOW)
                .is_some()
        );
        assert!(Sessions::new(Some("other")).read(&cookie, NOW).is_none());
        assert!(Sessions::new(None).read(&cookie, NOW).is_none());
        // Without an admin key, the process's own key: the same for every call.
        let (_, local) = Sessions::new(None).issue(Who::Admin, NOW);
        assert!(Sessions::new(None).read(&local, NOW).is_some());
    }

    #[test]
    fn a_forged_or_altered_cookie_is_nobody() {
        let sessions = Sessions::new(Some("admin-secret"));
        let (_, cookie) = sessions.issue(Who::Key([7; 32]), NOW);
        let (payload, mac) = cookie.split_once('.').unwrap();
        let mut bytes = B64.decode(payload).unwrap();
        bytes[1] = 0; // "admin"
        let altered = format!("{}.{mac}", B64.encode(&bytes));
        assert_eq!(sessions.read(&altered, NOW), None);
        for junk in ["", ".", "x.y", "a.b.c", &"A".repeat(5000)] {
            assert_eq!(sessions.read(junk, NOW), None, "{junk}");
        }
    }

    #[test]
    fn tokens_belong_to_their_session_and_form() {
        let sessions = Sessions::new(None);
        let (a, _) = sessions.issue(Who::Admin, NOW);
        let (b, _) = sessions.issue(Who::Admin, NOW);
        let token = sessions.csrf(&a);
        assert!(sessions.csrf_matches(&a, &token));
        assert!(!sessions.csrf_matches(&b, &token));
        assert!(!sessions.csrf_matches(&a, ""));
        let (nonce, form) = sessions.sign_in_nonce(NOW);
        assert!(sessions.sign_in_matches(&nonce, &form, NOW + 10));
        assert!(!sessions.sign_in_matches(&nonce, &form, NOW + SIGN_IN_SECS));
        let (other, _) = sessions.sign_in_nonce(NOW);
        assert!(!sessions.sign_in_matches(&other, &form, NOW));
        // The time is under the MAC: moving it forward breaks the token.
        let (_, random) = nonce.split_once('.').unwrap();
        let moved = format!("{}.{random}", NOW + 500);
        assert!(!sessions.sign_in_matches(&moved, &form, NOW + 600));
    }
}
