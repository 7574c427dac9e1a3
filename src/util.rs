//! Small helpers shared by both planes: wall-clock time and poison-tolerant locking.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn epoch_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Lock a control-plane mutex; a panic elsewhere must not take the control plane down with it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// JSON durations are integer milliseconds in fields named `*_ms` (one convention everywhere):
/// serializers for values kept in seconds or as `Duration`.
pub mod ms {
    pub fn from_secs<S: serde::Serializer>(secs: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(secs.saturating_mul(1000))
    }

    pub fn from_opt_secs<S: serde::Serializer>(secs: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match secs {
            Some(v) => s.serialize_some(&v.saturating_mul(1000)),
            None => s.serialize_none(),
        }
    }

    pub fn from_duration<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// The reverse of [`from_duration`] (state handed over on a binary upgrade is read back).
    pub fn to_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
        <u64 as serde::Deserialize>::deserialize(d).map(std::time::Duration::from_millis)
    }
}
