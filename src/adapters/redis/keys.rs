//! Every Redis key and stream-entry field agent-stream uses, in one place.
//!
//! One key per process, so every command touches a single key (and a single slot in
//! Redis Cluster). On one Redis server the key is `<prefix>process:<process_id>:stream`.
//! In a Redis Cluster it carries a hash tag naming the process's bucket,
//! `<prefix>{b<bucket>}process:<process_id>:stream`: the cluster hashes only the tag, so
//! every process of a bucket lives in one slot, and one blocking `XREAD` (which the
//! cluster refuses across slots) covers all of them (adr/0013). The prefix is empty by
//! default and set when Redis is shared. A process id is only `A-Z a-z 0-9 . _ -`
//! ([`ProcessId`] checks it), so no client input can name another key.

use crate::domain::ProcessId;

/// The entry field that carries a message's wire JSON; the entry ID is `<seq>-0`.
pub const MESSAGE_FIELD: &str = "message";

/// The entry field that carries the store's epoch (adr/0007), on every entry this
/// service writes: followers deliver only entries of their own store's epoch.
pub const EPOCH_FIELD: &str = "epoch";

/// The entry field of a message too large to go through Redis (over
/// `--stream-inline-bytes`): its value is the size of the message's JSON, and
/// followers read the message itself from the store. The entry ID is `<seq>-0`.
pub const STORED_FIELD: &str = "stored";

/// The entry field of the end marker, `{"status": "…"}`; the entry ID is `<last seq>-1`.
pub const END_FIELD: &str = "end";

/// Buckets of processes in a Redis Cluster: each is one hash slot, read by one
/// connection per instance, so an instance holds at most this many reader connections
/// to a cluster. 64 spreads the streams over up to ~16 masters evenly enough while
/// keeping connections per instance low (adr/0013). Every instance of a deployment
/// must agree on it: it is part of the key layout.
pub const CLUSTER_BUCKETS: u16 = 64;

/// Slots of a Redis Cluster (the cluster's `CRC16(key) mod 16384`).
const CLUSTER_SLOTS: u16 = 16384;

/// Names the keys of one deployment.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    prefix: String,
    /// Whether keys carry the bucket's hash tag (in a Redis Cluster).
    tagged: bool,
}

impl Keys {
    /// The keys on one Redis server: no hash tag.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            tagged: false,
        }
    }

    /// The keys in a Redis Cluster: each carries its process's bucket as hash tag.
    pub fn cluster(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            tagged: true,
        }
    }

    /// The stream of one process.
    pub fn stream(&self, process: &ProcessId) -> String {
        if self.tagged {
            format!(
                "{}{}process:{}:stream",
                self.prefix,
                bucket_tag(bucket(process)),
                process
            )
        } else {
            format!("{}process:{}:stream", self.prefix, process)
        }
    }
}

/// The bucket of a process, `0..CLUSTER_BUCKETS`: FNV-1a (32 bits) of its id. Fixed
/// here rather than taken from a library, because every instance, of every version,
/// must put a process in the same bucket.
pub fn bucket(process: &ProcessId) -> u16 {
    let hash = process
        .as_str()
        .bytes()
        .fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        });
    (hash % u32::from(CLUSTER_BUCKETS)) as u16
}

/// The hash tag of a bucket, `{b17}`.
fn bucket_tag(bucket: u16) -> String {
    format!("{{b{bucket}}}")
}

/// The cluster slot of a bucket's keys: CRC16 (XMODEM) of the tag's content, mod 16384,
/// as Redis Cluster computes it.
pub fn bucket_slot(bucket: u16) -> u16 {
    let tag = format!("b{bucket}");
    let crc = tag.bytes().fold(0u16, |crc, byte| {
        (0..8).fold(crc ^ (u16::from(byte) << 8), |crc, _| {
            if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            }
        })
    });
    crc % CLUSTER_SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_key_is_the_contract_s() {
        let process = ProcessId::parse("p-1").unwrap();
        assert_eq!(Keys::default().stream(&process), "process:p-1:stream");
        assert_eq!(
            Keys::new("tenant:").stream(&process),
            "tenant:process:p-1:stream"
        );
    }

    #[test]
    fn in_a_cluster_the_key_carries_its_bucket_as_hash_tag_before_process() {
        let process = ProcessId::parse("p-1").unwrap();
        let key = Keys::cluster("tenant:").stream(&process);
        let tag = bucket_tag(bucket(&process));
        assert_eq!(key, format!("tenant:{tag}process:p-1:stream"));
        assert!(key.ends_with("process:p-1:stream"));
    }

    #[test]
    fn buckets_are_stable_and_spread_processes_evenly() {
        // Fixed values: a change here moves every stream of every deployment.
        fn id(s: &str) -> ProcessId {
            ProcessId::parse(s).unwrap()
        }
        assert_eq!(bucket(&id("p-1")), 53);
        assert_eq!(bucket(&id("3f2b9c1e-0000-4000-8000-000000000000")), 42);
        let mut counts = [0u32; CLUSTER_BUCKETS as usize];
        for i in 0..64_000 {
            counts[bucket(&id(&uuid_like(i))) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 850 && *max < 1150, "{min}..{max} of 1000 per bucket");
    }

    fn uuid_like(i: u32) -> String {
        format!(
            "{:08x}-1e4b-4c2a-9d3f-{:012x}",
            i.wrapping_mul(2_654_435_761),
            i
        )
    }

    #[test]
    fn a_bucket_s_slot_is_the_one_redis_computes() {
        // `CLUSTER KEYSLOT {b0}x` and `CLUSTER KEYSLOT {b17}x` on Redis 7.
        assert_eq!(bucket_slot(0), 6_939);
        assert_eq!(bucket_slot(17), 1_307);
        let slots: std::collections::HashSet<_> = (0..CLUSTER_BUCKETS).map(bucket_slot).collect();
        assert_eq!(slots.len(), CLUSTER_BUCKETS as usize, "one slot per bucket");
    }
}
