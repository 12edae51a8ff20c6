//! Example Eddy jobs, each a recipe of the Flink Cookbook written against Eddy's API.
//!
//! * [`customer_totals`]: running totals per customer with exactly-once file output (the job
//!   the crash-recovery tests kill and restore).
//! * [`latest_transaction`]: the keyed-state guide's "latest transaction per customer".
//! * [`session_windows`]: user sessions from a click stream (event-time session windows,
//!   out-of-order and late clicks).
//!
//! Each module exposes its function type (so tests and other jobs can reuse it) and a `run`
//! entry point used by the example's binary and by the `eddy run` command.

pub mod customer_totals;
pub mod latest_transaction;
pub mod session_windows;
