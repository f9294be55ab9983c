//! Peer tickets: what lets one puppet fetch one content from another
//! puppet of its site (see the README, "Sites and the peer cache").
//!
//! The puppeteer signs a ticket with the serving peer's own ticket key
//! (HMAC-SHA256; the key is the peer's, sent in its `PeerOffer`), naming the
//! content, the peer, the fetcher and an expiry. The peer checks it against
//! the same key: a ticket opens this content at this peer, until it expires,
//! and nothing else. Its text is `v1:SHA256:PEER:FETCHER:EXPIRES_MS:MAC`,
//! names being of `[a-z0-9.-]`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What a ticket allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    pub sha256: String,
    pub peer: String,
    pub fetcher: String,
    /// Milliseconds since the epoch.
    pub expires_ms: i64,
}

/// Why a ticket is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    #[error("the ticket is malformed")]
    Malformed,
    #[error("the ticket is not signed for this peer")]
    BadSignature,
    #[error("the ticket expired")]
    Expired,
}

fn mac(key: &[u8], body: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(body.as_bytes());
    mac
}

impl Ticket {
    fn body(&self) -> String {
        format!(
            "v1:{}:{}:{}:{}",
            self.sha256, self.peer, self.fetcher, self.expires_ms
        )
    }

    /// The ticket's text, signed with the peer's `key`.
    pub fn sign(&self, key: &[u8]) -> String {
        let body = self.body();
        let tag = hex::encode(mac(key, &body).finalize().into_bytes());
        format!("{body}:{tag}")
    }

    /// Checks `text` against the peer's `key` and the time `now_ms`.
    pub fn verify(text: &str, key: &[u8], now_ms: i64) -> Result<Ticket, TicketError> {
        if text.len() > 512 {
            return Err(TicketError::Malformed);
        }
        let (body, tag) = text.rsplit_once(':').ok_or(TicketError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| TicketError::Malformed)?;
        let parts: Vec<&str> = body.split(':').collect();
        let [version, sha256, peer, fetcher, expires] = parts[..] else {
            return Err(TicketError::Malformed);
        };
        if version != "v1" {
            return Err(TicketError::Malformed);
        }
        mac(key, body)
            .verify_slice(&tag)
            .map_err(|_| TicketError::BadSignature)?;
        let expires_ms: i64 = expires.parse().map_err(|_| TicketError::Malformed)?;
        if expires_ms <= now_ms {
            return Err(TicketError::Expired);
        }
        Ok(Ticket {
            sha256: sha256.into(),
            peer: peer.into(),
            fetcher: fetcher.into(),
            expires_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> Ticket {
        Ticket {
            sha256: "ab".repeat(32),
            peer: "p1".into(),
            fetcher: "p2".into(),
            expires_ms: 1_000,
        }
    }

    #[test]
    fn a_ticket_opens_what_it_names_until_it_expires() {
        let text = ticket().sign(b"key");
        assert_eq!(Ticket::verify(&text, b"key", 999), Ok(ticket()));
        assert_eq!(
            Ticket::verify(&text, b"key", 1_000),
            Err(TicketError::Expired)
        );
        assert_eq!(
            Ticket::verify(&text, b"other", 0),
            Err(TicketError::BadSignature)
        );
        // Any change to what it names breaks the signature.
        let forged = text.replace(":p2:", ":p3:");
        assert_eq!(
            Ticket::verify(&forged, b"key", 0),
            Err(TicketError::BadSignature)
        );
        let later = text.replace(":1000:", ":9000:");
        assert_eq!(
            Ticket::verify(&later, b"key", 0),
            Err(TicketError::BadSignature)
        );
        for bad in ["", "v1", "v2:a:b:c:1:00", &"x".repeat(600)] {
            assert_eq!(
                Ticket::verify(bad, b"key", 0),
                Err(TicketError::Malformed),
                "{bad}"
            );
        }
    }
}
