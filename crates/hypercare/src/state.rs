//! Hypercare progress that outlives a restart: where each canary rollout
//! stands and each hypercare window's streak, kept in the call store's
//! `hypercare_state` table by the engine and read back when it starts; and the
//! runtime overrides layer (kind `override`), saved by the controller whenever
//! it changes and read back before the listeners serve.
//!
//! A row holds the definition it belongs to (the canary's or window's config
//! as JSON): a restart resumes only what is defined the same way, so a changed
//! plan or window starts afresh, as it does without a restart.

use rusqlite::{params, Connection};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// A canary's or window's definition, as saved beside its progress.
pub fn definition(config: &impl serde::Serialize) -> String {
    serde_json::to_string(config).unwrap_or_default()
}

/// What a row keeps: the definition, and the progress.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The definition, as JSON text.
    pub config: String,
    /// The progress, as JSON.
    pub state: Value,
}

/// Saved progress by (kind, key): `canary` by route, `window` by name.
#[derive(Default)]
pub struct Saved {
    entries: HashMap<(String, String), Entry>,
}

impl Saved {
    /// Reads every saved entry (none when the store cannot be read).
    pub fn load(conn: &Connection) -> Saved {
        let mut entries = HashMap::new();
        let rows = conn
            .prepare("SELECT kind, key, config, state FROM hypercare_state")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| {
                    Ok((
                        (r.get::<_, String>(0)?, r.get::<_, String>(1)?),
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            });
        match rows {
            Ok(rows) => {
                for (key, config, state) in rows {
                    if let Ok(state) = serde_json::from_str(&state) {
                        entries.insert(key, Entry { config, state });
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "hypercare: saved progress unreadable"),
        }
        Saved { entries }
    }

    /// Entries by (kind, key), e.g. from a fleet leader's published state.
    pub fn from_entries(entries: impl IntoIterator<Item = ((String, String), Entry)>) -> Saved {
        Saved {
            entries: entries.into_iter().collect(),
        }
    }

    /// The progress saved for `key` of `kind` under the definition `config`.
    pub fn get(&self, kind: &str, key: &str, config: &str) -> Option<&Value> {
        self.entries
            .get(&(kind.to_string(), key.to_string()))
            .filter(|e| e.config == config)
            .map(|e| &e.state)
    }

    /// Every entry of `kind`, as (key, entry).
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Entry)> {
        self.entries
            .iter()
            .filter(move |((k, _), _)| k == kind)
            .map(|((_, key), e)| (key.as_str(), e))
    }
}

/// Replaces every saved entry of `kind` with `entries` (key, entry), in one transaction.
pub fn save(path: &Path, kind: &str, entries: &[(String, Entry)]) {
    let result = (|| -> rusqlite::Result<()> {
        let mut conn = super::store::open_for_writing(path)?;
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM hypercare_state WHERE kind = ?1", [kind])?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO hypercare_state (kind, key, config, state, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let now = super::unix_ms() as i64;
            for (key, e) in entries {
                insert.execute(params![kind, key, e.config, e.state.to_string(), now])?;
            }
        }
        tx.commit()
    })();
    if let Err(e) = result {
        tracing::warn!(error = %e, kind, "hypercare: cannot save progress in the call store");
    }
}

/// The `hypercare_state` kind and key the overrides layer is saved under.
const OVERRIDES: (&str, &str) = ("override", "layer");

/// Saves the runtime overrides layer (replacing the one saved before).
pub fn save_overrides(path: &Path, overrides: &hypergate_core::config::overrides::Overrides) {
    let entry = Entry {
        config: String::new(),
        state: serde_json::to_value(overrides).unwrap_or_default(),
    };
    save(path, OVERRIDES.0, &[(OVERRIDES.1.to_string(), entry)]);
}

/// The runtime overrides layer saved in the store at `path` (empty when there
/// is none, or the store cannot be read).
pub fn load_overrides(path: &Path) -> hypergate_core::config::overrides::Overrides {
    if !path.exists() {
        return Default::default();
    }
    let Ok(conn) = super::store::open_for_reading(path) else {
        return Default::default();
    };
    Saved::load(&conn)
        .get(OVERRIDES.0, OVERRIDES.1, "")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default()
}

/// The last `limit` events of `kind` in the store's `events` table, oldest first.
pub fn recent_events(conn: &Connection, kind: &str, limit: usize) -> Vec<Value> {
    let rows = conn
        .prepare("SELECT body FROM events WHERE kind = ?1 ORDER BY id DESC LIMIT ?2")
        .and_then(|mut stmt| {
            stmt.query_map(params![kind, limit as i64], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .unwrap_or_default();
    let mut out: Vec<Value> = rows
        .iter()
        .filter_map(|b| serde_json::from_str(b).ok())
        .collect();
    out.reverse();
    out
}
