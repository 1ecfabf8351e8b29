//! The STUN binding responder's logic (RFC 5389): one datagram and its sender's address
//! in, at most one datagram out. Browsers ask it for their server-reflexive address, which
//! on a LAN is their real address, hidden from peers behind an mDNS `.local` name
//! otherwise. Never touches a socket; `net::stun` carries the datagrams.

use bytecodec::{DecodeExt, EncodeExt};
use std::net::SocketAddr;
use stun_codec::rfc5389::attributes::{Fingerprint, UnknownAttributes, XorMappedAddress};
use stun_codec::rfc5389::errors::{BadRequest, UnknownAttribute};
use stun_codec::rfc5389::{attributes::ErrorCode, methods::BINDING, Attribute};
use stun_codec::Attribute as _;
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder};

/// The fixed value in bytes 4..8 of every RFC 5389 message.
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

/// The reply to `packet` from `from`: a Binding success response carrying `from` as
/// XOR-MAPPED-ADDRESS (and FINGERPRINT if the request had one), a 400 or 420 error response
/// for a Binding request the box cannot read, or None for anything that is not a STUN
/// Binding request (garbage, other methods, responses, indications), which is dropped.
pub fn answer(packet: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    // Cheap checks first: most stray datagrams are not STUN at all (RFC 5389 §6: the top
    // two bits are zero and the cookie is fixed; the length is a multiple of 4).
    if packet.len() < 20 || packet[0] & 0xC0 != 0 || packet[4..8] != MAGIC_COOKIE {
        return None;
    }
    let declared = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if declared % 4 != 0 || declared + 20 != packet.len() {
        return None;
    }
    // The message type, read by hand so a request whose attributes are broken still gets
    // its 400: bits C1 (0x0100) and C0 (0x0010) give the class.
    let ty = u16::from_be_bytes([packet[0], packet[1]]);
    let is_request = ty & 0x0110 == 0;
    let method = (ty & 0x000F) | ((ty & 0x00E0) >> 1) | ((ty & 0x3E00) >> 2);
    if !is_request || method != BINDING.as_u16() {
        return None;
    }
    let mut decoder = MessageDecoder::<Attribute>::new();
    let decoded = decoder.decode_from_bytes(packet).ok()?;
    let request = match decoded {
        Ok(m) => m,
        Err(broken) => {
            return error_reply(broken.transaction_id(), BadRequest.into(), None);
        }
    };
    let unknown: Vec<_> = request
        .unknown_attributes()
        .map(|a| a.get_type())
        .filter(|t| t.is_comprehension_required())
        .collect();
    if !unknown.is_empty() {
        let attr = UnknownAttributes::new(unknown);
        return error_reply(
            request.transaction_id(),
            UnknownAttribute.into(),
            Some(attr),
        );
    }
    let mut reply = Message::<Attribute>::new(
        MessageClass::SuccessResponse,
        BINDING,
        request.transaction_id(),
    );
    reply.add_attribute(XorMappedAddress::new(unmapped(from)));
    if request.get_attribute::<Fingerprint>().is_some() {
        let fingerprint = Fingerprint::new(&reply).ok()?;
        reply.add_attribute(fingerprint);
    }
    MessageEncoder::new().encode_into_bytes(reply).ok()
}

fn error_reply(
    transaction_id: stun_codec::TransactionId,
    code: ErrorCode,
    unknown: Option<UnknownAttributes>,
) -> Option<Vec<u8>> {
    let mut reply = Message::<Attribute>::new(MessageClass::ErrorResponse, BINDING, transaction_id);
    reply.add_attribute(code);
    if let Some(unknown) = unknown {
        reply.add_attribute(unknown);
    }
    MessageEncoder::new().encode_into_bytes(reply).ok()
}

/// An IPv4 client reaching a dual-stack socket shows up as `::ffff:a.b.c.d`; it is told
/// its IPv4 address, the one its ICE agent knows itself by.
fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Binding request as a browser sends it to a STUN server: a bare header.
    fn request(tid: [u8; 12], attrs: &[u8]) -> Vec<u8> {
        let mut p = vec![0x00, 0x01];
        p.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&tid);
        p.extend_from_slice(attrs);
        p
    }

    /// (class bits, transaction id, XOR-MAPPED-ADDRESS decoded by hand, per RFC 5389 §15.2).
    fn parse_reply(reply: &[u8]) -> (u16, [u8; 12], Option<SocketAddr>, Vec<u16>) {
        assert_eq!(reply[4..8], MAGIC_COOKIE);
        let ty = u16::from_be_bytes([reply[0], reply[1]]);
        let len = u16::from_be_bytes([reply[2], reply[3]]) as usize;
        assert_eq!(len + 20, reply.len());
        let tid: [u8; 12] = reply[8..20].try_into().unwrap();
        let (mut at, mut mapped, mut types) = (20, None, Vec::new());
        while at < reply.len() {
            let t = u16::from_be_bytes([reply[at], reply[at + 1]]);
            let l = u16::from_be_bytes([reply[at + 2], reply[at + 3]]) as usize;
            let v = &reply[at + 4..at + 4 + l];
            types.push(t);
            if t == 0x0020 {
                let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
                mapped = Some(match v[1] {
                    1 => {
                        let mut ip = [0u8; 4];
                        for i in 0..4 {
                            ip[i] = v[4 + i] ^ MAGIC_COOKIE[i];
                        }
                        SocketAddr::new(ip.into(), port)
                    }
                    _ => {
                        let key: Vec<u8> = MAGIC_COOKIE.iter().chain(&tid).copied().collect();
                        let mut ip = [0u8; 16];
                        for i in 0..16 {
                            ip[i] = v[4 + i] ^ key[i];
                        }
                        SocketAddr::new(ip.into(), port)
                    }
                });
            }
            at += 4 + l.div_ceil(4) * 4;
        }
        (ty, tid, mapped, types)
    }

    #[test]
    fn binding_request_gets_its_own_address_back_v4_and_v6() {
        let tid = *b"abcdefghijkl";
        for from in [
            "192.168.1.23:50123",
            "[fd00::1:2]:61000",
            "[::ffff:10.0.0.7]:4000",
        ] {
            let from: SocketAddr = from.parse().unwrap();
            let reply = answer(&request(tid, &[]), from).expect("a reply");
            let (ty, got_tid, mapped, types) = parse_reply(&reply);
            assert_eq!(ty, 0x0101, "binding success");
            assert_eq!(got_tid, tid);
            assert_eq!(mapped, Some(unmapped(from)));
            assert_eq!(types, [0x0020]);
        }
        let from: SocketAddr = "[::ffff:10.0.0.7]:4000".parse().unwrap();
        assert_eq!(unmapped(from), "10.0.0.7:4000".parse().unwrap());
    }

    #[test]
    fn a_request_with_fingerprint_gets_one_back_and_software_is_ignored() {
        // SOFTWARE "ab" (comprehension-optional, padded), then a FINGERPRINT.
        let software = [0x80, 0x22, 0x00, 0x02, b'a', b'b', 0, 0];
        let mut req = request([7; 12], &software);
        let mut m = MessageDecoder::<Attribute>::new()
            .decode_from_bytes(&req)
            .unwrap()
            .unwrap();
        let fp = Fingerprint::new(&m).unwrap();
        m.add_attribute(fp);
        req = MessageEncoder::new().encode_into_bytes(m).unwrap();
        let reply = answer(&req, "127.0.0.1:9".parse().unwrap()).unwrap();
        let (ty, _, mapped, types) = parse_reply(&reply);
        assert_eq!(ty, 0x0101);
        assert_eq!(mapped, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(types, [0x0020, 0x8028]);
    }

    #[test]
    fn garbage_responses_and_other_methods_are_dropped() {
        let from: SocketAddr = "127.0.0.1:5".parse().unwrap();
        let good = request([1; 12], &[]);
        assert!(answer(&good, from).is_some());
        let mut cases: Vec<Vec<u8>> = vec![
            vec![],
            b"hello, world, this is not STUN".to_vec(),
            good[..19].to_vec(),
            [good.clone(), vec![0, 0, 0, 0]].concat(), // length field disagrees
        ];
        let mut bad_cookie = good.clone();
        bad_cookie[4] = 0;
        cases.push(bad_cookie);
        let mut response = good.clone();
        response[1] = 0x01;
        response[0] = 0x01; // binding success response
        cases.push(response);
        let mut indication = good.clone();
        indication[1] = 0x11;
        cases.push(indication);
        let mut allocate = good.clone();
        allocate[1] = 0x03; // TURN Allocate request
        cases.push(allocate);
        let mut rtp = good.clone();
        rtp[0] = 0x80;
        cases.push(rtp);
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(answer(c, from), None, "case {i}");
        }
    }

    #[test]
    fn unreadable_or_unknown_required_attributes_get_error_responses() {
        let from: SocketAddr = "127.0.0.1:5".parse().unwrap();
        // An XOR-MAPPED-ADDRESS with an impossible family: the attribute cannot be read.
        let broken = [0x00, 0x20, 0x00, 0x08, 0x00, 0x09, 0, 0, 1, 2, 3, 4];
        let reply = answer(&request([2; 12], &broken), from).unwrap();
        let (ty, tid, _, types) = parse_reply(&reply);
        assert_eq!((ty, tid), (0x0111, [2; 12]), "binding error response");
        assert_eq!(types, [0x0009]);
        assert_eq!(reply[20 + 4 + 2..20 + 4 + 4], [4, 0], "400 Bad Request");

        // A comprehension-required attribute the box does not know: 420.
        let unknown = [0x00, 0x7F, 0x00, 0x04, 1, 2, 3, 4];
        let reply = answer(&request([3; 12], &unknown), from).unwrap();
        let (ty, _, _, types) = parse_reply(&reply);
        assert_eq!(ty, 0x0111);
        assert_eq!(types, [0x0009, 0x000A]);
        assert_eq!(
            reply[20 + 4 + 2..20 + 4 + 4],
            [4, 20],
            "420 Unknown Attribute"
        );
    }
}
