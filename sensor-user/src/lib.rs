//! sluice's agent as a library: the binary (`main.rs`) is a thin CLI over it, so
//! tests can drive every part.

pub mod agent;
pub mod check;
pub mod cli;
pub mod community_id;
pub mod config;
pub mod container;
pub mod control;
pub mod detect;
pub mod events;
pub mod evict;
pub mod flows;
pub mod handover;
pub mod kernel;
pub mod metrics;
pub mod naming;
pub mod ocsf;
pub mod output;
pub mod process_table;
pub mod proxy;
pub mod record;
pub mod respond;
pub mod rotate;
pub mod services;
pub mod sockets;
pub mod spool;
pub mod state;
pub mod text;
pub mod top;
pub mod users;
