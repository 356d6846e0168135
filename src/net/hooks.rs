//! How binding changes reach hosts: unit attentions on the sessions of the affected host only.

use super::Shared;
use crate::array::engine::EngineHooks;
use crate::array::LogicalUnit;
use crate::config::BindUnitAttention;
use crate::scsi::{Lun, Sense, SenseKey};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

/// SUBSIDIARY BINDING CHANGED (3Fh/1Ah), the conglomerate-specific alternative.
const SUBSIDIARY_BINDING_CHANGED: Sense = Sense::new(SenseKey::UnitAttention, 0x3F, 0x1A);

pub struct NetHooks {
    /// Weak: the array (which holds these hooks) lives inside `Shared`.
    pub shared: Weak<Shared>,
    pub bind_ua: BindUnitAttention,
}

impl NetHooks {
    fn sessions_of(&self, hosts: &[&str]) -> Vec<crate::scsi::NexusId> {
        let Some(shared) = self.shared.upgrade() else {
            return Vec::new();
        };
        shared
            .sessions
            .all()
            .into_iter()
            .filter(|s| hosts.iter().any(|h| s.initiator.eq_ignore_ascii_case(h)))
            .map(|s| s.nexus)
            .collect()
    }
}

impl EngineHooks for NetHooks {
    fn bindings_changed(&self, host: &str, pe: u16) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let sense = match self.bind_ua {
            BindUnitAttention::ReportedLunsChanged => Sense::REPORTED_LUNS_DATA_CHANGED,
            BindUnitAttention::SubsidiaryBindingChanged => SUBSIDIARY_BINDING_CHANGED,
        };
        for p in shared.array.engine.pes().iter().filter(|p| p.lun == pe) {
            for s in shared.sessions.all() {
                if s.initiator.eq_ignore_ascii_case(host)
                    && s.target.name.eq_ignore_ascii_case(&p.target)
                {
                    p.lu.disk.establish_unit_attention(Some(s.nexus), sense);
                }
            }
        }
    }

    fn capacity_changed(&self, hosts: &[String], lu: &Arc<LogicalUnit>) {
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        for nexus in self.sessions_of(&hosts) {
            lu.disk
                .establish_unit_attention(Some(nexus), Sense::CAPACITY_DATA_CHANGED);
        }
    }

    fn abort_commands(&self, host: &str, lun: Lun) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let Some(shared) = self.shared.upgrade() else {
            return Box::pin(async {});
        };
        let tasks: Vec<_> = shared
            .sessions
            .all()
            .into_iter()
            .filter(|s| s.initiator.eq_ignore_ascii_case(host))
            .flat_map(|s| s.abort_tasks_answering(lun))
            .collect();
        Box::pin(async move {
            for task in tasks {
                task.quiesced().await;
            }
        })
    }

    fn lu_unbound(&self, host: &str, lu: &Arc<LogicalUnit>) {
        for nexus in self.sessions_of(&[host]) {
            lu.disk.nexus_removed(nexus);
        }
    }

    fn lu_bound(&self, host: &str, lu: &Arc<LogicalUnit>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        for s in shared.sessions.all() {
            if s.initiator.eq_ignore_ascii_case(host) {
                lu.disk
                    .nexus_attached(s.nexus, &s.initiator_port(), s.target_port);
            }
        }
    }
}
