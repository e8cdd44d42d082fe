//! kubectl's filter flags' values: comma-separated regular expressions,
//! compiled once at start-up and matched as substring searches, as Go's
//! `regexp.MatchString` does.

use regex::RegexSet;

/// A comma-separated list of regular expressions, as kubectl's filter flags
/// take them. Compiled once; matched as a substring search, as Go does.
#[derive(Debug, Clone)]
pub struct PatternList {
    set: RegexSet,
}

impl PatternList {
    /// Parses `--flag=a,b,c`. An empty string is an empty list that matches
    /// nothing (kubectl since 1.21).
    ///
    /// # Errors
    ///
    /// What is wrong with the first bad pattern, in words for the flag's
    /// error line.
    pub fn parse(list: &str) -> Result<Self, String> {
        let patterns: Vec<&str> = if list.is_empty() {
            Vec::new()
        } else {
            list.split(',').collect()
        };
        for pattern in &patterns {
            if let Err(error) = regex::Regex::new(pattern) {
                let reason = error.to_string();
                let reason = reason.lines().last().unwrap_or_default().trim();
                return Err(invalid(pattern, reason));
            }
        }
        let set = RegexSet::new(&patterns).map_err(|error| invalid(list, &error.to_string()))?;
        Ok(PatternList { set })
    }

    /// Parses a list whose patterns must match the whole text, for
    /// kubegate's own flags: `http://localhost:8080` must not also accept
    /// `http://localhost:8080.evil.example`.
    ///
    /// # Errors
    ///
    /// As [`PatternList::parse`].
    pub fn parse_whole(list: &str) -> Result<Self, String> {
        PatternList::parse(list)?;
        let anchored: Vec<String> = match list {
            "" => Vec::new(),
            list => list.split(',').map(|p| format!("^(?:{p})$")).collect(),
        };
        let set = RegexSet::new(&anchored).map_err(|error| invalid(list, &error.to_string()))?;
        Ok(PatternList { set })
    }

    /// Whether any pattern matches `text`.
    pub fn is_match(&self, text: &str) -> bool {
        self.set.is_match(text)
    }

    /// The first pattern that matches `text`, if any.
    pub fn first_match(&self, text: &str) -> Option<&str> {
        let index = self.set.matches(text).into_iter().next()?;
        self.set.patterns().get(index).map(String::as_str)
    }
}

fn invalid(pattern: &str, reason: &str) -> String {
    format!("the pattern {pattern:?} is not a valid regular expression: {reason}")
}
