//! Training data from what the cluster showed (issue 20, part 4): the
//! gateway's impression log (`--impression-log`, JSON lines) joined with the
//! interactions that followed (a CSV of `user,item,time,event`), so that an
//! item shown and not clicked becomes a negative, not a movie drawn at random.
//!
//! An impression of item i to user u at time t is a click (label 1) when the
//! events hold a click event (`--click-events`, `click` by default) of u on i
//! at or after t and within the window; otherwise it is a non-click (0). Only
//! complete log files (`*.jsonl`) are read: the `.partial` one is still being
//! written.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::dataset::Interaction;
use crate::error::{Result, TrainerError};
use crate::interactions_csv::Table;

/// One item shown to one user.
#[derive(Debug, Clone, PartialEq)]
pub struct ShownItem {
    /// Who saw it.
    pub user: String,
    /// What was shown.
    pub item: String,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Its 0-based position in the answer.
    pub position: u32,
}

#[derive(Deserialize)]
struct Record {
    user_id: String,
    time_ms: u64,
    items: Vec<RecordItem>,
}

#[derive(Deserialize)]
struct RecordItem {
    item_id: u64,
    position: u32,
}

/// Every item shown to a user in the complete log files of `dir` (answers
/// to embedding queries, which have no user, are left out), file by file.
pub fn read_impressions(dir: &Path) -> Result<Vec<ShownItem>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| TrainerError::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut shown = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
        for (index, line) in text.lines().enumerate() {
            let record: Record = serde_json::from_str(line).map_err(|e| {
                TrainerError::field(path, index + 1, "line", format!("not an impression: {e}"))
            })?;
            if record.user_id.is_empty() {
                continue;
            }
            shown.extend(record.items.into_iter().map(|item| ShownItem {
                user: record.user_id.clone(),
                item: item.item_id.to_string(),
                time_ms: record.time_ms,
                position: item.position,
            }));
        }
    }
    if shown.is_empty() {
        return Err(TrainerError::Empty(
            "the impression log holds no complete file with an answer to a user",
        ));
    }
    Ok(shown)
}

/// An interaction after the fact: `user,item,time,event` (time in seconds
/// since the Unix epoch, fractions allowed).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Who.
    pub user: String,
    /// On what.
    pub item: String,
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// What (`click`, `purchase`, ...).
    pub event: String,
}

/// Reads an events CSV (header `user,item,time,event`, any order).
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let table = Table::read(path)?;
    let (user, item, time, event) = (
        table.column("user")?,
        table.column("item")?,
        table.column("time")?,
        table.column("event")?,
    );
    let mut out = Vec::new();
    table.for_each(|record| {
        let seconds: f64 = record.parse(time)?;
        if !(seconds.is_finite() && seconds >= 0.0) {
            return Err(record.error(time, format!("{seconds} is not a time in seconds")));
        }
        out.push(Event {
            user: record.required(user)?.to_string(),
            item: record.required(item)?.to_string(),
            time_ms: (seconds * 1000.0) as u64,
            event: record.required(event)?.to_string(),
        });
        Ok(())
    })?;
    Ok(out)
}

/// The impressions as click examples: label 1 when a click event of the
/// same user on the same item came at or after the impression and within
/// `window_ms` of it, else 0; the impression's time (seconds) as timestamp.
pub fn label_impressions(
    shown: &[ShownItem],
    events: &[Event],
    clicks: &[String],
    window_ms: u64,
) -> Vec<Interaction> {
    let mut clicked: HashMap<(&str, &str), Vec<u64>> = HashMap::new();
    for e in events.iter().filter(|e| clicks.contains(&e.event)) {
        clicked
            .entry((e.user.as_str(), e.item.as_str()))
            .or_default()
            .push(e.time_ms);
    }
    shown
        .iter()
        .map(|s| {
            let click = clicked
                .get(&(s.user.as_str(), s.item.as_str()))
                .is_some_and(|times| {
                    times
                        .iter()
                        .any(|&t| t >= s.time_ms && t - s.time_ms <= window_ms)
                });
            Interaction {
                user: s.user.clone(),
                item: s.item.clone(),
                rating: Some(if click { 1.0 } else { 0.0 }),
                timestamp: Some((s.time_ms / 1000) as i64),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(user: &str, item: &str, time_ms: u64) -> ShownItem {
        ShownItem {
            user: user.into(),
            item: item.into(),
            time_ms,
            position: 0,
        }
    }

    fn event(user: &str, item: &str, time_ms: u64, event: &str) -> Event {
        Event {
            user: user.into(),
            item: item.into(),
            time_ms,
            event: event.into(),
        }
    }

    #[test]
    fn a_later_click_in_the_window_labels_the_impression_and_nothing_else_does() {
        let shown = [
            shown("u", "1", 1_000),
            shown("u", "2", 1_000),
            shown("u", "3", 1_000),
            shown("v", "1", 1_000),
            shown("u", "4", 1_000),
        ];
        let events = [
            event("u", "1", 2_000, "click"),
            event("u", "2", 500, "click"),
            event("u", "3", 2_000, "view"),
            event("u", "4", 1_000 + 10_000, "click"),
        ];
        let labels: Vec<f32> = label_impressions(&shown, &events, &["click".into()], 5_000)
            .iter()
            .map(|i| i.rating.unwrap())
            .collect();
        // A click after (1), before (2), another event (3), another user (v),
        // after the window (4).
        assert_eq!(labels, [1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn only_complete_files_are_read_and_a_bad_line_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("impressions-00000001.jsonl"),
            "{\"user_id\":\"u\",\"time_ms\":5,\"items\":[{\"item_id\":7,\"position\":0},{\"item_id\":8,\"position\":1}],\"extra\":1}\n\
             {\"user_id\":\"\",\"time_ms\":6,\"items\":[{\"item_id\":9,\"position\":0}]}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("impressions-00000002.jsonl.partial"),
            "{\"user_id",
        )
        .unwrap();
        let got = read_impressions(dir.path()).unwrap();
        assert_eq!(
            got,
            [
                shown("u", "7", 5),
                ShownItem {
                    position: 1,
                    ..shown("u", "8", 5)
                }
            ]
        );
        std::fs::write(dir.path().join("impressions-00000003.jsonl"), "oops\n").unwrap();
        let error = read_impressions(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("impressions-00000003.jsonl line 1"),
            "{error}"
        );
    }
}
