//! `omendb-chaos` — faults on purpose.
//!
//! Wrappers that inject seeded faults into the WAL's file I/O and into object stores, crash-point
//! failpoints, a process-kill harness and a TCP fault proxy, used to prove that OmenDB never loses
//! an acknowledged write. It is a test tool: nothing in the product depends on it.
