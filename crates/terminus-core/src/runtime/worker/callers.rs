//! The worker's side of the callers inventory and the candidate policy's counters:
//! each handshake's client-auth verdicts, and who the caller was.
//!
//! I/O contract: one getpeername when the access log and the limits did not take the
//! address already.
#![forbid(unsafe_code)]

use super::Worker;
use crate::proxy::conn::HandshakeFailure;
use crate::runtime::driver::Driver;
use crate::runtime::slot::{Side, SlotId, Token};
use crate::runtime::sock;

impl<D: Driver<Token>> Worker<D> {
    /// Count a handshake's client-auth verdicts (`failed`: why it failed, if it did)
    /// and record its caller.
    pub(super) fn client_auth_seen(&mut self, id: SlotId, failed: Option<HandshakeFailure>) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        let conn = &s.conn;
        let m = &mut self.metrics[s.listener];
        let auth = conn.auth();
        let candidate = auth.and_then(|a| a.candidate.as_ref()).map(|v| match v {
            Ok(()) => "allow",
            Err(e) => HandshakeFailure::classify(e).as_str(),
        });
        if let Some(v) = candidate {
            m.candidate_verdict(v);
        }
        if let Some(e) = auth.and_then(|a| a.anonymous.as_ref()) {
            m.anonymous(HandshakeFailure::classify(e));
        }
        let Some(table) = self.listeners[s.listener].shared.callers.clone() else {
            return;
        };
        // The leaf: kept by rustls when admitted, else by the verifier's record.
        let chain = conn.tls().peer_certificates();
        let leaf = chain
            .and_then(|c| c.first())
            .map(|d| d.as_ref())
            .or_else(|| {
                auth.and_then(|a| a.refused_leaf.as_ref())
                    .map(|d| d.as_ref())
            })
            .or_else(|| conn.rejected_client().map(|r| r.leaf.as_ref()));
        let leaf = leaf.and_then(|d| self.leaves.facts(d));
        // Verified by the enforced policy, or the candidate's chain checks passed
        // (it allowed, or refused on the allow-list only).
        let verified = conn.verified_peer_certificates().is_some()
            || matches!(candidate, Some("allow" | "policy_denied")) && leaf.is_some()
            || failed == Some(HandshakeFailure::PolicyDenied);
        // The address names only a caller without a verified identity.
        let named = verified && leaf.as_ref().is_some_and(|l| l.identity.is_some());
        let addr = match s.client_addr {
            Some(a) => Some(a.ip()),
            None if named => None,
            None => s.legs[Side::Client as usize]
                .fd
                .as_ref()
                .and_then(sock::peer_addr)
                .map(|a| a.ip()),
        };
        table.record(&crate::telemetry::callers::Sighting {
            leaf,
            verified,
            addr,
            enforced: failed.map_or("allow", |f| f.as_str()),
            candidate,
        });
    }
}
