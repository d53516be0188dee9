//! Text helpers for values written to length-limited Salesforce fields.

/// Length of a Salesforce `Text(255)` field such as `Activation_Error_Message__c`.
pub const TEXT_FIELD_MAX: usize = 255;

const ELLIPSIS: &str = "...";

/// `s` cut to at most `max_bytes` bytes at a char boundary, ending in `...` when it was cut.
///
/// Limiting bytes (not chars) keeps the result within the limit however the receiving system
/// counts length (bytes, UTF-16 units or chars).
pub fn truncate(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_owned();
    }
    let (budget, marker) = if max_bytes > ELLIPSIS.len() {
        (max_bytes - ELLIPSIS.len(), ELLIPSIS)
    } else {
        (max_bytes, "")
    };
    let mut end = budget;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + marker.len());
    out.push_str(&s[..end]);
    out.push_str(marker);
    out
}

/// [`truncate`] to [`TEXT_FIELD_MAX`].
pub fn truncate_field(s: &str) -> String {
    truncate(s, TEXT_FIELD_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_unchanged() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("", 0), "");
    }

    #[test]
    fn long_text_is_cut_with_marker() {
        assert_eq!(truncate("abcdefgh", 6), "abc...");
        assert_eq!(truncate("abcdefgh", 2), "ab");
        let long = "x".repeat(1000);
        assert_eq!(truncate_field(&long).len(), TEXT_FIELD_MAX);
    }

    #[test]
    fn cut_never_splits_a_char() {
        // 'é' is 2 bytes, '€' is 3: every cut position lands on a boundary and fits.
        let s = "é€é€é€é€é€é€".repeat(40);
        for max in 0..60 {
            let t = truncate(&s, max);
            assert!(t.len() <= max, "{max}: {}", t.len());
        }
        assert_eq!(truncate("ééé", 5), "é...");
        assert_eq!(truncate("€€", 4), "...");
    }
}
