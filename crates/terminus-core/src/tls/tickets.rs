//! tickets: session-ticket encryption from a key file shared by several instances,
//! so a client resumes on any instance of a fleet (`ticket_key_file`).
//!
//! File format: one key per line, 64 hex digits (32 random bytes, e.g. `openssl rand
//! -hex 32`); `#` comments and blank lines are ignored. The first key encrypts new
//! tickets; every key decrypts. Rotation: prepend a new key on every instance (all
//! instances then still accept tickets from the ones not yet updated), and drop the
//! oldest key once a ticket lifetime has passed. Files are polled like certificates,
//! so rotation needs no restart.
//!
//! Policy binding: the AES-256-GCM key is derived from the file key *and* a digest of
//! the listener's client-auth policy (mode, CA and CRL file contents, allow-list).
//! rustls does not re-run the client-certificate verifier on resumption, so without
//! this a ticket issued before a CRL update or an allow-list change would keep
//! resuming; with it, such tickets no longer decrypt and the client does a full
//! (re-verified) handshake. Instances with the same file and policy derive the same key.
//!
//! Ticket layout: key id (8 bytes) | nonce (12) | AES-256-GCM(ciphertext + tag).
#![forbid(unsafe_code)]

use super::TicketKeyError;
use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest::{digest, Context, SHA256};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use std::path::Path;

const ID_LEN: usize = 8;

pub struct FileTicketer {
    /// First = current encryption key.
    keys: Vec<([u8; ID_LEN], LessSafeKey)>,
    lifetime_s: u32,
    rng: SystemRandom,
}

impl std::fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("FileTicketer")
            .field("keys", &self.keys.len())
            .field("lifetime_s", &self.lifetime_s)
            .finish()
    }
}

impl FileTicketer {
    /// Load `path`; `policy` is the digest of what must invalidate tickets when it
    /// changes. Errors name the file (and line) and why.
    pub fn load(
        path: &Path,
        policy: &[u8],
        lifetime_s: u32,
    ) -> Result<FileTicketer, TicketKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TicketKeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let secret = parse_hex32(line).ok_or_else(|| TicketKeyError::BadKey {
                path: path.to_owned(),
                line: n + 1,
            })?;
            let mut ctx = Context::new(&SHA256);
            ctx.update(b"terminus session ticket key v1\0");
            ctx.update(&secret);
            ctx.update(policy);
            let key = ctx.finish();
            let id = digest(&SHA256, key.as_ref());
            let mut kid = [0u8; ID_LEN];
            kid.copy_from_slice(&id.as_ref()[..ID_LEN]);
            let unbound =
                UnboundKey::new(&AES_256_GCM, key.as_ref()).map_err(|_| TicketKeyError::Aes {
                    path: path.to_owned(),
                })?;
            keys.push((kid, LessSafeKey::new(unbound)));
        }
        if keys.is_empty() {
            return Err(TicketKeyError::NoKey {
                path: path.to_owned(),
            });
        }
        Ok(FileTicketer {
            keys,
            lifetime_s,
            rng: SystemRandom::new(),
        })
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl rustls::server::ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime_s
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let (id, key) = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id),
            &mut body,
        )
        .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < ID_LEN + NONCE_LEN + 16 {
            return None;
        }
        let (id, rest) = cipher.split_at(ID_LEN);
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let (_, key) = self.keys.iter().find(|(k, _)| k == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain_len = key
            .open_in_place(nonce, Aad::from(id), &mut body)
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn file(lines: &str) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "terminus-tk-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, lines).unwrap();
        p
    }

    const K1: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const K2: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn same_file_and_policy_decrypt_each_other_and_rotation_keeps_old_tickets() {
        let a = FileTicketer::load(&file(&format!("{K1}\n")), b"p", 3600).unwrap();
        let b = FileTicketer::load(&file(&format!("# fleet\n{K1}\n")), b"p", 3600).unwrap();
        let t = a.encrypt(b"session state").unwrap();
        assert_eq!(b.decrypt(&t).unwrap(), b"session state");
        // Rotated: new key first, old key still accepted.
        let rotated = FileTicketer::load(&file(&format!("{K2}\n{K1}\n")), b"p", 3600).unwrap();
        assert_eq!(rotated.decrypt(&t).unwrap(), b"session state");
        let t2 = rotated.encrypt(b"new").unwrap();
        assert!(a.decrypt(&t2).is_none(), "old instances lack the new key");
        // Tampering fails authentication.
        let mut bad = t.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(b.decrypt(&bad).is_none());
        assert!(b.decrypt(&t[..10]).is_none());
    }

    #[test]
    fn a_policy_change_invalidates_tickets() {
        let path = file(K1);
        let before = FileTicketer::load(&path, b"crl v1", 3600).unwrap();
        let after = FileTicketer::load(&path, b"crl v2", 3600).unwrap();
        let t = before.encrypt(b"x").unwrap();
        assert!(after.decrypt(&t).is_none());
    }

    #[test]
    fn bad_files_name_the_file_and_line() {
        let p = file("# only a comment\n");
        let e = FileTicketer::load(&p, b"", 1).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()) && e.contains("no ticket key"),
            "{e}"
        );
        let p = file(&format!("{K1}\nnot-hex\n"));
        let e = FileTicketer::load(&p, b"", 1).unwrap_err().to_string();
        assert!(e.contains(":2: ticket key must be 64 hex digits"), "{e}");
        let e = FileTicketer::load(Path::new("/nonexistent/tk"), b"", 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/tk: cannot read"), "{e}");
    }
}
