//! Strings kept within the lengths a schema, an API or a message allows.

/// The longest prefix of `value` with at most `max_chars` characters (never
/// cut inside a character).
pub fn bounded(value: &str, max_chars: usize) -> &str {
    match value.char_indices().nth(max_chars) {
        Some((end, _)) => &value[..end],
        None => value,
    }
}

/// Cuts `value` to at most `max_chars` characters in place.
pub fn truncate(value: &mut String, max_chars: usize) {
    let end = bounded(value, max_chars).len();
    value.truncate(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_count_characters_not_bytes() {
        assert_eq!(bounded("abc", 2), "ab");
        assert_eq!(bounded("abc", 3), "abc");
        assert_eq!(bounded("abc", 10), "abc");
        assert_eq!(bounded("", 0), "");
        assert_eq!(bounded("héllo", 2), "hé");
        assert_eq!(bounded("日本語", 1), "日");
        let mut value = "ééé".to_owned();
        truncate(&mut value, 2);
        assert_eq!(value, "éé");
        truncate(&mut value, 5);
        assert_eq!(value, "éé");
    }
}
