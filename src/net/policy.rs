//! Turning the configuration into the login layer's policy: which targets exist on which
//! portals, who may log in, what credentials apply, and the limits we negotiate to.

use crate::config::{ChapConfig, Config};
use crate::iscsi::params::TargetLimits;
use crate::iscsi::policy::{ChapCredentials, ControlLogin, LoginPolicy, Portal, TargetEntry};
use std::net::SocketAddr;

fn creds(c: &Option<ChapConfig>) -> Option<ChapCredentials> {
    c.as_ref().map(|c| ChapCredentials {
        user: c.user.clone(),
        secret: c.secret.clone(),
    })
}

/// Every target is reachable on every portal; a portal's target portal group tag is the id
/// of the target's ALUA port group holding it (1 when the target configures none).
pub fn login_policy(cfg: &Config, portals: &[SocketAddr]) -> LoginPolicy {
    let i = &cfg.iscsi;
    LoginPolicy {
        targets: cfg
            .targets
            .iter()
            .map(|t| TargetEntry {
                name: t.name.clone(),
                alias: t.alias.clone(),
                portals: portals
                    .iter()
                    .map(|&addr| Portal {
                        addr,
                        tpgt: t.group_of(addr),
                    })
                    .collect(),
                allowed_initiators: t.allowed_initiators.clone(),
                chap: creds(&t.chap),
                mutual_chap: creds(&t.mutual_chap),
            })
            .collect(),
        discovery_chap: creds(&i.discovery_chap),
        discovery_mutual_chap: creds(&i.discovery_mutual_chap),
        control: creds(&cfg.control.chap).map(|chap| ControlLogin {
            initiators: cfg
                .control
                .initiators
                .iter()
                .map(|i| i.to_ascii_lowercase())
                .collect(),
            chap,
        }),
        limits: TargetLimits {
            max_recv_data_segment_length: i.max_recv_data_segment_length,
            max_burst_length: i.max_burst_length,
            first_burst_length: i.first_burst_length,
            immediate_data: i.immediate_data,
            initial_r2t: i.initial_r2t,
            max_outstanding_r2t: i.max_outstanding_r2t,
            ..TargetLimits::default()
        },
        cmd_window: i.queue_depth,
    }
}
