//! Asset path patterns — the one dialect of every csap pattern (authorization requests and
//! rules, `csap keys issue`, the mount's pre-loader, `csap audit query --path`) and its one
//! matcher ([`check`] says whether a pattern is in the dialect, [`matches`] decides a path):
//! - a pattern is `/`-separated segments, like the paths it matches (relative, no empty, `.` or
//!   `..` segments, no `\`, `"` or control characters);
//! - `*` matches any run of characters **within one segment** (never a `/`);
//! - a segment that is exactly `**` matches one or more whole segments: `show/**` covers
//!   everything below `show/` (not a file named `show`), `a/**/f.exr` matches `a/b/f.exr` and
//!   `a/b/c/f.exr` (not `a/f.exr`: name that one separately); `**` inside a longer segment
//!   (`a**`) is refused;
//! - every other character matches itself (there is no escape for a literal `*`), with no case
//!   folding;
//! - a path with an empty segment (`a//b`, a leading or trailing `/`) matches no pattern.
//!
//! Cedar's `like` has a single wildcard that crosses `/`. Rules carry the pattern text verbatim
//! in `resource.path like "..."`, which Cedar reads as a superset of the glob (every path the
//! glob matches, Cedar's `like` matches too — hence "one or more" for `**`), and the evaluator
//! decides paths with [`matches`] (see `eval`).

/// Every rule in this dialect says so in an annotation, `@paths("glob")`: rules issued before
/// it meant `*` to cross `/`, and the evaluator refuses their wildcard patterns rather than
/// silently narrowing (or, in Cedar, widening) them.
pub const RULE_ANNOTATION: &str = "paths";
/// The value of [`RULE_ANNOTATION`].
pub const RULE_ANNOTATION_VALUE: &str = "glob";

/// Longest pattern accepted.
pub const MAX_LEN: usize = 1024;

/// Checks a pattern against the rules in the module docs; the error says what is wrong.
pub fn check(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.len() > MAX_LEN {
        return Err(format!("must be 1 to {MAX_LEN} characters"));
    }
    if pattern.starts_with('/') {
        return Err("must be relative to the volume root (no leading '/')".into());
    }
    if pattern
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\\')
    {
        return Err("must not contain control characters, '\"' or '\\'".into());
    }
    for seg in pattern.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!(
                "segment {seg:?} is not allowed (no empty, '.' or '..' segments)"
            ));
        }
        if seg != "**" && seg.contains("**") {
            return Err(format!(
                "segment {seg:?}: '**' must be a whole segment (a/**/b); '*' matches within one segment"
            ));
        }
    }
    Ok(())
}

/// The literal text before `pattern`'s first wildcard: every path it matches starts with it
/// (for narrowing a scan before matching; the whole pattern when it has no wildcard).
pub fn literal_prefix(pattern: &str) -> &str {
    &pattern[..pattern.find('*').unwrap_or(pattern.len())]
}

/// Whether `pattern` has any wildcard (a pattern without one matches exactly one path, in every
/// dialect).
pub fn has_wildcard(pattern: &str) -> bool {
    pattern.contains('*')
}

/// Matches `path` against `pattern` (see the module docs). Linear backtracking at both levels
/// (the classic single-wildcard algorithm), so no pattern can make a match slow.
pub fn matches(pattern: &str, path: &str) -> bool {
    // `**` is one segment (any) followed by any number more.
    let mut pat: Vec<Seg<'_>> = Vec::new();
    for p in pattern.split('/') {
        match p {
            "**" => pat.extend([Seg::Any, Seg::AnyRun]),
            p => pat.push(Seg::Glob(p)),
        }
    }
    let segs: Vec<&str> = path.split('/').collect();
    // No pattern names an empty segment (a leading, trailing or doubled '/'): such a path is
    // not an asset path, and no rule may cover it by accident of `*` matching nothing.
    if segs.iter().any(|s| s.is_empty()) {
        return false;
    }
    wildcard_match(
        &pat,
        &segs,
        |p| matches!(p, Seg::AnyRun),
        |p, s| match p {
            Seg::Glob(p) => segment_matches(p, s),
            Seg::Any | Seg::AnyRun => true,
        },
    )
}

enum Seg<'a> {
    Glob(&'a str),
    Any,
    AnyRun,
}

/// One segment: `*` is any run of characters (the path segment holds no `/`).
fn segment_matches(pattern: &str, segment: &str) -> bool {
    let pat = pattern.as_bytes();
    let seg: Vec<u8> = segment.bytes().collect();
    wildcard_match(pat, &seg, |b| *b == b'*', |p, s| p == s)
}

/// `pattern` against `text`, where `is_star` items match any run of items and the others match
/// one item each by `eq`. On a mismatch, retries from the last star one item further.
fn wildcard_match<P, T>(
    pattern: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    eq: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && is_star(&pattern[p]) {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && eq(&pattern[p], &text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(is_star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_within_a_segment_and_double_star_crosses() {
        assert!(!matches("show/*/f1", "show/a/b/f1"), "'*' crossed '/'");
        assert!(matches("show/*/f1", "show/a/f1"));
        assert!(matches("show/**", "show/a"));
        assert!(matches("show/**", "show/a/b/c.exr"));
        assert!(
            !matches("show/**", "show"),
            "a file named like the directory"
        );
        assert!(!matches("show/**", "other/a"));
        assert!(!matches("a/**/z", "a/z"));
        assert!(matches("a/**/z", "a/b/z"));
        assert!(matches("a/**/z", "a/b/c/z"));
        assert!(!matches("a/**/z", "a/b/c/zz"));
        assert!(matches("**", "a/b"));
        assert!(matches("**", "a"));
        assert!(!matches("**/f.exr", "f.exr"));
        assert!(matches("**/f.exr", "x/y/f.exr"));
        assert!(matches("a/**/**/z", "a/b/c/z"));
        assert!(!matches("a/**/**/z", "a/b/z"));
        assert!(!matches(
            "show/seq1/shot010/*",
            "show/seq1/shot010/sub/f.exr"
        ));
        assert!(matches("show/seq1/shot010/*", "show/seq1/shot010/f.exr"));
        assert!(!matches("show/seq1/shot010/*", "show/seq1/shot010"));
        assert!(matches("a/c*.exr", "a/c1.exr"));
        assert!(!matches("a/c*.exr", "a/c1.exrx"));
        assert!(!matches("a/*.exr", "a/b/c.exr"));
        assert!(matches("*aa", "aaa"));
        assert!(!matches("aa*aa", "aaa"));
        assert!(matches("exact.exr", "exact.exr"));
        assert!(!matches("a/b", "a/bc"));
        assert!(!matches("a/b", "a/b/c"));
    }

    #[test]
    fn edge_cases_of_the_dialect() {
        // `*` may match an empty run, but a segment is never empty.
        assert!(matches("a/*", "a/b"));
        assert!(!matches("a/*", "a/"), "an empty segment");
        assert!(!matches("a/*", "a"));
        assert!(matches("a/b*", "a/b"));
        assert!(matches("*", "f.exr"));
        assert!(!matches("*", "a/f.exr"));
        // `**` is whole segments, one or more, also at the start and the end.
        assert!(matches("**/x", "a/x"));
        assert!(!matches("**/x", "x"));
        assert!(!matches("a/**", "a/"), "an empty segment");
        // Matching is by characters: a multi-byte character is one, and there is no case folding.
        assert!(matches("shot/é*", "shot/été"));
        assert!(!matches("Show/*", "show/a"));
        // A leading '/' is not stripped: paths and patterns are volume-relative.
        assert!(!matches("show/*", "/show/a"));
    }

    #[test]
    fn every_matched_path_starts_with_the_literal_prefix() {
        for (pattern, prefix) in [
            ("show/seq1/**", "show/seq1/"),
            ("show/*/f.exr", "show/"),
            ("a/c*.exr", "a/c"),
            ("**", ""),
            ("exact.exr", "exact.exr"),
        ] {
            assert_eq!(literal_prefix(pattern), prefix);
        }
        for (pattern, path) in [("show/seq1/**", "show/seq1/a/b"), ("a/c*.exr", "a/c1.exr")] {
            assert!(matches(pattern, path) && path.starts_with(literal_prefix(pattern)));
        }
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        for good in ["show/**", "a/**/b", "**", "a/*.exr", "a/b*c/d"] {
            assert!(check(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "", "/abs", "a//b", "a/./b", "a/../b", "a**", "a/***/b", "a/x**", "a\\b",
        ] {
            assert!(check(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn adversarial_patterns_stay_fast() {
        let path = format!("{}b", "a/".repeat(400));
        let pattern = "**/".repeat(300) + "c";
        let t = std::time::Instant::now();
        assert!(!matches(&pattern, &path));
        let seg = "a".repeat(1000);
        assert!(!matches(&"*a".repeat(400), &format!("{seg}b")));
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }
}
