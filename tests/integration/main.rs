//! driftlock's integration tests: one binary. Root tests build their own tmpfs and overlay
//! in a private mount namespace (per test thread) and skip with a reason when not root.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs, unsafe_code)]

mod bypasses;
mod capacity;
mod cli;
mod clients;
mod compat;
mod containers;
mod core;
mod faults;
mod hot_path;
mod kernels;
mod kubernetes;
mod node;
mod private_ns;
mod realism;
mod regressions;
mod support;
mod wrapper;
