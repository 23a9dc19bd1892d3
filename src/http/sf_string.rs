//! The `Idempotency-Key` field value: an RFC 8941 sf-string.
//!
//! The draft defines the field as an Item Structured Header whose value is a
//! String: `DQUOTE *( unescaped / "\" ( DQUOTE / "\" ) ) DQUOTE`, where the
//! unescaped characters are visible ASCII and space other than `"` and `\`.

use std::fmt;

/// Why a field value is not an sf-string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SfStringError {
    /// The value does not start with a double quote.
    NotQuoted,
    /// The closing double quote is missing.
    Unterminated,
    /// A backslash is followed by something other than `"` or `\`.
    BadEscape {
        /// Position of the backslash in the field value.
        position: usize,
    },
    /// A byte outside visible ASCII and space.
    BadByte {
        /// The byte.
        byte: u8,
        /// Its position in the field value.
        position: usize,
    },
    /// Something follows the closing quote (parameters, a second item after
    /// a comma from a repeated header line, or stray characters).
    TrailingCharacters {
        /// Position of the first byte after the string.
        position: usize,
    },
}

impl fmt::Display for SfStringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SfStringError::NotQuoted => {
                write!(f, "the value must be a quoted string, such as \"8e03978e-40d5\"")
            }
            SfStringError::Unterminated => write!(f, "the closing double quote is missing"),
            SfStringError::BadEscape { position } => write!(
                f,
                "the backslash at position {position} must be followed by \" or \\"
            ),
            SfStringError::BadByte { byte, position } => write!(
                f,
                "byte 0x{byte:02x} at position {position} is not allowed: use visible ASCII only"
            ),
            SfStringError::TrailingCharacters { position } => write!(
                f,
                "unexpected characters after the closing quote at position {position} (send the header once, with no parameters)"
            ),
        }
    }
}

impl std::error::Error for SfStringError {}

/// Parses a field value as an sf-string and returns its content, unescaped.
/// Leading and trailing spaces around the item are ignored, as RFC 8941
/// parsing does.
pub fn parse(value: &[u8]) -> Result<String, SfStringError> {
    let start = value.iter().position(|&b| b != b' ').unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |p| p + 1);
    if value.get(start) != Some(&b'"') {
        return Err(SfStringError::NotQuoted);
    }
    let mut out = String::with_capacity(end.saturating_sub(start));
    let mut i = start + 1;
    while i < end {
        match value[i] {
            b'"' => {
                if i + 1 != end {
                    return Err(SfStringError::TrailingCharacters { position: i + 1 });
                }
                return Ok(out);
            }
            b'\\' => match value.get(i + 1) {
                Some(&c @ (b'"' | b'\\')) if i + 1 < end => {
                    out.push(char::from(c));
                    i += 2;
                }
                _ => return Err(SfStringError::BadEscape { position: i }),
            },
            b @ 0x20..=0x7E => {
                out.push(char::from(b));
                i += 1;
            }
            byte => return Err(SfStringError::BadByte { byte, position: i }),
        }
    }
    Err(SfStringError::Unterminated)
}

/// Serializes `content` as an sf-string, or `None` if it holds a byte outside
/// visible ASCII and space (which no sf-string can carry).
pub fn serialize(content: &str) -> Option<String> {
    let mut out = String::with_capacity(content.len() + 2);
    out.push('"');
    for b in content.bytes() {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            0x20..=0x7E => out.push(char::from(b)),
            _ => return None,
        }
    }
    out.push('"');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_escaped_strings() {
        assert_eq!(parse(b"\"abc-123\"").unwrap(), "abc-123");
        assert_eq!(parse(b"  \"a b\"  ").unwrap(), "a b");
        assert_eq!(parse(br#""say \"hi\" \\o/""#).unwrap(), r#"say "hi" \o/"#);
        assert_eq!(parse(b"\"\"").unwrap(), "");
    }

    #[test]
    fn rejects_each_malformation_with_its_reason() {
        let cases: [(&[u8], SfStringError); 9] = [
            (b"abc", SfStringError::NotQuoted),
            (b"", SfStringError::NotQuoted),
            (b"   ", SfStringError::NotQuoted),
            (b"\"abc", SfStringError::Unterminated),
            (b"\"abc\\\"", SfStringError::Unterminated),
            (b"\"a\\nb\"", SfStringError::BadEscape { position: 2 }),
            (
                b"\"a\tb\"",
                SfStringError::BadByte {
                    byte: b'\t',
                    position: 2,
                },
            ),
            (
                b"\"a\";p=1",
                SfStringError::TrailingCharacters { position: 3 },
            ),
            (
                b"\"a\", \"b\"",
                SfStringError::TrailingCharacters { position: 3 },
            ),
        ];
        for (input, expected) in cases {
            let got = parse(input);
            assert_eq!(got, Err(expected), "{:?}", String::from_utf8_lossy(input));
        }
        assert!(matches!(
            parse("\"é\"".as_bytes()),
            Err(SfStringError::BadByte {
                byte: 0xc3,
                position: 1
            })
        ));
    }

    #[test]
    fn serialize_round_trips_every_visible_ascii_byte() {
        let all: String = (0x20u8..=0x7E).map(char::from).collect();
        let quoted = serialize(&all).unwrap();
        assert_eq!(parse(quoted.as_bytes()).unwrap(), all);
        assert_eq!(serialize("a\"b\\c").unwrap(), r#""a\"b\\c""#);
        assert_eq!(serialize("tab\there"), None);
    }
}
