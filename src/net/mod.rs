//! The smol shell: sockets, timers and signals. It moves bytes and time into the pure
//! core and the store, and writes out what they answer. Everything here runs on the one
//! event-loop thread.

pub mod api;
pub mod battery;
pub mod http;
pub mod mdns;
pub mod mdns_query;
pub mod notify;
pub mod relay;
pub mod rtc;
pub mod server;
pub mod stun;
pub mod web;
pub mod ws;
