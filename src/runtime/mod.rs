//! Container start: the runc wrapper that adds driftlock's OCI hooks, and the hooks.
//!
//! `driftlock-runtime` stands in for runc (containerd's `BinaryName`, `ctr run
//! --runc-binary`, `dockerd --add-runtime`, or first in PATH as `runc`). On `create` and
//! `run` it adds a `createRuntime` hook (and, on kernels without pidfds, a `poststop`
//! hook; elsewhere the daemon sees the container's init exit) to the bundle's `config.json`,
//! then replaces itself with the real runc, argv untouched. At `createRuntime` the
//! container's mounts are all in place, its first process (runc init) waits, and nothing
//! of the image has run yet: `driftlock hook createRuntime` asks the daemon to arm the
//! container and returns only once it is armed, so container creation fails if arming
//! does (fail-closed) unless the node is configured fail-open.

pub mod hook;
mod identity;
mod notes;
mod runtime_error;
mod spec;
pub mod wrapper;
