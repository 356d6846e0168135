//! The async edge: listeners, connections, the writer task, and command execution against
//! backends. Protocol decisions are made by the pure `iscsi` and `scsi` layers.

pub mod connection;
pub mod exec;
pub mod frame;
pub mod hooks;
pub mod policy;
pub mod route;
pub mod runners;
pub mod server;
pub mod session;
pub mod tcp;
pub mod workers;
pub mod writer;

use crate::array::Array;
use crate::config::IscsiConfig;
use crate::iscsi::policy::LoginPolicy;
use std::sync::Arc;

/// What every connection of the daemon shares.
pub struct Shared {
    pub array: Array,
    pub policy: Arc<LoginPolicy>,
    pub sessions: session::Sessions,
    pub iscsi: IscsiConfig,
}
