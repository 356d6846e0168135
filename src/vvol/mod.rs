//! Virtual Volumes: Protocol Endpoints (administrative LUs), two-level LUN addressing, the
//! binding table, storage containers and the VVol catalog, QoS policy values. Pure and
//! synchronous, like `scsi` and `iscsi`: the daemon glues it to sockets and storage.

pub mod address;
pub mod binding;
pub mod catalog;
pub mod inband;
pub mod qos;
pub mod report;
