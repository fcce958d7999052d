//! The republisher: the safety net for a message stored but never published (its
//! `XADD` failed, or its instance died between the commit and the publish) while the
//! live feed is healthy, run by one instance of a fleet at a time (adr/0014).
//!
//! Every instance runs one, but only the holder of the store's republisher lease (a
//! PostgreSQL advisory lock, see `adapters::postgres`) works: every `--idle-poll` it
//! reads the processes appended to or finished within [`LOOKBACK`] in one query, asks
//! the feed how far each one's publishing got (one pipelined round trip to Redis), and
//! publishes what a process's feed lacks: at most a page of messages (ending at its
//! last seq), then its end marker if it is finished. A process is republished only when
//! its feed was behind at two sweeps in a row without moving: the first sweep often
//! falls between a commit and its `XADD`, which is late, not lost. Followers hear a
//! republished entry as any other: the next seq is delivered, a later one is a gap they
//! fill from the store.
//!
//! So while the feed is live, followers need not ask the store when it is quiet: they
//! ask the feed how far it goes ([`crate::follow`]), and the store only when the feed
//! holds more than they delivered, cannot tell, or holds entries that are not this
//! store's (which refuse its `XADD`s, so republishing cannot help). PostgreSQL's cost of
//! quiet followers is then one query a sweep for the whole fleet, however many
//! instances follow however many processes.
//!
//! The bound on a lost publish's delay, while an instance holds the lease: two sweeps
//! after its commit (2 × `--idle-poll`), plus a sweep's own time. When the holder dies,
//! its connection (and the lease) goes with it, and another instance takes the lease
//! within [`crate::adapters::postgres::LEASE_RETRY`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::domain::{ProcessId, ProcessInfo};
use crate::follow::FollowConfig;
use crate::metrics;
use crate::ports::{LiveFeed, MessageStore, Published};

/// How far back a sweep looks for changed processes: far more than two sweeps and a
/// change of lease holder, so a lost publish is still in view when it is republished.
pub const LOOKBACK: Duration = Duration::from_secs(60);

/// The most processes one sweep checks (the most recently changed first).
pub const SWEEP_LIMIT: usize = 10_000;

/// Whether the republisher has anything to do with these ports: a store whose
/// instances elect one, and a feed that tells how far publishing got.
pub fn applies(store: &dyn MessageStore, feed: &dyn LiveFeed) -> bool {
    store.elects_a_republisher() && feed.tells_how_far()
}

/// Sweeps every `config.idle_poll` until `shutdown`.
pub async fn run(
    store: Arc<dyn MessageStore>,
    feed: Arc<dyn LiveFeed>,
    config: FollowConfig,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(config.idle_poll);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut behind = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(error) = sweep(&*store, &*feed, &config, &mut behind).await {
            // The outage itself is logged once, where it is tracked.
            tracing::debug!(
                error = crate::report::one_line(&error),
                "the republisher's sweep failed"
            );
            behind.clear();
        }
    }
}

/// One sweep. `behind` holds, from the last sweep, each process whose feed was behind
/// and how far it had got.
async fn sweep(
    store: &dyn MessageStore,
    feed: &dyn LiveFeed,
    config: &FollowConfig,
    behind: &mut HashMap<ProcessId, Published>,
) -> anyhow::Result<()> {
    let changed = match store.changed_if_republisher(LOOKBACK, SWEEP_LIMIT).await? {
        Some(changed) if !changed.is_empty() && feed.is_live() => changed,
        // Another instance republishes, or there is nothing to, or no feed to do it in.
        _ => {
            behind.clear();
            return Ok(());
        }
    };
    let processes: Vec<ProcessId> = changed.iter().map(|p| p.process_id.clone()).collect();
    let published = feed.published(&processes).await?;
    let mut still_behind = HashMap::new();
    for (info, published) in changed.iter().zip(published) {
        let Some(after) = missing_after(info, published) else {
            continue;
        };
        if behind.get(&info.process_id) == Some(&published) {
            republish(store, feed, config, info, after).await?;
        } else {
            still_behind.insert(info.process_id.clone(), published);
        }
    }
    *behind = still_behind;
    Ok(())
}

/// The seq after which the feed lacks what the store holds of `info`'s process, if it
/// does (`last_seq` itself when only the end marker is missing).
fn missing_after(info: &ProcessInfo, published: Published) -> Option<u64> {
    let finished = info.status.finished().is_some();
    match published {
        Published::UpTo(seq) if seq < info.last_seq => Some(seq),
        Published::UpTo(seq) if seq == info.last_seq && finished => Some(seq),
        Published::Nothing if info.last_seq > 0 || finished => Some(0),
        // The feed has it all; or cannot tell; or refuses this store's entries.
        Published::UpTo(_) | Published::Nothing => None,
        Published::End { .. } | Published::Foreign | Published::Unknown => None,
    }
}

/// Publishes what the feed lacks after seq `after`: the last page of messages at most
/// (followers fill anything below it from the store), then the end marker of a finished
/// process once its last message is in.
async fn republish(
    store: &dyn MessageStore,
    feed: &dyn LiveFeed,
    config: &FollowConfig,
    info: &ProcessInfo,
    after: u64,
) -> anyhow::Result<()> {
    let process = &info.process_id;
    let mut entries = 0;
    if after < info.last_seq {
        let from = after.max(info.last_seq.saturating_sub(config.catch_up_page as u64));
        let messages = store
            .read_after(
                process,
                from,
                info.last_seq,
                config.catch_up_page,
                config.catch_up_page_bytes,
            )
            .await?;
        feed.publish(process, &messages).await.map_err(|e| e.0)?;
        entries += messages.len();
        if messages.last().map(|m| m.seq) != Some(info.last_seq) {
            // A page cut short by its bytes: the rest at a later sweep.
            metrics::republished(entries);
            return Ok(());
        }
    }
    if let Some(status) = info.status.finished() {
        feed.publish_end(process, info.last_seq, status.as_str())
            .await
            .map_err(|e| e.0)?;
        entries += 1;
    }
    metrics::republished(entries);
    tracing::info!(%process, entries, last_seq = info.last_seq,
        "republished what the live feed missed");
    Ok(())
}
