//! Wall-clock time as the records and the store keep it.

/// Wall-clock time in Unix milliseconds (0 before 1970), the time base of
/// calls, events, rollups and saved progress.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
