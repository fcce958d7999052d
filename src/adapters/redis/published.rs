//! How far publishing got ([`Published`]): the last entry of each process's stream,
//! read with one `XREVRANGE <key> + - COUNT 1` per process, pipelined in one round trip
//! (in a cluster, one per bucket: a pipeline's keys must share a slot).
//! An entry counts only if this service wrote it for this store (its ID shape, its
//! field and its epoch, see [`super::keys`]); any other last entry is
//! [`Published::Foreign`].

use redis::streams::{StreamId as Entry, StreamRangeReply};
use redis::Value;

use super::keys::{END_FIELD, EPOCH_FIELD, MESSAGE_FIELD, STORED_FIELD};
use super::Commands;
use crate::domain::StreamId;
use crate::ports::{Epoch, Published};

/// The last entry of each stream in `keys`, in order (in a cluster, keys of one slot).
pub async fn last_entries(
    commands: &Commands,
    keys: &[String],
    epoch: &Epoch,
) -> redis::RedisResult<Vec<Published>> {
    let mut pipe = redis::pipe();
    for key in keys {
        pipe.cmd("XREVRANGE")
            .arg(key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
    }
    let replies: Vec<StreamRangeReply> = commands.query(&pipe).await?;
    Ok(replies
        .iter()
        .map(|reply| match reply.ids.first() {
            None => Published::Nothing,
            Some(entry) => published(entry, epoch),
        })
        .collect())
}

fn published(entry: &Entry, epoch: &Epoch) -> Published {
    let ours = matches!(entry.map.get(EPOCH_FIELD),
        Some(Value::BulkString(e)) if e == epoch.as_str().as_bytes());
    let Ok(id) = StreamId::parse(&entry.id) else {
        return Published::Foreign;
    };
    let has = |field: &str| entry.map.contains_key(field);
    match id.n {
        0 if ours && (has(MESSAGE_FIELD) || has(STORED_FIELD)) => Published::UpTo(id.seq),
        1 if ours && has(END_FIELD) => Published::End { last_seq: id.seq },
        _ => Published::Foreign,
    }
}
