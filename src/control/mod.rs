//! The control service (VASA-provider role): the HTTP/JSON API over the array's VVol
//! operations, embedded in the daemon or standalone against a remote array, where every
//! bind and unbind travels in-band over its own iSCSI session.

pub mod api;
pub mod embedded;
pub mod error;
pub mod model;
pub mod serve;
pub mod standalone;
