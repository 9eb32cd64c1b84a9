//! The limits and name rules every layer checks against: queue names, priorities, dedup keys
//! and error texts. A leaf: it imports nothing from the crate.

/// Longest queue name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// The highest priority; [`PushOptions::priority`](crate::PushOptions::priority) takes
/// `0..=MAX_PRIORITY`.
pub const MAX_PRIORITY: u8 = 9;

/// Longest dedup key, in bytes.
pub(crate) const MAX_DEDUP_KEY: usize = 1024;

/// Longest error text kept with a message (longer ones are cut at a character boundary).
pub(crate) const MAX_ERROR_LEN: usize = 4096;

/// Whether `name` is a valid queue name: 1 to 128 characters from `A-Z a-z 0-9 . _ -`.
pub(crate) fn valid_name(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `text` cut to at most [`MAX_ERROR_LEN`] bytes.
pub(crate) fn clip(text: &str) -> &str {
    if text.len() <= MAX_ERROR_LEN {
        return text;
    }
    let mut end = MAX_ERROR_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or("")
}

/// The default dead-letter queue of `name`: `<name>.dlq` (the name cut to fit).
pub(crate) fn default_dlq_name(name: &str) -> String {
    let keep = name.len().min(MAX_NAME_LEN - 4);
    format!("{}.dlq", name.get(..keep).unwrap_or(name))
}
