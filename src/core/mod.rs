//! The pure core: state machines and wire types. Nothing here touches a socket, a file,
//! a thread or the clock; time comes in as an argument. The smol shell in `net` and the
//! disk side in `store` drive these types.

pub mod chunks;
pub mod hash;
pub mod hub;
pub mod names;
pub mod peer;
pub mod range;
pub mod relay;
pub mod ring;
pub mod stun;
pub mod upload;
