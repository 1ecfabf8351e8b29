//! Family signaling on `/signal` (seed plan 004): sockets register into a family, see
//! which of the family's devices are online, and pass offers, answers and ICE candidates
//! to one another by device id. A family is a room: nothing crosses into another family.
//! Sans-IO like the rest of the hub; the number of families and of devices in each is
//! bounded, and so are the sockets, by the shell's connection limit.

use super::{
    clean_label, frame, optional_str, parse_message, required_str, send, ConnId, ErrorWindow, Hub,
    Now, Output, Reject, TokenBucket,
};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;

/// Longest family, user or device id on `/signal`, in chars.
const MAX_ID_CHARS: usize = 128;

/// One socket on `/signal`.
#[derive(Debug)]
struct Member {
    /// (family, device, user) once registered.
    seat: Option<(String, String, String)>,
    last_heard: Instant,
    bucket: TokenBucket,
    errors: ErrorWindow,
}

/// The sockets on `/signal` and the families they registered into.
#[derive(Debug, Default)]
pub(super) struct Families {
    members: BTreeMap<ConnId, Member>,
    /// family id → device id → conn. At most `max_families`, each at most
    /// `max_family_devices`; an emptied family is removed.
    rooms: BTreeMap<String, BTreeMap<String, ConnId>>,
}

impl Families {
    pub(super) fn next_deadline(&self, timeout: std::time::Duration) -> Option<Instant> {
        self.members.values().map(|m| m.last_heard + timeout).min()
    }

    pub(super) fn family_count(&self) -> usize {
        self.rooms.len()
    }
}

// The `/signal` socket's lifecycle and messages.
impl Hub {
    /// A socket on `/signal` opened. It must `register` before it can signal.
    pub fn signal_connect(&mut self, now: Now, conn: ConnId) {
        self.families.members.insert(
            conn,
            Member {
                seat: None,
                last_heard: now.at,
                bucket: TokenBucket::full(now.at, self.limits.messages_per_sec),
                errors: ErrorWindow::new(now.at),
            },
        );
    }

    /// The `/signal` socket closed: its family gets `device-offline`. Unknown conn: no-op.
    pub fn signal_disconnect(&mut self, _now: Now, conn: ConnId, out: &mut Vec<Output>) {
        if let Some(m) = self.families.members.remove(&conn) {
            if let Some((family, device, _)) = m.seat {
                self.leave_family(conn, &family, &device, out);
            }
        }
    }

    /// A text frame on `/signal`. Errors are answered with `error`; a flood of them closes
    /// the socket, as on `/ws`.
    pub fn signal_text(&mut self, now: Now, conn: ConnId, text: &str, out: &mut Vec<Output>) {
        let rate = self.limits.messages_per_sec;
        let max_frame = self.limits.p2p.max_sdp_bytes + 4096;
        let Some(m) = self.families.members.get_mut(&conn) else {
            return;
        };
        m.last_heard = m.last_heard.max(now.at);
        let result = m
            .bucket
            .admit(now.at, rate, text.len(), max_frame)
            .and_then(|()| self.signal_parse(conn, text, out));
        let Err(reject) = result else {
            return;
        };
        let mut reply = json!({"type": "error", "code": reject.code, "message": reject.message});
        if let Some(t) = reject.ref_type {
            reply["ref_type"] = json!(t);
        }
        send(out, conn, frame(reply));
        let m = self.families.members.get_mut(&conn).expect("present");
        let count = m.errors.record(now.at);
        // A stale candidate after the peer left is a race, not abuse.
        if reject.code != "device_not_found"
            && self.limits.max_errors > 0
            && count >= self.limits.max_errors
        {
            out.push(Output::Close {
                conn,
                code: 1008,
                reason: "too many bad messages",
            });
            self.signal_disconnect(now, conn, out);
        }
    }

    /// Any frame arrived on `/signal` (a pong, say): resets its heartbeat deadline.
    pub fn signal_heard(&mut self, now: Now, conn: ConnId) {
        if let Some(m) = self.families.members.get_mut(&conn) {
            m.last_heard = m.last_heard.max(now.at);
        }
    }

    fn signal_parse(
        &mut self,
        conn: ConnId,
        text: &str,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let (msg, ty) = parse_message(text)?;
        let ty = ty.as_str();
        let result = match ty {
            "register" => self.on_register(conn, &msg, out),
            "offer" | "answer" | "ice-candidate" => self.on_family_signal(conn, ty, &msg, out),
            "ping" => {
                send(out, conn, frame(json!({"type": "pong"})));
                Ok(())
            }
            t => Err(Reject::new(
                "unknown_type",
                format!("unknown message type `{t}` on /signal"),
            )),
        };
        result.map_err(|mut r| {
            r.ref_type = Some(ty.to_owned());
            r
        })
    }

    /// `register` `{familyId, userId, deviceId}`: joins the family (leaving any other
    /// first). The family's others get `device-online`; the new device gets one
    /// `device-online` per device already there, then `registered`. The same device id
    /// registering again on a new socket replaces the old socket (closed with 4000).
    fn on_register(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let family = seat_id(msg, "familyId")?;
        let user = seat_id(msg, "userId")?;
        let device = seat_id(msg, "deviceId")?;
        let p = &self.limits.p2p;
        let room = self.families.rooms.get(&family);
        let seated_here = self.families.members[&conn]
            .seat
            .as_ref()
            .is_some_and(|(f, d, _)| *f == family && *d == device);
        let taken = room.is_some_and(|r| r.contains_key(&device));
        match room {
            None if self.families.rooms.len() >= p.max_families => {
                return Err(Reject::new(
                    "too_many_families",
                    format!("the box holds {} families already", p.max_families),
                ))
            }
            Some(r) if !taken && r.len() >= p.max_family_devices => {
                return Err(Reject::new(
                    "family_full",
                    format!(
                        "family {family} has {} devices online already",
                        p.max_family_devices
                    ),
                ))
            }
            _ => {}
        }
        if !seated_here {
            if let Some((f, d, _)) = self.families.members.get_mut(&conn).unwrap().seat.take() {
                self.leave_family(conn, &f, &d, out);
            }
            let room = self.families.rooms.entry(family.clone()).or_default();
            let replaced = room.insert(device.clone(), conn);
            if let Some(old) = replaced.filter(|&old| old != conn) {
                // The device came back on a new socket: the old one goes quietly.
                self.families.members.remove(&old);
                out.push(Output::Close {
                    conn: old,
                    code: 4000,
                    reason: "replaced by a newer connection",
                });
            }
            let others: Vec<(String, ConnId)> = self.families.rooms[&family]
                .iter()
                .filter(|(d, _)| **d != device)
                .map(|(d, &c)| (d.clone(), c))
                .collect();
            if replaced.is_none() {
                let online = frame(json!({"type": "device-online", "familyId": family,
                                          "deviceId": device}));
                for (_, c) in &others {
                    send(out, *c, Rc::clone(&online));
                }
            }
            for (d, _) in &others {
                send(
                    out,
                    conn,
                    frame(json!({"type": "device-online", "familyId": family, "deviceId": d})),
                );
            }
        }
        self.families.members.get_mut(&conn).unwrap().seat =
            Some((family.clone(), device.clone(), user));
        send(
            out,
            conn,
            frame(json!({"type": "registered", "familyId": family, "deviceId": device})),
        );
        Ok(())
    }

    /// `offer` / `answer` `{toDeviceId, sdp}` and `ice-candidate` `{toDeviceId, candidate}`:
    /// forwarded with `fromDeviceId` to a device of the sender's own family.
    fn on_family_signal(
        &mut self,
        conn: ConnId,
        ty: &str,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let Some((family, me, _)) = self.families.members[&conn].seat.clone() else {
            return Err(Reject::new(
                "not_registered",
                "send register with familyId, userId and deviceId first",
            ));
        };
        if let Some(claimed) = optional_str(msg, "familyId")? {
            if claimed != family {
                return Err(Reject::new(
                    "wrong_family",
                    format!("this socket is registered in family {family}, not {claimed}"),
                ));
            }
        }
        let to = required_str(msg, "toDeviceId")?;
        let (field, max) = if ty == "ice-candidate" {
            ("candidate", self.limits.p2p.max_candidate_bytes)
        } else {
            ("sdp", self.limits.p2p.max_sdp_bytes)
        };
        let payload = msg
            .get(field)
            .ok_or_else(|| Reject::new("missing_field", format!("field `{field}` is missing")))?;
        let len = payload.to_string().len();
        if len > max {
            return Err(Reject::new(
                "too_large",
                format!("`{field}` is {len} bytes; the limit is {max}"),
            ));
        }
        let Some(&target) = self.families.rooms.get(&family).and_then(|r| r.get(to)) else {
            return Err(Reject::new(
                "device_not_found",
                format!("device {to} is not online in family {family}"),
            ));
        };
        let mut fwd = Map::new();
        fwd.insert("type".into(), json!(ty));
        fwd.insert("fromDeviceId".into(), json!(me));
        fwd.insert(field.into(), payload.clone());
        send(out, target, frame(Value::Object(fwd)));
        Ok(())
    }

    /// Takes `device` (on `conn`) out of `family`; the rest get `device-offline`.
    fn leave_family(&mut self, conn: ConnId, family: &str, device: &str, out: &mut Vec<Output>) {
        let Some(room) = self.families.rooms.get_mut(family) else {
            return;
        };
        // A replaced socket no longer holds the seat.
        if room.get(device) != Some(&conn) {
            return;
        }
        room.remove(device);
        let offline = frame(json!({"type": "device-offline", "familyId": family,
                                   "deviceId": device}));
        for &c in room.values() {
            send(out, c, Rc::clone(&offline));
        }
        if room.is_empty() {
            self.families.rooms.remove(family);
        }
    }

    /// Closes `/signal` sockets silent for longer than the heartbeat timeout.
    pub(super) fn expire_signal_sockets(&mut self, now: Now, out: &mut Vec<Output>) {
        let timeout = self.limits.heartbeat_timeout;
        let silent: Vec<ConnId> = self
            .families
            .members
            .iter()
            .filter(|(_, m)| m.last_heard + timeout <= now.at)
            .map(|(&c, _)| c)
            .collect();
        for conn in silent {
            out.push(Output::Close {
                conn,
                code: 1001,
                reason: "heartbeat timeout",
            });
            self.signal_disconnect(now, conn, out);
        }
    }
}

/// A family, user or device id: 1 to 128 chars, no control chars.
fn seat_id(msg: &Map<String, Value>, field: &str) -> Result<String, Reject> {
    let raw = required_str(msg, field)?;
    let clean = clean_label(raw, MAX_ID_CHARS);
    if clean.is_empty() || clean != raw {
        return Err(Reject::new(
            "bad_id",
            format!("`{field}` must be 1 to {MAX_ID_CHARS} characters without control characters or surrounding spaces"),
        ));
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{closes, error_code, hub, to, Clock};
    use super::*;
    use crate::core::hub::HubLimits;

    fn sig(hub: &mut Hub, now: Now, conn: ConnId, text: &str) -> Vec<Output> {
        let mut out = Vec::new();
        hub.signal_text(now, conn, text, &mut out);
        out
    }

    fn register(hub: &mut Hub, now: Now, conn: ConnId, family: &str, device: &str) -> Vec<Output> {
        hub.signal_connect(now, conn);
        let msg =
            json!({"type": "register", "familyId": family, "userId": "u", "deviceId": device});
        sig(hub, now, conn, &msg.to_string())
    }

    #[test]
    fn register_announces_both_ways_and_offers_stay_in_the_family() {
        let clock = Clock::new();
        let mut hub = hub();
        let out = register(&mut hub, clock.at(0), 1, "fam", "phone");
        assert_eq!(
            to(&out, 1),
            [json!({"type": "registered", "familyId": "fam", "deviceId": "phone"})]
        );
        let out = register(&mut hub, clock.at(1), 2, "fam", "tablet");
        assert_eq!(
            to(&out, 1),
            [json!({"type": "device-online", "familyId": "fam", "deviceId": "tablet"})]
        );
        assert_eq!(
            to(&out, 2),
            [
                json!({"type": "device-online", "familyId": "fam", "deviceId": "phone"}),
                json!({"type": "registered", "familyId": "fam", "deviceId": "tablet"}),
            ]
        );
        let out = register(&mut hub, clock.at(2), 3, "other", "laptop");
        assert!(
            to(&out, 1).is_empty() && to(&out, 2).is_empty(),
            "families are rooms"
        );
        assert_eq!(hub.family_count(), 2);

        for (ty, field, value) in [
            ("offer", "sdp", json!("v=0 offer")),
            ("answer", "sdp", json!("v=0 answer")),
            (
                "ice-candidate",
                "candidate",
                json!({"candidate": "c", "sdpMid": "0"}),
            ),
        ] {
            let msg = json!({"type": ty, "familyId": "fam", "toDeviceId": "tablet", field: value});
            let out = sig(&mut hub, clock.at(3), 1, &msg.to_string());
            assert_eq!(
                to(&out, 2),
                [json!({"type": ty, "fromDeviceId": "phone", field: value})]
            );
            assert!(to(&out, 1).is_empty());
        }
        // Across families: refused to the sender, nothing reaches the other family.
        let msg = json!({"type": "offer", "familyId": "other", "toDeviceId": "laptop", "sdp": "x"});
        let out = sig(&mut hub, clock.at(4), 1, &msg.to_string());
        assert_eq!(error_code(&out, 1).as_deref(), Some("wrong_family"));
        let msg = json!({"type": "offer", "toDeviceId": "laptop", "sdp": "x"});
        let out = sig(&mut hub, clock.at(4), 1, &msg.to_string());
        assert_eq!(error_code(&out, 1).as_deref(), Some("device_not_found"));
        assert!(to(&out, 3).is_empty());

        let mut out = Vec::new();
        hub.signal_disconnect(clock.at(5), 2, &mut out);
        assert_eq!(
            to(&out, 1),
            [json!({"type": "device-offline", "familyId": "fam", "deviceId": "tablet"})]
        );
        assert!(to(&out, 3).is_empty());
        hub.signal_disconnect(clock.at(5), 1, &mut out);
        assert_eq!(hub.family_count(), 1, "an empty family is forgotten");
    }

    #[test]
    fn bad_messages_and_signals_before_register_get_errors() {
        let clock = Clock::new();
        let mut hub = hub();
        hub.signal_connect(clock.at(0), 1);
        for (text, code) in [
            ("{", "bad_json"),
            (
                r#"{"type":"offer","toDeviceId":"x","sdp":"s"}"#,
                "not_registered",
            ),
            (
                r#"{"type":"register","familyId":"f","userId":"u"}"#,
                "missing_field",
            ),
            (
                r#"{"type":"register","familyId":"","userId":"u","deviceId":"d"}"#,
                "bad_id",
            ),
            (r#"{"type":"dance"}"#, "unknown_type"),
        ] {
            let out = sig(&mut hub, clock.at(1), 1, text);
            assert_eq!(error_code(&out, 1).as_deref(), Some(code), "{text}");
        }
        register(&mut hub, clock.at(2), 2, "f", "d2");
        let out = sig(
            &mut hub,
            clock.at(2),
            2,
            r#"{"type":"offer","toDeviceId":"d2"}"#,
        );
        assert_eq!(error_code(&out, 2).as_deref(), Some("missing_field"));
    }

    #[test]
    fn families_and_their_devices_are_bounded() {
        let clock = Clock::new();
        let mut hub = Hub::new(HubLimits {
            p2p: crate::core::hub::P2pLimits {
                max_families: 1,
                max_family_devices: 2,
                ..Default::default()
            },
            ..HubLimits::default()
        });
        register(&mut hub, clock.at(0), 1, "f", "a");
        register(&mut hub, clock.at(0), 2, "f", "b");
        let out = register(&mut hub, clock.at(0), 3, "f", "c");
        assert_eq!(error_code(&out, 3).as_deref(), Some("family_full"));
        let out = register(&mut hub, clock.at(0), 4, "g", "a");
        assert_eq!(error_code(&out, 4).as_deref(), Some("too_many_families"));
        // The same device on a new socket takes its seat back; the old socket is closed.
        let out = register(&mut hub, clock.at(1), 5, "f", "b");
        assert_eq!(closes(&out), [(2, 4000, "replaced by a newer connection")]);
        assert!(
            to(&out, 1).is_empty(),
            "no new device-online for a replacement"
        );
        let mut out = Vec::new();
        hub.signal_disconnect(clock.at(2), 2, &mut out);
        assert!(out.is_empty(), "the replaced socket's close says nothing");
    }

    #[test]
    fn a_silent_signal_socket_is_closed_and_its_family_told() {
        let clock = Clock::new();
        let mut hub = hub();
        register(&mut hub, clock.at(0), 1, "f", "a");
        register(&mut hub, clock.at(0), 2, "f", "b");
        hub.signal_heard(clock.at(10_000), 2);
        assert_eq!(hub.poll_timeout(), Some(clock.at(15_000).at));
        let mut out = Vec::new();
        hub.handle_timeout(clock.at(15_000), &mut out);
        assert_eq!(closes(&out), [(1, 1001, "heartbeat timeout")]);
        assert_eq!(
            to(&out, 2),
            [json!({"type": "device-offline", "familyId": "f", "deviceId": "a"})]
        );
    }
}
