//! dbrouter: a PostgreSQL-native SMS message router.
//!
//! A message's path through the code:
//! - it is enqueued by SQL (`dbrouter.inbox`, `dbrouter.outbox`,
//!   `dbrouter.broadcast()`; tables in `migrations/`, functions in
//!   `schema/`), which wakes the workers;
//! - [`worker`] runs lanes that each loop over [`inbound`] (claim queued
//!   inbound messages, run the [`apps`], write replies, mark R/E) and
//!   [`outbound`] (claim due transmissions per backend, send them through a
//!   [`gateways`] engine, record S/E);
//! - [`admin`] holds what the CLI and operators use besides the worker;
//!   [`console`] is the web console.

pub mod admin;
pub mod apps;
pub mod charset;
pub mod config;
pub mod connections;
pub mod console;
pub mod db;
pub mod error;
pub mod failure_log;
pub mod fanout;
pub mod gateways;
pub mod gsm;
pub mod housekeeping;
pub mod inbound;
pub mod invariants;
pub mod listen;
pub mod metrics;
pub mod outbound;
pub mod progress;
pub mod registry;
pub mod schema;
pub mod segments;
pub mod serve;
pub mod worker;

pub use config::WorkerConfig;
pub use error::Error;
