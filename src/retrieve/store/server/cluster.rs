//! How the chunks' collection is laid out on a Qdrant cluster: shards, replicas,
//! how many replicas confirm a write, and payload on disk. Applied when the
//! collection is created; an existing collection keeps its own, and where they
//! differ from the configured ones the difference is reported (a log line and
//! `ragway_vector_store_setting_differs`), never silently kept: resharding, or a
//! change of replication, is the operator's to make on a live cluster.

use qdrant_client::qdrant::{CollectionParams, CreateCollectionBuilder};

/// The configured settings; `None` leaves a setting to the server's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClusterSettings {
    /// Shards of the collection (fixed at creation).
    pub shard_number: Option<u32>,
    /// Copies of each shard.
    pub replication_factor: Option<u32>,
    /// Replicas that must confirm a write before it succeeds.
    pub write_consistency_factor: Option<u32>,
    /// Payload kept on disk rather than in memory.
    pub on_disk_payload: Option<bool>,
}

/// A setting the existing collection has otherwise than configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub setting: &'static str,
    pub configured: String,
    pub collection: String,
}

impl ClusterSettings {
    pub(super) fn apply(&self, mut create: CreateCollectionBuilder) -> CreateCollectionBuilder {
        if let Some(shards) = self.shard_number {
            create = create.shard_number(shards);
        }
        if let Some(replicas) = self.replication_factor {
            create = create.replication_factor(replicas);
        }
        if let Some(confirming) = self.write_consistency_factor {
            create = create.write_consistency_factor(confirming);
        }
        if let Some(on_disk) = self.on_disk_payload {
            create = create.on_disk_payload(on_disk);
        }
        create
    }

    /// The configured settings `params` does not have (a factor the server
    /// leaves unset counts as 1, its default).
    // `on_disk_payload` is what the v1.16 server this is tested with knows;
    // `payload.memory` replaces it from 1.19 on.
    #[allow(deprecated)]
    pub fn differences(&self, params: &CollectionParams) -> Vec<Difference> {
        let configured = [
            (
                "shard_number",
                self.shard_number.map(|n| n.to_string()),
                params.shard_number.to_string(),
            ),
            (
                "replication_factor",
                self.replication_factor.map(|n| n.to_string()),
                params.replication_factor.unwrap_or(1).to_string(),
            ),
            (
                "write_consistency_factor",
                self.write_consistency_factor.map(|n| n.to_string()),
                params.write_consistency_factor.unwrap_or(1).to_string(),
            ),
            (
                "on_disk_payload",
                self.on_disk_payload.map(|b| b.to_string()),
                params.on_disk_payload.to_string(),
            ),
        ];
        configured
            .into_iter()
            .filter_map(|(setting, configured, collection)| {
                let configured = configured?;
                (configured != collection).then_some(Difference {
                    setting,
                    configured,
                    collection,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(deprecated)]
    fn params(shards: u32, replicas: Option<u32>, on_disk: bool) -> CollectionParams {
        CollectionParams {
            shard_number: shards,
            replication_factor: replicas,
            on_disk_payload: on_disk,
            ..CollectionParams::default()
        }
    }

    #[test]
    fn only_configured_settings_are_compared() {
        let unset = ClusterSettings::default();
        assert!(unset.differences(&params(6, Some(3), false)).is_empty());
        let set = ClusterSettings {
            shard_number: Some(6),
            replication_factor: Some(2),
            write_consistency_factor: Some(1),
            on_disk_payload: Some(true),
        };
        assert_eq!(
            set.differences(&params(6, Some(3), true)),
            [Difference {
                setting: "replication_factor",
                configured: "2".to_owned(),
                collection: "3".to_owned(),
            }]
        );
        // An unset factor is the server's default, 1.
        let one = ClusterSettings {
            replication_factor: Some(1),
            ..ClusterSettings::default()
        };
        assert!(one.differences(&params(1, None, true)).is_empty());
        let names: Vec<&str> = set
            .differences(&params(2, None, false))
            .iter()
            .map(|d| d.setting)
            .collect();
        assert_eq!(
            names,
            ["shard_number", "replication_factor", "on_disk_payload"]
        );
    }
}
