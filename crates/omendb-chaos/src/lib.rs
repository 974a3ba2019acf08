//! `omendb-chaos` — faults on purpose.
//!
//! Wrappers that inject seeded faults into the WAL's file I/O ([`disk`]) and into object stores
//! ([`store`]), the engine's crash points (`omendb-core`'s `failpoints` feature), a seeded
//! [`simulation`] of workload, faults, crashes and reopens checked against an oracle, a
//! process-kill harness and a TCP fault proxy ([`proxy`]), used to prove that OmenDB never loses
//! an acknowledged write. It is a test tool: nothing in the product depends on it.

pub mod disk;
pub mod kill;
pub mod proxy;
pub mod simulation;
pub mod store;
pub mod workload;
