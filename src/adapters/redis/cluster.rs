//! Redis Cluster: how the feed finds out it talks to one, and where a slot's master is.
//!
//! Nothing is configured: `REDIS_URL` names any node, `INFO cluster` says whether it is
//! one (`cluster_enabled:1`), and the redis crate's cluster connection learns the
//! topology (`CLUSTER SLOTS`) and follows `MOVED`/`ASK` and failovers for commands.
//! Blocking reads cannot go over that connection (an `XREAD BLOCK` would stall every
//! command to its node), so each reader holds its own connection to the master of its
//! bucket's slot: found by asking the cluster (`CLUSTER SLOTS`, over the cluster
//! connection, which routes around dead nodes), then kept right by following `MOVED`.

use std::time::Duration;

use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{RedisResult, Value};

/// The field of `INFO cluster` that says whether the node is part of a cluster.
const CLUSTER_ENABLED: &str = "cluster_enabled:1";

/// Times of the cluster connection, as those of the single server's connection: a dead
/// master costs an append at most about this, not the crate's defaults.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Retries of a command after a redirect or a refreshed topology, and the longest
/// wait between two: a failover takes seconds, an append should not wait for it.
const RETRIES: u32 = 2;
const MAX_RETRY_WAIT_MS: u64 = 500;

/// A node, as the cluster announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Whether `INFO cluster`'s answer says cluster mode.
pub fn is_cluster(info: &str) -> bool {
    info.lines().any(|line| line.trim() == CLUSTER_ENABLED)
}

/// Opens the cluster connection for commands: the URL's node is the first the crate
/// asks for the topology; with `root_cert`, TLS trusts it (as the single server's
/// connection does).
pub async fn connect(url: &str, root_cert: Option<Vec<u8>>) -> RedisResult<ClusterConnection> {
    let mut builder = ClusterClientBuilder::new(vec![url])
        .connection_timeout(CONNECTION_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .retries(RETRIES)
        .max_retry_wait(MAX_RETRY_WAIT_MS);
    if let Some(root_cert) = root_cert {
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        });
    }
    builder.build()?.get_async_connection().await
}

/// The master of `slot` as the cluster sees it now. Asked of the node the cluster
/// connection holds for that slot; after a failover, the connection refreshes its
/// topology and asks the new master.
pub async fn master_of(commands: &ClusterConnection, slot: u16) -> RedisResult<Node> {
    let mut commands = commands.clone();
    let reply = commands
        .route_command(
            redis::cmd("CLUSTER").arg("SLOTS").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                slot,
                SlotAddr::Master,
            ))),
        )
        .await?;
    slot_master(&reply, slot).ok_or_else(|| {
        redis::RedisError::from((
            redis::ErrorKind::Client,
            "CLUSTER SLOTS names no master for the slot",
            slot.to_string(),
        ))
    })
}

/// The master of `slot` in a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id,
/// …], replicas…], …]`.
fn slot_master(reply: &Value, slot: u16) -> Option<Node> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let Value::Array(range) = range else {
            return None;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (range.first(), range.get(1), range.get(2))
        else {
            return None;
        };
        if !(*start..=*end).contains(&i64::from(slot)) {
            return None;
        }
        let host = match master.first()? {
            Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
            Value::SimpleString(host) => host.clone(),
            _ => return None,
        };
        let Value::Int(port) = master.get(1)? else {
            return None;
        };
        // An empty or unknown endpoint cannot be connected to by name.
        (!host.is_empty() && host != "?").then_some(Node {
            host,
            port: u16::try_from(*port).ok()?,
        })
    })
}

/// `url` with its host and port replaced by `node`'s: the same scheme (so TLS stays
/// TLS), user, password and database.
pub fn url_of(url: &str, node: &Node) -> Option<String> {
    let mut url = url::Url::parse(url).ok()?;
    url.set_host(Some(&node.host)).ok()?;
    url.set_port(Some(node.port)).ok()?;
    Some(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn the_slot_s_master_is_read_from_cluster_slots() {
        let range = |start, end, port| {
            Value::Array(vec![
                Value::Int(start),
                Value::Int(end),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port), bulk("id")]),
                Value::Array(vec![bulk("127.0.0.1"), Value::Int(port + 3), bulk("id2")]),
            ])
        };
        let reply = Value::Array(vec![range(0, 5460, 7000), range(5461, 10922, 7001)]);
        let node = |port| Node {
            host: "127.0.0.1".into(),
            port,
        };
        assert_eq!(slot_master(&reply, 0), Some(node(7000)));
        assert_eq!(slot_master(&reply, 5461), Some(node(7001)));
        assert_eq!(slot_master(&reply, 16383), None);
    }

    #[test]
    fn a_node_s_url_keeps_scheme_credentials_and_database() {
        let node = Node {
            host: "10.0.0.7".into(),
            port: 7002,
        };
        assert_eq!(
            url_of("rediss://agent:secret@cache.example:6380/0", &node).as_deref(),
            Some("rediss://agent:secret@10.0.0.7:7002/0")
        );
    }

    #[test]
    fn info_cluster_says_whether_the_node_is_in_a_cluster() {
        assert!(is_cluster("# Cluster\r\ncluster_enabled:1\r\n"));
        assert!(!is_cluster("# Cluster\r\ncluster_enabled:0\r\n"));
    }
}
