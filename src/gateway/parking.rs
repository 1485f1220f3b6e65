//! Calls that wait for a 2026-07-28 client's input, by the `requestState`
//! the client was given: one table for both ways a call can wait (the
//! relay's parked answer streams, `relay::input`; the tasks of calls served
//! through rmcp's model, `input_wait`).
//!
//! A state is the table's prefix and 128 random bits. A waiting call is
//! given back only to the caller that made it (the logged-in user; without
//! auth, the state alone finds it) and for the method it was made with; it
//! waits at most [`WAIT`], and at most [`MAX_WAITING`] wait in one table.
//! A call that is not picked up in time is dropped the next time the table
//! is used; dropping it cancels its upstream request (the waiting values'
//! own `Drop`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a call waits for its client to come back.
pub const WAIT: Duration = Duration::from_secs(600);
/// How many calls may wait at once in one table (each holds an upstream request).
pub const MAX_WAITING: usize = 1024;

struct Waiting<T> {
    call: T,
    caller: Option<String>,
    method: String,
    until: Instant,
}

/// Calls of type `T` waiting for their clients, by state.
pub struct Parking<T> {
    prefix: &'static str,
    calls: Mutex<HashMap<String, Waiting<T>>>,
}

impl<T> Parking<T> {
    pub fn new(prefix: &'static str) -> Self {
        Self {
            prefix,
            calls: Mutex::default(),
        }
    }

    /// A new state of this table, not yet in use.
    pub fn new_state(&self) -> String {
        format!("{}{:032x}", self.prefix, rand::random::<u128>())
    }

    /// Whether `state` is one of this table's (not an upstream's own).
    pub fn is_ours(&self, state: &str) -> bool {
        state.starts_with(self.prefix)
    }

    /// Whether another call may wait.
    pub fn has_room(&self) -> bool {
        drop(self.expired());
        self.calls
            .lock()
            .map(|calls| calls.len() < MAX_WAITING)
            .unwrap_or(false)
    }

    /// Keeps `call` under `state` for `caller` and `method`; gives it back
    /// when the table is full (the caller then drops it, ending it).
    pub fn park(
        &self,
        state: String,
        call: T,
        caller: Option<String>,
        method: &str,
    ) -> Result<(), T> {
        drop(self.expired());
        let Ok(mut calls) = self.calls.lock() else {
            return Err(call);
        };
        if calls.len() >= MAX_WAITING {
            return Err(call);
        }
        let waiting = Waiting {
            call,
            caller,
            method: method.to_string(),
            until: Instant::now() + WAIT,
        };
        calls.insert(state, waiting);
        Ok(())
    }

    /// The call waiting under `state`, for its own caller and method only.
    pub fn take(&self, state: &str, caller: Option<&str>, method: &str) -> Option<T> {
        let mut calls = self.calls.lock().ok()?;
        let waiting = calls.get(state)?;
        let fits = waiting.caller.as_deref() == caller
            && waiting.method == method
            && waiting.until > Instant::now();
        fits.then(|| calls.remove(state))
            .flatten()
            .map(|waiting| waiting.call)
    }

    /// Removes the calls that waited too long (dropped by the caller, outside the lock).
    fn expired(&self) -> Vec<T> {
        let now = Instant::now();
        let Ok(mut calls) = self.calls.lock() else {
            return Vec::new();
        };
        let states: Vec<String> = calls
            .iter()
            .filter(|(_, waiting)| waiting.until <= now)
            .map(|(state, _)| state.clone())
            .collect();
        states
            .into_iter()
            .filter_map(|state| calls.remove(&state))
            .map(|waiting| waiting.call)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_goes_back_only_to_its_caller_and_method_once() {
        let table = Parking::new("test:");
        let state = table.new_state();
        assert!(table.is_ours(&state) && !table.is_ours("an upstream's state"));
        assert_ne!(state, table.new_state());
        assert_eq!(state.len(), "test:".len() + 32);
        table
            .park(state.clone(), 7, Some("alice".into()), "tools/call")
            .unwrap();
        assert_eq!(table.take(&state, Some("bob"), "tools/call"), None);
        assert_eq!(table.take(&state, None, "tools/call"), None);
        assert_eq!(table.take(&state, Some("alice"), "prompts/get"), None);
        assert_eq!(table.take(&state, Some("alice"), "tools/call"), Some(7));
        assert_eq!(
            table.take(&state, Some("alice"), "tools/call"),
            None,
            "taken once"
        );
    }

    #[test]
    fn a_full_table_gives_the_call_back() {
        let table = Parking::new("test:");
        for n in 0..MAX_WAITING {
            table
                .park(table.new_state(), n, None, "tools/call")
                .unwrap();
        }
        assert!(!table.has_room());
        assert_eq!(table.park(table.new_state(), 0, None, "tools/call"), Err(0));
    }
}
