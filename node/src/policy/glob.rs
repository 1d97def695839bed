//! Matrix globs as policy rules write them (`*` any run of characters, `?` exactly one):
//! checked for absurdity once when a list is compiled, then matched without allocating.

/// Longer patterns are refused: no Matrix id is longer than 255 bytes, so nothing could match.
pub const MAX_PATTERN_LEN: usize = 255;
/// More wildcards than this are refused: they only make matching slower, never more useful.
pub const MAX_WILDCARDS: usize = 16;

/// Why a pattern is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("the entity is empty")]
    Empty,
    #[error("the entity is {0} bytes long, more than {MAX_PATTERN_LEN}")]
    TooLong(usize),
    #[error("the entity has {0} wildcards, more than {MAX_WILDCARDS}")]
    TooManyWildcards(usize),
    /// `*`, `**`, `?*`, `@*:*`, `*.*`: a rule that bans (nearly) everyone is a mistake or an
    /// attack on the list's subscribers, never a moderation decision.
    #[error("the entity matches (nearly) everything")]
    MatchesEverything,
}

/// One compiled pattern: the pattern, and where its literal ends are (the index keys on them).
#[derive(Debug, Clone)]
pub struct Glob {
    pattern: Box<str>,
    /// Bytes before the first wildcard.
    prefix_len: u8,
    /// Bytes after the last wildcard.
    suffix_len: u8,
    wild: bool,
}

impl Glob {
    pub fn compile(pattern: &str) -> Result<Glob, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        if pattern.len() > MAX_PATTERN_LEN {
            return Err(GlobError::TooLong(pattern.len()));
        }
        let bytes = pattern.as_bytes();
        let is_wild = |b: &u8| *b == b'*' || *b == b'?';
        let wildcards = bytes.iter().filter(|b| is_wild(b)).count();
        if wildcards > MAX_WILDCARDS {
            return Err(GlobError::TooManyWildcards(wildcards));
        }
        if wildcards > 0
            && pattern
                .chars()
                .all(|c| matches!(c, '*' | '?' | '@' | '!' | '#' | ':' | '.'))
        {
            return Err(GlobError::MatchesEverything);
        }
        let prefix_len = bytes.iter().position(is_wild).unwrap_or(bytes.len());
        let suffix_len = bytes
            .iter()
            .rposition(is_wild)
            .map_or(bytes.len(), |last| bytes.len() - last - 1);
        // Both fit: the pattern is at most 255 bytes.
        Ok(Glob {
            pattern: pattern.into(),
            prefix_len: u8::try_from(prefix_len).unwrap_or(u8::MAX),
            suffix_len: u8::try_from(suffix_len).unwrap_or(u8::MAX),
            wild: wildcards > 0,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// No wildcard: the pattern is the entity itself.
    pub fn is_exact(&self) -> bool {
        !self.wild
    }

    /// The literal text before the first wildcard.
    pub fn prefix(&self) -> &str {
        &self.pattern[..usize::from(self.prefix_len)]
    }

    /// The literal text after the last wildcard.
    pub fn suffix(&self) -> &str {
        &self.pattern[self.pattern.len() - usize::from(self.suffix_len)..]
    }

    /// The longest run of literal text: any match contains it.
    pub fn longest_literal(&self) -> &str {
        self.pattern
            .split(['*', '?'])
            .max_by_key(|run| run.len())
            .unwrap_or_default()
    }

    pub fn matches(&self, text: &str) -> bool {
        let mut unlimited = usize::MAX;
        glob_match(self.pattern.as_bytes(), text.as_bytes(), &mut unlimited).unwrap_or(false)
    }

    /// Whether the pattern matches, spending at most `budget` steps (taken off it); `None`
    /// when the budget ran out first.
    pub fn matches_within(&self, text: &str, budget: &mut usize) -> Option<bool> {
        glob_match(self.pattern.as_bytes(), text.as_bytes(), budget)
    }
}

/// The length of the UTF-8 character starting with `lead`.
fn char_len(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// Greedy matching with one backtrack point (the last `*`): O(pattern × text) at worst, and
/// both are bounded (the pattern by `MAX_PATTERN_LEN`). Works on bytes; `?` takes a whole
/// character, and since both sides are valid UTF-8 a literal match never splits one. Each
/// step costs one of `budget`; `None` when it runs out before the answer.
fn glob_match(pattern: &[u8], text: &[u8], budget: &mut usize) -> Option<bool> {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        *budget = budget.checked_sub(1)?;
        if let Some(&c) = pattern.get(p) {
            match c {
                b'*' => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                b'?' => {
                    t += char_len(text[t]);
                    p += 1;
                    continue;
                }
                c if c == text[t] => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((star_p, star_t)) => {
                let next = star_t + char_len(text[star_t]);
                star = Some((star_p, next));
                p = star_p + 1;
                t = next;
            }
            None => return Some(false),
        }
    }
    Some(pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*') && t == text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, text: &str) -> bool {
        Glob::compile(pattern).unwrap().matches(text)
    }

    #[test]
    fn stars_take_any_run_and_question_marks_one_character() {
        assert!(matches("@mallory:evil.example", "@mallory:evil.example"));
        assert!(!matches("@mallory:evil.example", "@mallory:evil.example2"));
        assert!(matches("@*:evil.example", "@mallory:evil.example"));
        assert!(matches("@*:evil.example", "@:evil.example"));
        assert!(!matches("@*:evil.example", "@mallory:good.example"));
        assert!(matches("*.evil.example", "chat.evil.example"));
        assert!(!matches("*.evil.example", "evil.example"));
        assert!(matches("@spam?bot:x", "@spam1bot:x"));
        assert!(!matches("@spam?bot:x", "@spambot:x"));
        assert!(matches("@spam?bot:x", "@spamébot:x"), "? is one character");
        assert!(matches("@a*b*c:x", "@aXXbYYbZZc:x"));
        assert!(!matches("@a*b*c:x", "@aXXcYYb:x"));
        assert!(matches("@é*:x", "@éa:x"));
        assert!(matches("!room*", "!room"));
    }

    #[test]
    fn absurd_patterns_are_refused() {
        for everything in ["*", "**", "?*", "@*:*", "*.*", "?"] {
            assert_eq!(
                Glob::compile(everything).err(),
                Some(GlobError::MatchesEverything),
                "{everything}"
            );
        }
        assert_eq!(Glob::compile("").err(), Some(GlobError::Empty));
        let many = format!("@{}:x", "a*".repeat(2000));
        assert_eq!(
            Glob::compile(&many).err(),
            Some(GlobError::TooLong(many.len()))
        );
        let seventeen = format!("@{}:x", "a*".repeat(17));
        assert_eq!(
            Glob::compile(&seventeen).err(),
            Some(GlobError::TooManyWildcards(17))
        );
        assert!(Glob::compile(&format!("@{}:x", "a*".repeat(16))).is_ok());
    }

    #[test]
    fn literal_ends_are_found() {
        let glob = Glob::compile("@spam*bot*:evil.example").unwrap();
        assert_eq!(glob.prefix(), "@spam");
        assert_eq!(glob.suffix(), ":evil.example");
        assert_eq!(
            Glob::compile("*a*spam*b?").unwrap().longest_literal(),
            "spam"
        );
        let exact = Glob::compile("@a:b").unwrap();
        assert!(exact.is_exact());
        assert_eq!(exact.prefix(), "@a:b");
    }

    #[test]
    fn a_budget_stops_matching_and_says_so() {
        let glob = Glob::compile("@a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b").unwrap();
        let text = format!("@{}", "a".repeat(200));
        let mut budget = 100;
        assert_eq!(glob.matches_within(&text, &mut budget), None);
        assert_eq!(budget, 0);
        let mut budget = 100;
        let cheap = Glob::compile("@*:x").unwrap();
        assert_eq!(cheap.matches_within("@m:x", &mut budget), Some(true));
        assert!(budget < 100 && budget > 90, "{budget}");
    }

    #[test]
    fn the_worst_case_pattern_stays_fast() {
        // 16 stars against a 10 kB text that almost matches: the greedy matcher backtracks
        // only to the last star.
        let glob = Glob::compile("@a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b").unwrap();
        let text = format!("@{}", "a".repeat(10_000));
        let start = std::time::Instant::now();
        assert!(!glob.matches(&text));
        assert!(
            start.elapsed() < std::time::Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
    }
}
