//! Text from files (tensor keys, paths, case names) made safe for one terminal line:
//! a newline in a key must not forge a second `error:` line, an escape sequence must
//! not reach the terminal.

use std::borrow::Cow;

/// `text` with every control character written as an escape (`\n`, `\t`, `\r`,
/// `\u{1b}`); text without one is returned as it is.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(printable("a\nerror: b"), "a\\nerror: b");
        assert_eq!(printable("\u{1b}[31mred\u{7f}"), "\\u{1b}[31mred\\u{7f}");
        assert_eq!(printable("tab\there\r"), "tab\\there\\r");
        assert!(matches!(printable("plain ünïcode"), std::borrow::Cow::Borrowed(_)));
    }
}
