//! The chunk tracker on `/ws` (SPEC8 §2): which P2P-enabled devices hold which manifests
//! (`announce`), and who has manifest X (`query`). Bounded per device; a device's set goes
//! with its P2P opt-in. Never sees a chunk; asks the box's own store only through a lookup.

use super::{frame, send, ConnId, Hub, Output, Reject};
use crate::core::hash::Digest;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;

/// Whether the box itself holds a stored file with this (already computed) manifest.
pub type BoxManifests = Rc<dyn Fn(&Digest) -> bool>;

/// Announced manifests per device.
#[derive(Default)]
pub(super) struct Tracker {
    /// Device id → its announced set; at most `p2p.max_announced` each, and only devices
    /// with P2P enabled, so bounded by `max_devices` too.
    announced: BTreeMap<String, BTreeSet<Digest>>,
    box_manifests: Option<BoxManifests>,
}

impl fmt::Debug for Tracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracker")
            .field("announced", &self.announced)
            .finish()
    }
}

impl Tracker {
    /// Forgets what `device` announced (it disabled P2P or left).
    pub(super) fn forget(&mut self, device: &str) {
        self.announced.remove(device);
    }
}

impl Hub {
    /// Lets `query_result.box` ask the store (set by the shell at start).
    pub fn set_box_manifests(&mut self, lookup: BoxManifests) {
        self.tracker.box_manifests = Some(lookup);
    }

    /// `announce` `{manifests: [hex]}`: replaces the device's announced set.
    pub(super) fn on_announce(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let me = self.conns[&conn].device_id.clone();
        if !self.p2p.is_enabled(&me) {
            return Err(Reject::new(
                "p2p_not_enabled",
                "send enable_p2p before announcing manifests",
            ));
        }
        let Some(list) = msg.get("manifests").and_then(Value::as_array) else {
            return Err(Reject::new(
                "missing_field",
                "field `manifests` is missing or is not an array of manifest hashes",
            ));
        };
        let max = self.limits.p2p.max_announced;
        if list.len() > max {
            return Err(Reject::new(
                "too_many",
                format!("at most {max} manifests per device; announce fewer"),
            ));
        }
        let set = list
            .iter()
            .map(|v| v.as_str().and_then(Digest::from_hex))
            .collect::<Option<BTreeSet<Digest>>>()
            .ok_or_else(bad_hex)?;
        let count = set.len();
        if set.is_empty() {
            self.tracker.announced.remove(&me);
        } else {
            self.tracker.announced.insert(me, set);
        }
        send(
            out,
            conn,
            frame(json!({"type": "announced", "count": count})),
        );
        Ok(())
    }

    /// `query` `{manifest}`: who holds it, the box first.
    pub(super) fn on_query(
        &mut self,
        conn: ConnId,
        msg: &Map<String, Value>,
        out: &mut Vec<Output>,
    ) -> Result<(), Reject> {
        let hex = super::required_str(msg, "manifest")?;
        let id = Digest::from_hex(hex).ok_or_else(bad_hex)?;
        let me = &self.conns[&conn].device_id;
        let sources: Vec<Value> = self
            .tracker
            .announced
            .iter()
            .filter(|(device, set)| {
                *device != me && set.contains(&id) && self.p2p.is_enabled(device)
            })
            .filter_map(|(device, _)| self.devices.get(device))
            .map(|d| json!({"device_id": d.id, "name": d.name}))
            .collect();
        let on_box = self.tracker.box_manifests.as_ref().is_some_and(|f| f(&id));
        send(
            out,
            conn,
            frame(
                json!({"type": "query_result", "manifest": id, "box": on_box,
                         "sources": sources}),
            ),
        );
        Ok(())
    }
}

fn bad_hex() -> Reject {
    Reject::new("bad_message", "a manifest hash is 64 hexadecimal digits")
}

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use super::*;
    use serde_json::json;

    fn hex(b: u8) -> String {
        Digest([b; 32]).to_hex()
    }

    fn enabled(hub: &mut Hub, clock: &Clock, conn: ConnId, id: &str) {
        join(hub, clock.at(0), conn, id);
        recv(hub, clock.at(0), conn, r#"{"type":"enable_p2p"}"#);
    }

    #[test]
    fn announce_and_query_find_the_other_p2p_devices() {
        let clock = Clock::new();
        let mut hub = hub();
        enabled(&mut hub, &clock, 1, "a");
        enabled(&mut hub, &clock, 2, "b");
        join(&mut hub, clock.at(0), 3, "c");
        let m = hex(1);
        let ann = json!({"type": "announce", "manifests": [m, m, hex(2)]}).to_string();
        let out = recv(&mut hub, clock.at(1), 1, &ann);
        assert_eq!(to(&out, 1), [json!({"type": "announced", "count": 2})]);
        let q = json!({"type": "query", "manifest": m}).to_string();
        // Others see a; a never sees itself; c need not be P2P-enabled to ask.
        for (conn, want) in [
            (2, json!([{"device_id": "a", "name": "Device a"}])),
            (1, json!([])),
            (3, json!([{"device_id": "a", "name": "Device a"}])),
        ] {
            let out = recv(&mut hub, clock.at(2), conn, &q);
            assert_eq!(
                to(&out, conn),
                [json!({"type": "query_result", "manifest": m, "box": false, "sources": want})]
            );
        }
        // The box's own files answer through the lookup.
        hub.set_box_manifests(Rc::new(move |id: &Digest| *id == Digest([1; 32])));
        let out = recv(&mut hub, clock.at(3), 2, &q);
        assert_eq!(to(&out, 2)[0]["box"], true);
        // Disabling P2P forgets the set.
        recv(&mut hub, clock.at(4), 1, r#"{"type":"disable_p2p"}"#);
        let out = recv(&mut hub, clock.at(5), 2, &q);
        assert_eq!(to(&out, 2)[0]["sources"], json!([]));
        // So does leaving.
        recv(&mut hub, clock.at(6), 1, r#"{"type":"enable_p2p"}"#);
        recv(&mut hub, clock.at(6), 1, &ann);
        assert_eq!(recv(&mut hub, clock.at(7), 2, &q).len(), 1);
        hub.disconnect(clock.at(8), 1, &mut Vec::new());
        assert!(hub.tracker.announced.is_empty());
    }

    #[test]
    fn announce_limits_and_bad_input() {
        let clock = Clock::new();
        let mut hub = hub();
        enabled(&mut hub, &clock, 1, "a");
        join(&mut hub, clock.at(0), 2, "b");
        let one = json!({"type": "announce", "manifests": [hex(1)]}).to_string();
        let out = recv(&mut hub, clock.at(1), 2, &one);
        assert_eq!(error_code(&out, 2).as_deref(), Some("p2p_not_enabled"));
        let max = hub.limits.p2p.max_announced;
        let many: Vec<String> = (0..=max)
            .map(|i| Digest::of(&i.to_be_bytes()).to_hex())
            .collect();
        let out = recv(
            &mut hub,
            clock.at(1),
            1,
            &json!({"type": "announce", "manifests": many}).to_string(),
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("too_many"));
        let out = recv(
            &mut hub,
            clock.at(1),
            1,
            r#"{"type":"announce","manifests":["abc"]}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("bad_message"));
        let out = recv(
            &mut hub,
            clock.at(1),
            1,
            r#"{"type":"announce","manifests":"abc"}"#,
        );
        assert_eq!(error_code(&out, 1).as_deref(), Some("missing_field"));
        let out = recv(
            &mut hub,
            clock.at(1),
            2,
            r#"{"type":"query","manifest":"zz"}"#,
        );
        assert_eq!(error_code(&out, 2).as_deref(), Some("bad_message"));
        // Still usable; an empty announce clears.
        let out = recv(
            &mut hub,
            clock.at(2),
            1,
            &json!({"type": "announce", "manifests": many[..max]}).to_string(),
        );
        assert_eq!(to(&out, 1), [json!({"type": "announced", "count": max})]);
        let out = recv(
            &mut hub,
            clock.at(2),
            1,
            r#"{"type":"announce","manifests":[]}"#,
        );
        assert_eq!(to(&out, 1), [json!({"type": "announced", "count": 0})]);
        assert!(hub.tracker.announced.is_empty());
    }

    #[test]
    fn swarm_requests_carry_purpose_and_manifest() {
        let clock = Clock::new();
        let mut hub = hub();
        enabled(&mut hub, &clock, 1, "a");
        enabled(&mut hub, &clock, 2, "b");
        let req = json!({"type": "p2p_request", "to": "b", "purpose": "swarm", "manifest": hex(3)});
        let out = recv(&mut hub, clock.at(1), 1, &req.to_string());
        let got = &to(&out, 2)[0];
        assert_eq!(
            (got["type"].as_str(), got["purpose"].as_str()),
            (Some("p2p_request_received"), Some("swarm"))
        );
        assert_eq!(got["manifest"], hex(3));
        let bad =
            json!({"type": "p2p_request", "to": "b", "purpose": "swarm", "manifest": "nothex"});
        let out = recv(&mut hub, clock.at(2), 1, &bad.to_string());
        assert_eq!(error_code(&out, 1).as_deref(), Some("bad_message"));
        assert!(to(&out, 2).is_empty());
    }
}
