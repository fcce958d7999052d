//! [`MemoryStore`]: the store port on a map guarded by one mutex.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    FinishStatus, NewMessage, ProcessId, ProcessInfo, ProcessStatus, RecentProcess, StoredMessage,
};
use crate::ports::{AppendOutcome, Epoch, MessageStore, Registration, StoreError};

#[derive(Default)]
pub struct MemoryStore {
    processes: Mutex<HashMap<ProcessId, Process>>,
    /// Made at start: the store lives as long as the process.
    epoch: Epoch,
}

struct Process {
    info: ProcessInfo,
    /// `messages[i]` has seq `i + 1`.
    messages: Vec<StoredMessage>,
    seq_by_id: HashMap<String, u64>,
    /// When it was last registered, appended to or finished.
    last_activity: DateTime<Utc>,
}

impl Process {
    fn new(process_id: ProcessId) -> Self {
        let now = Utc::now();
        Self {
            info: ProcessInfo {
                process_id,
                status: ProcessStatus::Running,
                last_seq: 0,
                created_at: now,
                finished_at: None,
            },
            messages: Vec::new(),
            seq_by_id: HashMap::new(),
            last_activity: now,
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ProcessId, Process>> {
        // A panic while holding the lock cannot leave a process half-written: every
        // write below validates first and mutates last.
        crate::sync::lock(&self.processes)
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    async fn register(&self, process: &ProcessId) -> Result<Registration, StoreError> {
        let mut processes = self.lock();
        if let Some(known) = processes.get(process) {
            return Ok(Registration::Existing(known.info.clone()));
        }
        let new = Process::new(process.clone());
        let info = new.info.clone();
        processes.insert(process.clone(), new);
        Ok(Registration::Created(info))
    }

    async fn append(
        &self,
        process: &ProcessId,
        messages: &[NewMessage],
    ) -> Result<AppendOutcome, StoreError> {
        let mut processes = self.lock();
        let state = processes
            .entry(process.clone())
            .or_insert_with(|| Process::new(process.clone()));
        let now = Utc::now();
        let outcome = AppendOutcome::plan(
            process,
            &state.info.status,
            messages,
            state.info.last_seq,
            now,
            |id| state.seq_by_id.get(id).copied(),
        )?;
        if !outcome.stored.is_empty() {
            state.last_activity = now;
        }
        for appended in outcome.results.iter().filter(|appended| appended.created) {
            state
                .seq_by_id
                .insert(appended.id.clone(), appended.stream_id.seq);
        }
        state.messages.extend(outcome.stored.iter().cloned());
        state.info.last_seq += outcome.stored.len() as u64;
        Ok(outcome)
    }

    async fn finish(
        &self,
        process: &ProcessId,
        status: &FinishStatus,
    ) -> Result<ProcessInfo, StoreError> {
        let mut processes = self.lock();
        let state = processes
            .get_mut(process)
            .ok_or_else(|| StoreError::UnknownProcess(process.clone()))?;
        match state.info.status.finished() {
            Some(current) if current == status => {}
            Some(current) => {
                return Err(StoreError::StatusConflict {
                    process: process.clone(),
                    current: current.clone(),
                })
            }
            None => {
                let now = Utc::now();
                state.info.status = ProcessStatus::Finished(status.clone());
                state.info.finished_at = Some(now);
                state.last_activity = now;
            }
        }
        Ok(state.info.clone())
    }

    async fn process(&self, process: &ProcessId) -> Result<Option<ProcessInfo>, StoreError> {
        Ok(self.lock().get(process).map(|p| p.info.clone()))
    }

    async fn read_after(
        &self,
        process: &ProcessId,
        after: u64,
        // Every message is in this one store: what the caller knows changes nothing.
        _known: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let processes = self.lock();
        let Some(state) = processes.get(process) else {
            return Ok(Vec::new());
        };
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(state.messages.len());
        let mut bytes = 0;
        Ok(state.messages[start..]
            .iter()
            .take(limit)
            .take_while(|message| {
                let first = bytes == 0;
                bytes += message.json.len();
                first || bytes <= max_bytes
            })
            .cloned()
            .collect())
    }

    async fn recent(
        &self,
        limit: usize,
        only: Option<&[ProcessId]>,
    ) -> Result<Vec<RecentProcess>, StoreError> {
        let processes = self.lock();
        let mut recent: Vec<&Process> = processes
            .values()
            .filter(|p| only.is_none_or(|ids| ids.contains(&p.info.process_id)))
            .collect();
        recent.sort_by(|a, b| {
            b.last_activity
                .cmp(&a.last_activity)
                .then_with(|| a.info.process_id.cmp(&b.info.process_id))
        });
        Ok(recent
            .into_iter()
            .take(limit)
            .map(|p| RecentProcess {
                info: p.info.clone(),
                last_activity: p.last_activity,
            })
            .collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
