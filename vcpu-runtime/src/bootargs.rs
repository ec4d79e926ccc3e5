//! The hypervisor's boot arguments (`/chosen/bootargs`, QEMU's `-append`), split as Linux splits
//! its command line: words separated by whitespace, where a double-quoted stretch keeps its
//! spaces (`hv.checkpoint-on="ticks: 5 "`). The quotes are not part of a value.

/// The words of `bootargs`, quotes kept (a word may be `name="a b"`).
pub fn words(bootargs: &str) -> impl Iterator<Item = &str> {
    let mut rest = bootargs;
    core::iter::from_fn(move || {
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        if rest.is_empty() {
            return None;
        }
        let mut quoted = false;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                if c == '"' {
                    quoted = !quoted;
                }
                !quoted && c.is_ascii_whitespace()
            })
            .map_or(rest.len(), |(i, _)| i);
        let (word, tail) = rest.split_at(end);
        rest = tail;
        Some(word)
    })
}

/// The value of the first `name=VALUE` word, without the quotes around it.
pub fn value<'a>(bootargs: &'a str, name: &str) -> Option<&'a str> {
    words(bootargs).find_map(|w| {
        let v = w.strip_prefix(name)?.strip_prefix('=')?;
        Some(v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v))
    })
}

/// Whether the bare word `name` is present.
pub fn flag(bootargs: &str, name: &str) -> bool {
    words(bootargs).any(|w| w == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_on_whitespace_outside_quotes() {
        let args = "  hv.trace=events\thv.checkpoint-on=\"ticks: 5 \" hv.restore x=\"a\"b ";
        let w: Vec<&str> = words(args).collect();
        assert_eq!(w, ["hv.trace=events", "hv.checkpoint-on=\"ticks: 5 \"", "hv.restore", "x=\"a\"b"]);
        assert_eq!(words("").count(), 0);
        assert_eq!(words("   ").count(), 0);
        // An unclosed quote runs to the end, as in Linux.
        assert_eq!(words("a=\"b c").collect::<Vec<_>>(), ["a=\"b c"]);
    }

    #[test]
    fn values_lose_their_quotes_and_names_match_whole() {
        let args = "hv.checkpoint-at=7000 hv.checkpoint-on=\"ticks: 5 \" hv.restore";
        assert_eq!(value(args, "hv.checkpoint-at"), Some("7000"));
        assert_eq!(value(args, "hv.checkpoint-on"), Some("ticks: 5 "));
        assert_eq!(value(args, "hv.checkpoint"), None);
        assert_eq!(value(args, "hv.restore"), None);
        assert_eq!(value("a=", "a"), Some(""));
        assert_eq!(value("a=\"", "a"), Some("\""));
        assert!(flag(args, "hv.restore"));
        assert!(!flag(args, "hv.checkpoint-at"));
        assert!(!flag(args, "hv.rest"));
    }
}
