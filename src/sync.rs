//! The one way this crate takes a `std::sync::Mutex`.

use std::sync::{Mutex, MutexGuard};

/// Locks `mutex`, a poisoned one too: every critical section in this crate leaves
/// what it guards consistent before anything that may panic (it checks first and
/// mutates last), so the data a panicking holder left is still good, and one panic
/// does not become a panic in every later caller.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
