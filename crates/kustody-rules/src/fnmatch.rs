//! fnmatch(3) without flags, as libsinsp's `glob` uses it: `*` (any run, `/` included), `?`
//! (any one character), `[abc]`, `[a-z]`, `[!x]`/`[^x]`, and `\` escaping the next character.
//! An unterminated `[` matches itself. Optional ASCII case folding for `iglob`.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
    Star,
    Class { negated: bool, items: Vec<(char, char)> },
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    toks: Vec<Tok>,
    fold: bool,
}

impl Pattern {
    pub fn new(pattern: &str, case_insensitive: bool) -> Pattern {
        let chars: Vec<char> = pattern.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            match c {
                '*' => {
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star);
                    }
                }
                '?' => toks.push(Tok::Any),
                '\\' => {
                    i += 1;
                    toks.push(Tok::Lit(chars.get(i).copied().unwrap_or('\\')));
                }
                '[' => match class(&chars, i) {
                    Some((tok, end)) => {
                        toks.push(tok);
                        i = end;
                    }
                    None => toks.push(Tok::Lit('[')),
                },
                c => toks.push(Tok::Lit(c)),
            }
            i += 1;
        }
        Pattern { toks, fold: case_insensitive }
    }

    /// Whether the whole of `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        let text: Vec<char> = s.chars().collect();
        let (mut p, mut t) = (0usize, 0usize);
        let mut backtrack: Option<(usize, usize)> = None;
        loop {
            match self.toks.get(p) {
                Some(Tok::Star) => {
                    backtrack = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(tok) if t < text.len() && text.get(t).is_some_and(|&c| self.one(tok, c)) => {
                    p += 1;
                    t += 1;
                    continue;
                }
                None if t == text.len() => return true,
                _ => {}
            }
            // Mismatch: let the last star swallow one more character, or fail.
            match backtrack {
                Some((sp, st)) if st < text.len() => {
                    backtrack = Some((sp, st + 1));
                    p = sp + 1;
                    t = st + 1;
                }
                _ => return false,
            }
        }
    }

    fn one(&self, tok: &Tok, c: char) -> bool {
        let fold = |x: char| if self.fold { x.to_ascii_lowercase() } else { x };
        match tok {
            Tok::Lit(l) => fold(*l) == fold(c),
            Tok::Any => true,
            Tok::Star => false,
            Tok::Class { negated, items } => {
                let hit = items
                    .iter()
                    .any(|&(lo, hi)| (lo..=hi).contains(&c) || (self.fold && (fold(lo)..=fold(hi)).contains(&fold(c))));
                hit != *negated
            }
        }
    }
}

/// Parses `[...]` starting at `start`; returns the token and the index of the closing `]`.
fn class(chars: &[char], start: usize) -> Option<(Tok, usize)> {
    let mut i = start + 1;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut items = Vec::new();
    let mut first = true;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Tok::Class { negated, items }, i));
        }
        first = false;
        let lo = if c == '\\' {
            i += 1;
            *chars.get(i)?
        } else {
            c
        };
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|&h| h != ']') {
            let hi = *chars.get(i + 2)?;
            items.push((lo, hi));
            i += 3;
        } else {
            items.push((lo, lo));
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::new(p, false).matches(s)
    }

    #[test]
    fn fnmatch_semantics() {
        assert!(m("/api/*/pods/*", "/api/v1/namespaces/d/pods/p/exec"));
        assert!(m("/api**", "/api/v1"));
        assert!(m("a?c", "abc") && !m("a?c", "ac"));
        assert!(m("[a-c]x", "bx") && !m("[!a-c]x", "bx") && m("[^a-c]x", "dx"));
        assert!(m("/x\\*", "/x*") && !m("/x\\*", "/xy"));
        assert!(m("[]]", "]") && m("[", "["));
        assert!(m("*", "") && m("", "") && !m("", "a"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx") && !m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(Pattern::new("WEB-?", true).matches("web-1"));
        assert!(!m("WEB-?", "web-1"));
        // Pathological backtracking stays linear-ish.
        assert!(!m(&"*a".repeat(50), &"a".repeat(40)));
    }
}
