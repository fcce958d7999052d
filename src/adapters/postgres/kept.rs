//! Connections the write path keeps between appends (adr/0024). sqlx's pool pings a
//! connection each time one goes back to it (a Sync and its ReadyForQuery, in a task of
//! its own), so a statement run through the pool costs PostgreSQL a second round trip,
//! and its backend a second wake-up. An append borrows a kept connection instead, and
//! gives it back here once its statement completed; a connection whose statement failed
//! or was cut short goes back to the pool, whose ping settles it or closes it.

use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgConnection, PgPool, Postgres};

use crate::sync::lock;

/// How long a connection stays out of its pool before it goes back through it, so that
/// the pool's own rules (its connections' lifetime) still reach it.
const KEEP_AT_MOST: Duration = Duration::from_secs(60);

pub struct KeptConnections {
    pool: PgPool,
    /// At most `max`, the one given back last at the end.
    kept: std::sync::Mutex<Vec<Kept>>,
    max: usize,
    /// A kept connection idle this long is pinged before it is lent, as the pool pings
    /// its own.
    ping_if_idle_for: Duration,
}

struct Kept {
    connection: PoolConnection<Postgres>,
    /// When it was taken from the pool.
    taken: Instant,
    /// When its last statement completed.
    idle_since: Instant,
}

/// A connection lent for a statement. [`Lent::give_back`] once the statement completed;
/// dropped instead (the statement failed, or its future was dropped halfway), the
/// connection goes back to the pool.
pub struct Lent<'a> {
    home: &'a KeptConnections,
    kept: Option<Kept>,
}

impl KeptConnections {
    /// Keeps at most `max` of `pool`'s connections.
    pub fn new(pool: PgPool, max: usize, ping_if_idle_for: Duration) -> Self {
        Self {
            pool,
            kept: std::sync::Mutex::default(),
            max,
            ping_if_idle_for,
        }
    }

    /// A kept connection, or one from the pool when none is kept (or none that still
    /// answers).
    pub async fn lend(&self) -> Result<Lent<'_>, sqlx::Error> {
        // Bounded: each turn takes one of the kept connections.
        loop {
            let next = lock(&self.kept).pop();
            let Some(mut kept) = next else {
                let now = Instant::now();
                return Ok(self.lent(Kept {
                    connection: self.pool.acquire().await?,
                    taken: now,
                    idle_since: now,
                }));
            };
            if kept.taken.elapsed() >= KEEP_AT_MOST {
                // Back through the pool.
                continue;
            }
            if kept.idle_since.elapsed() >= self.ping_if_idle_for
                && kept.connection.ping().await.is_err()
            {
                kept.connection.close_on_drop();
                continue;
            }
            return Ok(self.lent(kept));
        }
    }

    fn lent(&self, kept: Kept) -> Lent<'_> {
        Lent {
            home: self,
            kept: Some(kept),
        }
    }

    fn keep(&self, mut kept: Kept) {
        kept.idle_since = Instant::now();
        let over = {
            let mut all = lock(&self.kept);
            if all.len() < self.max {
                all.push(kept);
                None
            } else {
                Some(kept)
            }
        };
        // Back to the pool, outside the lock.
        drop(over);
    }
}

impl Lent<'_> {
    pub fn connection(&mut self) -> &mut PgConnection {
        let kept = self
            .kept
            .as_mut()
            .expect("a lent connection until it is given back");
        &mut kept.connection
    }

    /// Its statement completed: the connection is kept for the next one.
    pub fn give_back(mut self) {
        if let Some(kept) = self.kept.take() {
            self.home.keep(kept);
        }
    }
}
