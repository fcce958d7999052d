//! Tracks whether Redis answers, so that an outage is logged once when it starts and
//! once when it ends, not once per command.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug)]
pub struct Health {
    up: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
        }
    }
}

impl Health {
    pub fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!("Redis answers again: live delivery is back to Redis Streams");
        }
    }

    pub fn mark_down(&self, what: &str, error: &redis::RedisError) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(%error, "Redis failed ({what}): appends still succeed and followers fall back to polling PostgreSQL until it answers");
        }
    }
}
