//! The worker's side of per-request rules and per-caller limits: where each limit
//! is asked (a full handshake's signature, the end of the handshake, a request),
//! and what is counted and logged. The decisions are `proxy::authz`'s.
//!
//! I/O contract: none beyond the worker's (log lines go to its sink).
#![forbid(unsafe_code)]

use super::Worker;
use crate::proxy::authz::gate::GateEvent;
use crate::proxy::authz::limits::{CallerKey, Limit, Verdict};
use crate::proxy::authz::Action;
use crate::proxy::conn::Phase;
use crate::runtime::driver::Driver;
use crate::runtime::slot::{Side, SlotId, Token};
use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

impl<D: Driver<Token>> Worker<D> {
    /// Feed a client's bytes to its connection; while it handshakes on a listener
    /// with `handshakes_per_second_per_source`, a full handshake's signature first
    /// takes a token of its source address (`tls::sign_gate`).
    pub(super) fn client_data(&mut self, id: SlotId, data: &mut [u8], now: Instant) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        let live = s.live.clone();
        let source = s.client_addr.map(|a| a.ip());
        let gated = live.caller_limits.handshakes_per_second_per_source > 0
            && s.conn.phase() == Phase::Handshaking;
        let Some(ip) = source.filter(|_| gated) else {
            return s.conn.handle_data(Side::Client, data, now);
        };
        let limits = self.listeners[s.listener].shared.caller_limits.clone();
        let seen: Rc<Cell<Option<Verdict>>> = Rc::default();
        let record = seen.clone();
        let gate = Box::new(move || {
            let v = limits.handshake(&live.caller_limits, ip, now);
            record.set(Some(v));
            !matches!(v, Verdict::Limited { .. })
        });
        crate::tls::sign_gate::with_gate(gate, || s.conn.handle_data(Side::Client, data, now));
        if let Some(Verdict::Limited { .. } | Verdict::WouldLimit { .. }) = seen.get() {
            let enforced = matches!(seen.get(), Some(Verdict::Limited { .. }));
            let caller = CallerKey::addr(ip).to_string();
            self.limit_seen(id, Limit::Handshakes, enforced, &caller);
        }
    }

    /// The handshake is done: count the connection against its caller's
    /// `max_connections_per_caller`. False: refused (the connection answers 429 or
    /// close_notify and closes; no upstream is dialled).
    pub(super) fn admit_caller(&mut self, id: SlotId, now: Instant) -> bool {
        let Some(s) = self.slots.get_mut(id) else {
            return false;
        };
        let settings = &s.live.caller_limits;
        if settings.max_connections_per_caller == 0 {
            return true;
        }
        let leaf = s.conn.verified_peer_certificates().and_then(|c| c.first());
        let key = CallerKey::of(leaf, s.client_addr.map(|a| a.ip()));
        let limits = &self.listeners[s.listener].shared.caller_limits;
        let verdict = limits.open(settings, &key, now);
        let refused = matches!(verdict, Verdict::Limited { .. });
        if refused {
            s.conn.refuse(crate::proxy::conn::CloseReason::Limited);
        }
        let name = key.to_string();
        if !refused {
            // Counted: released when the slot is freed.
            s.caller = Some(Box::new(key));
        }
        if verdict != Verdict::Pass {
            self.limit_seen(id, Limit::Connections, refused, &name);
        }
        !refused
    }

    /// Count a limit's verdict and log it (`event = "limited"`).
    fn limit_seen(&mut self, id: SlotId, limit: Limit, enforced: bool, caller: &str) {
        let Some(s) = self.slots.get(id) else {
            return;
        };
        self.metrics[s.listener].limited(limit);
        if self.log.enabled() {
            let at = crate::telemetry::access_log::Endpoints {
                listener: &self.listeners[s.listener].shared.name,
                worker: self.index,
                client: s.client_addr,
                upstream: None,
            };
            let line = crate::telemetry::access_log::limited(at, limit, enforced, caller);
            self.log.send_line(line);
        }
        self.touched();
    }

    /// Count and log what an http listener's rules and limits decided.
    pub(super) fn http_events(&mut self, id: SlotId) {
        let Some(s) = self.slots.get_mut(id) else {
            return;
        };
        let Some(events) = s.conn.drain_http_events() else {
            return;
        };
        let m = &mut self.metrics[s.listener];
        let rules = s.live.http_policy.as_deref().map(|p| &p.rules);
        let at = crate::telemetry::access_log::Endpoints {
            listener: &self.listeners[s.listener].shared.name,
            worker: self.index,
            client: s.client_addr,
            upstream: None,
        };
        for e in events {
            match e {
                GateEvent::Decided { matched, action } => {
                    if let Some(r) = rules {
                        m.http_request(r.name(matched), action == Action::Deny);
                    }
                }
                GateEvent::Limited {
                    limit,
                    enforced,
                    caller,
                } => {
                    m.limited(limit);
                    if self.log.enabled() {
                        let line =
                            crate::telemetry::access_log::limited(at, limit, enforced, &caller);
                        self.log.send_line(line);
                    }
                }
                GateEvent::Denied(d) if self.log.enabled() => {
                    self.log
                        .send_line(crate::telemetry::access_log::http_denied(at, &d));
                }
                GateEvent::Denied(_) => {}
            }
        }
        self.touched();
    }
}
