//! LANVan: a LAN drop-box in one binary. `core` holds the pure state machines, `store` the
//! files on disk, `net` the smol shell that serves them; `config` the settings.

pub mod board;
pub mod cli;
pub mod config;
pub mod core;
pub mod logger;
pub mod net;
pub mod store;
pub mod termux;
