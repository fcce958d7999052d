//! Fault drills (issue 3, "Reliability"): real `redis-server`, PostgreSQL and
//! agent-stream processes are killed, stopped and restarted around live followers and
//! appenders, and every follower must still receive exactly the messages after its
//! cursor, in order, each once, then the end.
//!
//! Each drill starts its OWN PostgreSQL cluster, Redis and server on free ports (see
//! `agent_stream_testkit::instances`); the shared servers of `.ci/test` are never touched. The binaries
//! come from AGENT_STREAM_TEST_PG_BINDIR (else `pg_config --bindir`) and
//! AGENT_STREAM_TEST_REDIS_SERVER (else `redis-server` on PATH); as root, PostgreSQL
//! runs as AGENT_STREAM_TEST_PG_USER (else `postgres`). A drill that cannot find them
//! fails; it is never skipped. Drills run one at a time. The TLS drill also needs the
//! test CA and server certificate `.ci/test` makes (AGENT_STREAM_TEST_TLS_CA, _CERT,
//! _KEY).
//!
//! The fleet drill (`fleet_drills.rs`) is the exception: it kills and drains
//! agent-stream instances only, so they run on the suite's PostgreSQL and Redis
//! (DATABASE_URL, REDIS_URL), behind HAProxy (AGENT_STREAM_TEST_HAPROXY, else `haproxy`
//! on PATH or in /usr/sbin). So do the fleet-cost drills (`fleet_cost.rs`), each on a
//! database and a Redis prefix of its own.
//!
//! The Redis Cluster drill (`cluster_drills.rs`) starts its own six-node cluster with
//! redis-cli (AGENT_STREAM_TEST_REDIS_CLI, else beside redis-server, else on PATH).

mod cluster_drills;
mod fleet_cost;
mod fleet_drills;
mod postgres_drills;
mod redis_drills;
mod server_drills;
mod tls_drills;
