//! Names from the system made safe to show: a cgroup, a comm or a cmdline is whatever its
//! creator chose (a quote, a tab, ESC, `ESC ] 0 ; title BEL`, bytes that are not UTF-8).
//! [`terminal`] is the one escape every terminal output goes through (the text report, the live
//! view, `doctor`, `diff`, the stderr lines): control characters are written visibly, so a
//! name can never retitle, move the cursor of or repaint the operator's terminal. [`os_name`]
//! turns raw bytes into text at the boundary without losing them (`\xff`, not U+FFFD, so two
//! names stay two). JSON and /metrics keep the real characters, escaped as their formats
//! require, by serde_json and prometheus-client.
use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A character a terminal acts on instead of showing: C0 (tab and newline included), DEL, C1.
fn is_control(c: char) -> bool {
    c.is_control()
}

/// `s` with every control character written visibly: C0 and DEL as `\x1b`, `\t`, `\r`, `\n`,
/// `\x7f`; C1 as `\u{9b}`. Everything else is kept (a backslash too: systemd's own names hold
/// `\x2d`, so a name's literal `\x1b` reads as the escape of ESC would; it stays harmless text).
pub fn terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x80 && is_control(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`terminal`] for lines of cfstrace's own making that carry names (stderr messages): each
/// line escaped, the line breaks kept.
pub fn terminal_lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && is_control(c)) {
        return Cow::Borrowed(s);
    }
    Cow::Owned(s.split('\n').map(terminal).collect::<Vec<_>>().join("\n"))
}

/// Raw bytes from the system (a directory name, a comm, a cmdline) as text: valid UTF-8 as it
/// is, every byte of an invalid sequence as `\xNN`.
pub fn os_name(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// [`os_name`] of an `OsStr` (a directory entry's name).
pub fn os_str(s: &std::ffi::OsStr) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    os_name(s.as_bytes())
}

#[derive(Debug, thiserror::Error)]
#[error("escaping a model for the terminal: {0}")]
pub struct EscapeError(#[from] serde_json::Error);

/// A copy of `model` (a report, a diff, doctor's findings) whose every string, map keys
/// included, went through [`terminal`]: renderers then draw from it and no field, however
/// it reaches the screen, can carry a control character. Through `serde_json::Value`, which
/// holds numbers as they are (no text round trip), so figures are unchanged.
pub fn for_terminal<T: Serialize + DeserializeOwned>(model: &T) -> Result<T, EscapeError> {
    let mut v = serde_json::to_value(model)?;
    escape_value(&mut v);
    Ok(serde_json::from_value(v)?)
}

fn escape_value(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => {
            if let Cow::Owned(e) = terminal(s) {
                *s = e;
            }
        }
        Value::Array(a) => a.iter_mut().for_each(escape_value),
        Value::Object(o) => {
            if o.keys().any(|k| matches!(terminal(k), Cow::Owned(_))) {
                let old = std::mem::take(o);
                for (k, mut x) in old {
                    escape_value(&mut x);
                    o.insert(terminal(&k).into_owned(), x);
                }
            } else {
                o.values_mut().for_each(escape_value);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of issue 15: none may reach a terminal raw.
    pub const HOSTILE: &[&str] = &[
        "\x1b]0;pwned\x07",
        "\x1b[2J",
        "\x1b[H",
        "a\x1b[5Ab",
        "\rover",
        "c1\u{9b}31m",
        "tab\there",
        "del\x7f",
    ];

    #[test]
    fn controls_are_written_visibly() {
        assert_eq!(terminal("\x1b]0;pwned\x07"), "\\x1b]0;pwned\\x07");
        assert_eq!(terminal("\x1b[2J"), "\\x1b[2J");
        assert_eq!(terminal("\rx\ty\n"), "\\rx\\ty\\n");
        assert_eq!(terminal("c1\u{9b}31m\u{85}"), "c1\\u{9b}31m\\u{85}");
        assert_eq!(terminal("del\x7f"), "del\\x7f");
        // Plain names, quotes, backslashes and non-ASCII are kept, without a copy.
        for s in ["/a/b", "ev\"il\\na", "système-\\x2d.slice", "容器", ""] {
            assert!(matches!(terminal(s), Cow::Borrowed(x) if x == s), "{s:?}");
        }
        for s in HOSTILE {
            let e = terminal(s);
            assert!(!e.chars().any(char::is_control), "{s:?} -> {e:?}");
            // Idempotent: escaping twice changes nothing (a model escaped again stays).
            assert_eq!(terminal(&e), e);
        }
        assert_eq!(terminal_lines("a\x1b[Hb\nc\td"), "a\\x1b[Hb\nc\\td");
        assert_eq!(terminal_lines("plain\nlines"), "plain\nlines");
    }

    #[test]
    fn invalid_utf8_is_kept_as_hex() {
        assert_eq!(os_name(b"caf\xc3\xa9"), "café");
        assert_eq!(os_name(b"bad\xff\xfe-\xc3"), "bad\\xff\\xfe-\\xc3");
        // Two different raw names stay two (U+FFFD would merge them).
        assert_ne!(os_name(b"\xff"), os_name(b"\xfe"));
        let n = os_name(&[0xffu8; 255]);
        assert_eq!(n.len(), 255 * 4);
    }

    #[test]
    fn a_model_is_escaped_everywhere_and_its_numbers_kept() {
        #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
        struct M {
            path: String,
            list: Vec<String>,
            map: std::collections::BTreeMap<String, f64>,
            x: f64,
            n: u64,
        }
        let m = M {
            path: "/a\x1b]0;pwned\x07".into(),
            list: vec!["\x1b[2J".into(), "ok".into()],
            map: [("\rk".to_string(), 0.1 + 0.2)].into(),
            x: 1.0 / 3.0,
            n: u64::MAX,
        };
        let e = for_terminal(&m).unwrap();
        assert_eq!(e.path, "/a\\x1b]0;pwned\\x07");
        assert_eq!(e.list, ["\\x1b[2J", "ok"]);
        assert_eq!(e.map.keys().next().unwrap(), "\\rk");
        assert_eq!(
            e.map.values().next().unwrap().to_bits(),
            (0.1f64 + 0.2).to_bits()
        );
        assert_eq!((e.x.to_bits(), e.n), ((1.0f64 / 3.0).to_bits(), u64::MAX));
    }
}
