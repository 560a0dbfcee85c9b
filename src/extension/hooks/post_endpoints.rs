//! PostEndpointsModify: the hold endpoint for EDS clusters, whose
//! endpoints PostTranslateModify never sees.

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use prost::Message;

use super::Hooks;
use crate::extension::wiring;

impl Hooks {
    /// Adds the hold endpoint to an EDS cluster that is wired (see the
    /// module's note on ordering).
    pub fn post_endpoints(&self, assignment: Option<Vec<u8>>) -> Option<Vec<u8>> {
        let bytes = assignment?;
        let wired = self.eds_wired.load();
        if wired.is_empty() && self.pending().is_empty() {
            return Some(bytes);
        }
        match ClusterLoadAssignment::decode(bytes.as_slice()) {
            Ok(mut cla)
                if wired.contains(&cla.cluster_name)
                    || self.pending().contains(&cla.cluster_name) =>
            {
                wiring::install_hold_endpoint(&mut cla);
                Some(cla.encode_to_vec())
            }
            _ => Some(bytes),
        }
    }
}
