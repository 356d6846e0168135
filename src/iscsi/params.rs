//! Session and connection parameters: RFC 7143 §13 defaults, the target's own limits, and the
//! outcome of a negotiation.

/// SessionType key (RFC 7143 §13.21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionType {
    Discovery,
    #[default]
    Normal,
}

impl SessionType {
    pub fn parse(v: &str) -> Option<SessionType> {
        match v {
            "Discovery" => Some(SessionType::Discovery),
            "Normal" => Some(SessionType::Normal),
            _ => None,
        }
    }
}

/// Smallest and largest legal data segment / burst lengths (RFC 7143 §13.12-13.14).
pub const MIN_LENGTH: u64 = 512;
pub const MAX_LENGTH: u64 = (1 << 24) - 1;
/// MaxRecvDataSegmentLength that applies until declared, and during login.
pub const DEFAULT_MAX_RECV_DSL: u32 = 8192;
/// The iSCSIProtocolLevel we implement (RFC 7144: 1 = RFC 7143).
pub const PROTOCOL_LEVEL: u64 = 1;

/// What the target accepts and wants; the negotiation never goes beyond these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLimits {
    /// The largest data segment we accept (declared to the initiator).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub max_outstanding_r2t: u32,
    pub error_recovery_level: u8,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    /// Our DataPDUInOrder / DataSequenceInOrder (OR functions: Yes forces Yes).
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    /// Whether we accept CRC32C digests (we always accept None).
    pub crc32c: bool,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 16 * 1024 * 1024 - 1,
            first_burst_length: 262_144,
            immediate_data: true,
            initial_r2t: false,
            max_outstanding_r2t: 32,
            error_recovery_level: 0,
            default_time2wait: 2,
            default_time2retain: 20,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            crc32c: true,
        }
    }
}

/// The operational parameters a login settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The largest data segment the initiator may send us (what we declared).
    pub max_recv_data_segment_length: u32,
    /// The largest data segment we may send (the initiator's declaration, default 8192).
    pub max_xmit_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub max_outstanding_r2t: u32,
    pub data_pdu_in_order: bool,
    pub data_sequence_in_order: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u8,
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    pub target_name: Option<String>,
}

impl Default for NegotiatedParams {
    /// RFC 7143 §13 defaults.
    fn default() -> Self {
        NegotiatedParams {
            header_digest: false,
            data_digest: false,
            max_recv_data_segment_length: DEFAULT_MAX_RECV_DSL,
            max_xmit_data_segment_length: DEFAULT_MAX_RECV_DSL,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            initial_r2t: true,
            immediate_data: true,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            session_type: SessionType::Normal,
            initiator_name: String::new(),
            initiator_alias: None,
            target_name: None,
        }
    }
}
