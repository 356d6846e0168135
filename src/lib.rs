//! vvold: an iSCSI target that serves VMware Virtual Volumes through Protocol Endpoints.
//!
//! Layers, lowest first (no layer calls one above it):
//! - [`backend`]: block devices (ram, null, file over io_uring)
//! - [`scsi`]: SPC/SBC command emulation, pure
//! - [`iscsi`]: PDU codec, login and negotiation, session sequencing, pure
//! - [`net`]: the async edge: sockets, tasks, timers
//! - [`loadgen`]: an async edge of its own: the `vvold-load` closed-loop load generator

pub mod array;
pub mod backend;
pub mod config;
pub mod control;
pub mod initiator;
pub mod iscsi;
pub mod loadgen;
pub mod net;
pub mod scsi;
#[cfg(test)]
mod seeded;
pub mod store;
pub mod vvol;
