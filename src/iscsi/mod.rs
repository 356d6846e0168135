//! iSCSI (RFC 7143), pure: the PDU codec, text keys, login and negotiation, session sequence
//! numbers and data-transfer bookkeeping. Bytes in, typed events and bytes out; no sockets.

pub mod chap;
pub mod data_in;
pub mod digest;
pub mod discovery;
#[cfg(test)]
mod fuzz_tests;
pub mod login;
pub mod negotiate;
pub mod params;
pub mod pdu;
pub mod policy;
pub mod text;
pub mod transfer;
pub mod window;
