//! Vocabulary helpers of the trainer: the tokens and buckets that become
//! vocabulary values. The vocabulary itself (Keras's `StringLookup` with one
//! out-of-vocabulary row) is `recsys_bundle::Vocabulary`, the one the query tower
//! and the ranker read back at serving time.

pub use recsys_bundle::Vocabulary;

/// Lowercase words of a title, split on anything not alphanumeric: what Keras's
/// `TextVectorization` (lower and strip punctuation, split on whitespace) makes
/// of MovieLens titles, the year included ("Toy Story (1995)" → toy, story, 1995).
pub fn title_tokens(title: &str) -> Vec<String> {
    title
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The bucket a year falls in: its first year, `width` years wide ("1990" for
/// 1990–1994 with width 5).
pub fn year_bucket(year: u16, width: u16) -> String {
    let width = width.max(1);
    (year / width * width).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_buckets() {
        assert_eq!(title_tokens("Toy Story (1995)"), ["toy", "story", "1995"]);
        assert_eq!(
            title_tokens("Misérables, Les (1995)"),
            ["misérables", "les", "1995"]
        );
        assert_eq!(year_bucket(1994, 5), "1990");
        assert_eq!(year_bucket(1995, 5), "1995");
        assert_eq!(year_bucket(1995, 0), "1995");
    }
}
