//! RFC 8785 JSON Canonicalization Scheme (JCS).
//!
//! Two request bodies that are equal as JSON values canonicalize to the same
//! bytes, so their fingerprints match: member order, insignificant whitespace,
//! string escape spelling (`"\u0041"` vs `"A"`) and number spelling (`1`,
//! `1.0`, `1e0`, `10E-1`) do not matter, while any change of a value, a
//! member name, array order or a type (`1` vs `"1"`) changes the output.
//!
//! The output follows RFC 8785:
//!
//! * no whitespace; `true`, `false` and `null` as is;
//! * strings escape only `"`, `\` and control characters below U+0020
//!   (`\b \t \n \f \r` short forms, otherwise `\u00xx` with lowercase hex);
//!   everything else, including `/`, U+007F and non-ASCII, is raw UTF-8;
//! * object members are sorted by their names compared as UTF-16 code unit
//!   sequences (which differs from UTF-8 byte order for characters above
//!   U+FFFF versus U+E000..=U+FFFF), recursively;
//! * every number is an IEEE-754 double printed with the ECMAScript
//!   `Number.prototype.toString` algorithm (shortest round-trip digits).
//!
//! # Numbers and precision
//!
//! Because RFC 8785 treats every number as a double, integers beyond
//! 2<sup>53</sup> lose precision exactly as they would in JavaScript:
//! `9007199254740993` canonicalizes to `9007199254740992`, so two bodies that
//! differ only in such digits get the same fingerprint. Clients that need
//! exact big integers must send them as strings. Numbers whose magnitude
//! exceeds the double range (e.g. `1e400`) are rejected with
//! [`CanonicalJsonError::NumberOutOfRange`]; tiny numbers underflow to `0`.
//!
//! Number literals are converted with Rust's correctly rounded
//! `str::parse::<f64>` from their original text (not with `serde_json`'s
//! default, faster but not always correctly rounded float parser), so the
//! result agrees with other RFC 8785 implementations.
//!
//! # Rejected input
//!
//! Invalid JSON (including invalid UTF-8, lone surrogate escapes and
//! trailing garbage), duplicate member names and nesting of
//! [`MAX_DEPTH`] or more arrays/objects are errors; nothing is written to the
//! output buffer in that case.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// Nesting limit: a body whose arrays/objects nest `MAX_DEPTH` (128) or more
/// levels deep is rejected with [`CanonicalJsonError::TooDeep`], so at most
/// 127 levels are accepted. This equals `serde_json`'s own fixed recursion
/// limit and keeps the recursive canonicalizer far away from stack overflow.
pub const MAX_DEPTH: usize = 128;

/// Why a body could not be canonicalized.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CanonicalJsonError {
    /// The body is not valid JSON (invalid syntax, invalid UTF-8, a lone
    /// surrogate escape, premature end or trailing characters).
    Syntax {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in bytes) of the error.
        column: usize,
        /// `serde_json`'s description of the problem, without the position.
        message: String,
    },
    /// A number outside IEEE-754 double range (e.g. `1e400`): RFC 8785
    /// cannot represent it.
    NumberOutOfRange {
        /// The number as written in the body.
        literal: String,
    },
    /// An object has the same member name twice (RFC 8785 requires
    /// rejecting it).
    DuplicateKey {
        /// The repeated member name (unescaped).
        key: String,
    },
    /// Arrays/objects nested `limit` (128) or more levels deep — protects
    /// the stack.
    TooDeep {
        /// The nesting limit that was reached.
        limit: usize,
    },
}

/// Longest excerpt of user data (a literal or a key) shown in messages.
const MAX_SHOWN: usize = 64;

/// Cuts `s` to at most [`MAX_SHOWN`] bytes on a character boundary.
fn excerpt(s: &str) -> (&str, &'static str) {
    if s.len() <= MAX_SHOWN {
        return (s, "");
    }
    let mut end = MAX_SHOWN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s.get(..end).unwrap_or(""), "…")
}

impl fmt::Display for CanonicalJsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax {
                line,
                column,
                message,
            } => write!(
                f,
                "the request body is not valid JSON at line {line}, column {column}: {message}; \
                 send well-formed JSON or fingerprint the raw bytes instead"
            ),
            Self::NumberOutOfRange { literal } => {
                let (shown, more) = excerpt(literal);
                write!(
                    f,
                    "the request body contains the number {shown}{more}, which is outside the \
                     range of an IEEE-754 double and cannot be canonicalized (RFC 8785); send \
                     it as a string or fingerprint the raw bytes instead"
                )
            }
            Self::DuplicateKey { key } => {
                let (shown, more) = excerpt(key);
                write!(
                    f,
                    "the request body has the member name \"{}{more}\" twice in one object, \
                     which RFC 8785 canonicalization rejects; send each member name once",
                    shown.escape_debug()
                )
            }
            Self::TooDeep { limit } => write!(
                f,
                "the request body nests arrays/objects {limit} or more levels deep; send a \
                 flatter body or fingerprint the raw bytes instead"
            ),
        }
    }
}

impl std::error::Error for CanonicalJsonError {}

/// Writes the RFC 8785 canonical form of `json` to `out`.
///
/// The canonical bytes are appended to `out`; on error `out` is left
/// unchanged. The rules are RFC 8785's: members sorted by UTF-16 code units, numbers in ECMAScript form, minimal string escapes, no whitespace.
pub fn canonicalize_into(json: &[u8], out: &mut Vec<u8>) -> Result<(), CanonicalJsonError> {
    let value = parse(json)?;
    out.reserve(json.len());
    write_value(&value, out);
    Ok(())
}

/// Convenience: returns the canonical bytes.
///
/// Equivalent to [`canonicalize_into`] with a fresh buffer.
pub fn canonicalize(json: &[u8]) -> Result<Vec<u8>, CanonicalJsonError> {
    let mut out = Vec::new();
    canonicalize_into(json, &mut out)?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parsed JSON value; strings borrow from the input when they contain no
/// escapes. Object members are kept sorted (UTF-16 order) and unique.
#[derive(Debug)]
enum Value<'de> {
    Null,
    Bool(bool),
    Number(f64),
    String(Cow<'de, str>),
    Array(Vec<Value<'de>>),
    Object(Vec<(Cow<'de, str>, Value<'de>)>),
}

/// Finds the source text of number literals, in document order.
///
/// `serde_json` (without `arbitrary_precision`) only hands out the parsed
/// value, and its default float parser is not always correctly rounded.
/// Since it visits numbers strictly in document order and everything before
/// a visited number is valid JSON, the n-th literal found by this scanner is
/// the n-th number visited.
struct NumberScanner<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> NumberScanner<'a> {
    /// Returns the next number literal after the previous one.
    fn next_literal(&mut self) -> Option<&'a [u8]> {
        let bytes = self.input;
        let mut i = self.pos;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'"' => {
                    i += 1;
                    loop {
                        match bytes.get(i) {
                            None => break,
                            Some(b'\\') => i += 2,
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            Some(_) => i += 1,
                        }
                    }
                }
                b'-' | b'0'..=b'9' => {
                    let start = i;
                    while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = bytes.get(i) {
                        i += 1;
                    }
                    self.pos = i;
                    return bytes.get(start..i);
                }
                _ => i += 1,
            }
        }
        self.pos = i;
        None
    }
}

/// Shared parser state: the number scanner and the first structured error.
struct State<'a> {
    numbers: NumberScanner<'a>,
    error: Option<CanonicalJsonError>,
}

impl State<'_> {
    /// Records `error` and returns a placeholder error that aborts parsing.
    fn fail<T, E: de::Error>(&mut self, error: CanonicalJsonError) -> Result<T, E> {
        self.error = Some(error);
        Err(E::custom("canonical JSON error"))
    }

    /// Converts the next number literal to a double (`fallback` is what
    /// `serde_json` parsed, used only if the literal cannot be found).
    fn number<'de, E: de::Error>(&mut self, fallback: f64) -> Result<Value<'de>, E> {
        let Some(literal) = self.numbers.next_literal() else {
            return Ok(Value::Number(fallback));
        };
        let text = std::str::from_utf8(literal).unwrap_or("");
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Value::Number(v)),
            Ok(_) => self.fail(CanonicalJsonError::NumberOutOfRange {
                literal: text.to_owned(),
            }),
            Err(_) if fallback.is_finite() => Ok(Value::Number(fallback)),
            Err(_) => self.fail(CanonicalJsonError::NumberOutOfRange {
                literal: text.to_owned(),
            }),
        }
    }
}

/// Seed/visitor for any JSON value at a given nesting depth.
struct ValueSeed<'s, 'a> {
    state: &'s mut State<'a>,
    /// Number of arrays/objects enclosing this value.
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = Value<'de>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Value<'de>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value<'de>, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value<'de>, E> {
        Ok(Value::Bool(v))
    }

    #[allow(clippy::cast_precision_loss)]
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value<'de>, E> {
        self.state.number(v as f64)
    }

    #[allow(clippy::cast_precision_loss)]
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value<'de>, E> {
        self.state.number(v as f64)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value<'de>, E> {
        self.state.number(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value<'de>, E> {
        Ok(Value::String(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value<'de>, A::Error> {
        let depth = self.depth + 1;
        if depth >= MAX_DEPTH {
            return self
                .state
                .fail(CanonicalJsonError::TooDeep { limit: MAX_DEPTH });
        }
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(ValueSeed {
            state: &mut *self.state,
            depth,
        })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value<'de>, A::Error> {
        let depth = self.depth + 1;
        if depth >= MAX_DEPTH {
            return self
                .state
                .fail(CanonicalJsonError::TooDeep { limit: MAX_DEPTH });
        }
        let mut members: Vec<(Cow<'de, str>, Value<'de>)> =
            Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value = map.next_value_seed(ValueSeed {
                state: &mut *self.state,
                depth,
            })?;
            members.push((key, value));
        }
        members.sort_unstable_by(|a, b| cmp_utf16(&a.0, &b.0));
        for pair in members.windows(2) {
            if let [(a, _), (b, _)] = pair {
                if a == b {
                    return self.state.fail(CanonicalJsonError::DuplicateKey {
                        key: a.clone().into_owned(),
                    });
                }
            }
        }
        Ok(Value::Object(members))
    }
}

/// Seed/visitor for an object member name.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Cow<'de, str>, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

/// Compares member names as UTF-16 code unit sequences (RFC 8785 §3.2.3).
///
/// UTF-8 byte order equals code point order, and that equals UTF-16 order
/// except between a supplementary character (UTF-8 lead byte `F0..=F4`,
/// UTF-16 surrogates `D800..=DFFF`) and one in `U+E000..=U+FFFF` (lead byte
/// `EE`/`EF`). Only the first differing byte matters: if it is inside a
/// character, both characters share their lead byte and hence their class.
fn cmp_utf16(a: &str, b: &str) -> Ordering {
    let (ab, bb) = (a.as_bytes(), b.as_bytes());
    let Some((&x, &y)) = ab.iter().zip(bb).find(|(x, y)| x != y) else {
        return ab.len().cmp(&bb.len());
    };
    let supplementary = |c: u8| c >= 0xf0;
    let high_bmp = |c: u8| c == 0xee || c == 0xef;
    if (supplementary(x) && high_bmp(y)) || (high_bmp(x) && supplementary(y)) {
        y.cmp(&x)
    } else {
        x.cmp(&y)
    }
}

/// Maps a `serde_json` error to a [`CanonicalJsonError`].
fn map_error(err: &serde_json::Error, state: &mut State<'_>) -> CanonicalJsonError {
    if let Some(error) = state.error.take() {
        return error;
    }
    let full = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    if message == "recursion limit exceeded" {
        return CanonicalJsonError::TooDeep { limit: MAX_DEPTH };
    }
    if message == "number out of range" {
        if let Some(literal) = state.numbers.next_literal() {
            return CanonicalJsonError::NumberOutOfRange {
                literal: String::from_utf8_lossy(literal).into_owned(),
            };
        }
    }
    CanonicalJsonError::Syntax {
        line: err.line(),
        column: err.column(),
        message: message.to_owned(),
    }
}

/// Parses `json` into a [`Value`] with sorted, duplicate-free objects.
fn parse(json: &[u8]) -> Result<Value<'_>, CanonicalJsonError> {
    let mut state = State {
        numbers: NumberScanner {
            input: json,
            pos: 0,
        },
        error: None,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let result = ValueSeed {
        state: &mut state,
        depth: 0,
    }
    .deserialize(&mut deserializer)
    .and_then(|value| deserializer.end().map(|()| value));
    result.map_err(|err| map_error(&err, &mut state))
}

// ---------------------------------------------------------------------------
// Serialization
// ---------------------------------------------------------------------------

/// Appends the canonical form of `value`.
fn write_value(value: &Value<'_>, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(v) => write_number(*v, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            out.push(b'{');
            for (i, (key, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_value(item, out);
            }
            out.push(b'}');
        }
    }
}

/// Appends `s` as an RFC 8785 string literal.
fn write_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.push(b'"');
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(bytes.get(run_start..i).unwrap_or_default());
        run_start = i + 1;
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        } else {
            out.extend_from_slice(short);
        }
    }
    out.extend_from_slice(bytes.get(run_start..).unwrap_or_default());
    out.push(b'"');
}

/// Fixed-size stack buffer for formatting one double.
struct NumBuf {
    bytes: [u8; 48],
    len: usize,
}

impl NumBuf {
    fn new() -> Self {
        Self {
            bytes: [0; 48],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }

    fn push(&mut self, s: &[u8]) -> bool {
        let end = self.len + s.len();
        match self.bytes.get_mut(self.len..end) {
            Some(dst) => {
                dst.copy_from_slice(s);
                self.len = end;
                true
            }
            None => false,
        }
    }
}

impl fmt::Write for NumBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.push(s.as_bytes()) {
            Ok(())
        } else {
            Err(fmt::Error)
        }
    }
}

impl std::io::Write for NumBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.push(buf) {
            Ok(buf.len())
        } else {
            Err(std::io::ErrorKind::WriteZero.into())
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A positive decimal `0.d1d2…dk × 10^n` without leading or trailing zeros.
struct Decimal {
    digits: [u8; 32],
    k: usize,
    n: i32,
}

impl Decimal {
    /// Reads any plain decimal spelling (`123.45`, `1.5e-7`, `1e+21`).
    fn parse(text: &[u8]) -> Self {
        let mut dec = Self {
            digits: [0; 32],
            k: 0,
            n: 0,
        };
        let mut int_digits: i32 = 0;
        let mut in_fraction = false;
        let mut rest = text;
        while let Some((&c, tail)) = rest.split_first() {
            match c {
                b'0'..=b'9' => {
                    if dec.k == 0 && c == b'0' {
                        // Leading zero: shifts the point, not a digit.
                        if in_fraction {
                            int_digits -= 1;
                        }
                    } else {
                        if let Some(slot) = dec.digits.get_mut(dec.k) {
                            *slot = c;
                            dec.k += 1;
                        }
                        if !in_fraction {
                            int_digits += 1;
                        }
                    }
                }
                b'.' => in_fraction = true,
                b'e' | b'E' => {
                    rest = tail;
                    break;
                }
                _ => {}
            }
            rest = tail;
        }
        let (negative, exp_digits) = match rest.split_first() {
            Some((b'-', tail)) => (true, tail),
            Some((b'+', tail)) => (false, tail),
            _ => (false, rest),
        };
        let mut exp: i32 = 0;
        for &c in exp_digits {
            exp = exp
                .saturating_mul(10)
                .saturating_add(i32::from(c.wrapping_sub(b'0')));
        }
        dec.n = int_digits.saturating_add(if negative { -exp } else { exp });
        while dec.k > 0 && dec.digits.get(dec.k - 1) == Some(&b'0') {
            dec.k -= 1;
        }
        dec
    }

    fn digits(&self) -> &[u8] {
        self.digits.get(..self.k).unwrap_or_default()
    }

    /// Writes the number per ECMAScript `Number::toString` step 6 onwards.
    fn write_es(&self, out: &mut Vec<u8>) {
        let digits = self.digits();
        let Some((first, tail)) = digits.split_first() else {
            out.push(b'0');
            return;
        };
        let k = i32::try_from(self.k).unwrap_or(i32::MAX);
        let n = self.n;
        let zeros = |out: &mut Vec<u8>, count: i32| {
            out.extend(std::iter::repeat_n(
                b'0',
                usize::try_from(count).unwrap_or(0),
            ));
        };
        if k <= n && n <= 21 {
            out.extend_from_slice(digits);
            zeros(out, n - k);
        } else if 0 < n && n <= 21 {
            let (int_part, frac_part) = digits.split_at(usize::try_from(n).unwrap_or(0));
            out.extend_from_slice(int_part);
            out.push(b'.');
            out.extend_from_slice(frac_part);
        } else if -6 < n && n <= 0 {
            out.extend_from_slice(b"0.");
            zeros(out, -n);
            out.extend_from_slice(digits);
        } else {
            out.push(*first);
            if !tail.is_empty() {
                out.push(b'.');
                out.extend_from_slice(tail);
            }
            let e = n - 1;
            out.extend_from_slice(if e < 0 { b"e-" } else { b"e+" });
            write_u64(u64::from(e.unsigned_abs()), out);
        }
    }
}

/// Appends the decimal digits of `x`.
fn write_u64(mut x: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut pos = buf.len();
    loop {
        pos -= 1;
        if let Some(slot) = buf.get_mut(pos) {
            // `x % 10` < 10, so the narrowing cannot truncate.
            *slot = b'0' + (x % 10) as u8;
        }
        x /= 10;
        if x == 0 || pos == 0 {
            break;
        }
    }
    out.extend_from_slice(buf.get(pos..).unwrap_or_default());
}

/// 2<sup>53</sup>: below it every integer is a double and prints exactly.
const EXACT_INT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// Appends a finite double using ECMAScript `Number::toString` (ECMA-262
/// §6.1.6.1.20), as RFC 8785 §3.2.2.3 requires.
fn write_number(v: f64, out: &mut Vec<u8>) {
    use std::fmt::Write as _;

    if v == 0.0 || !v.is_finite() {
        // -0 prints as "0"; non-finite values cannot come from JSON.
        out.push(b'0');
        return;
    }
    if v < 0.0 {
        out.push(b'-');
    }
    let v = v.abs();
    if v < EXACT_INT_LIMIT && v.fract() == 0.0 {
        // Fast path: the integer's own digits are its shortest form.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        write_u64(v as u64, out);
        return;
    }
    // Shortest round-trip digits, closest to `v`. serde_json's float
    // formatter is several times faster than `{:e}`; both are shortest.
    let mut buf = NumBuf::new();
    if serde_json::to_writer(&mut buf, &v).is_err() {
        buf = NumBuf::new();
        if write!(buf, "{v:e}").is_err() {
            out.push(b'0');
            return;
        }
    }
    let text = buf.as_bytes();
    // ECMAScript breaks a tie between two equally close shortest digit
    // strings towards the even one (1424953923781206.25 -> …206.2, not .3).
    // Only an odd last digit can be the wrong side of a tie, and ties need a
    // short exact expansion; `{:.p$e}` rounds the exact value ties-to-even.
    if last_digit_is_odd(text) && tie_possible(v) {
        let dec = Decimal::parse(text);
        let mut even = NumBuf::new();
        if dec.k > 0 && write!(even, "{:.*e}", dec.k - 1, v).is_ok() {
            let round_trips = std::str::from_utf8(even.as_bytes())
                .ok()
                .and_then(|t| t.parse::<f64>().ok())
                .is_some_and(|back| back.to_bits() == v.to_bits());
            if round_trips {
                Decimal::parse(even.as_bytes()).write_es(out);
                return;
            }
        }
    }
    if text.iter().any(|&c| c == b'e' || c == b'E') {
        Decimal::parse(text).write_es(out);
    } else {
        // Plain notation with shortest digits is already the ECMAScript
        // form (the formatter only uses it within ECMAScript's plain range)
        // once a fraction's trailing zeros (the ".0" of "5e20" as
        // "500000000000000000000.0") are dropped.
        out.extend_from_slice(trim_fraction_zeros(text));
    }
}

/// Drops trailing zeros of a fraction part, and then a bare `.`.
fn trim_fraction_zeros(mut text: &[u8]) -> &[u8] {
    if text.contains(&b'.') {
        while let [rest @ .., b'0'] = text {
            text = rest;
        }
        if let [rest @ .., b'.'] = text {
            text = rest;
        }
    }
    text
}

/// Whether the last significant digit of a decimal spelling is odd.
fn last_digit_is_odd(text: &[u8]) -> bool {
    let end = text
        .iter()
        .position(|&c| c == b'e' || c == b'E')
        .unwrap_or(text.len());
    let mut mantissa = trim_fraction_zeros(text.get(..end).unwrap_or_default());
    while let [rest @ .., b'0' | b'.'] = mantissa {
        mantissa = rest;
    }
    mantissa.last().is_some_and(|d| d % 2 == 1)
}

/// Whether the exact value of positive `v` could be a midpoint between two
/// 17-or-fewer-digit decimals (it needs at most 18 significant digits).
fn tie_possible(v: f64) -> bool {
    let bits = v.to_bits();
    let biased = i32::try_from((bits >> 52) & 0x7ff).unwrap_or(0);
    let fraction = bits & ((1 << 52) - 1);
    let (mantissa, exp) = if biased == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1 << 52), biased - 1075)
    };
    if mantissa == 0 {
        return false;
    }
    // v = odd × 2^e2. For e2 < 0 the expansion has about 0.7·|e2| or more
    // significant digits; for e2 > 22 the odd part would have to be a
    // multiple of 5^e2 > 2^53.
    let e2 = exp + i32::try_from(mantissa.trailing_zeros()).unwrap_or(0);
    (-27..=23).contains(&e2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(json: &str) -> String {
        match canonicalize(json.as_bytes()) {
            Ok(bytes) => String::from_utf8(bytes).unwrap_or_else(|e| panic!("not UTF-8: {e}")),
            Err(e) => panic!("canonicalize({json:?}) failed: {e}"),
        }
    }

    fn canon_err(json: &str) -> CanonicalJsonError {
        match canonicalize(json.as_bytes()) {
            Ok(bytes) => panic!(
                "canonicalize({json:?}) unexpectedly gave {:?}",
                String::from_utf8_lossy(&bytes)
            ),
            Err(e) => e,
        }
    }

    fn num_bits(bits: u64) -> String {
        let mut out = Vec::new();
        write_number(f64::from_bits(bits), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn rfc8785_appendix_b_number_table() {
        let table: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for &(bits, want) in table {
            assert_eq!(num_bits(bits), want, "bits {bits:016x}");
        }
    }

    #[test]
    fn number_literals() {
        let cases = [
            ("1e30", "1e+30"),
            ("1E30", "1e+30"),
            ("4.50", "4.5"),
            ("2e-3", "0.002"),
            ("0.000001", "0.000001"),
            ("1e-7", "1e-7"),
            ("-0", "0"),
            ("-0.0e5", "0"),
            ("9007199254740993", "9007199254740992"),
            ("295147905179352830000", "295147905179352830000"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("5e-324", "5e-324"),
            ("333333333.33333329", "333333333.3333333"),
            ("1e21", "1e+21"),
            ("1e20", "100000000000000000000"),
            ("123456789012345680000", "123456789012345680000"),
            ("0.1", "0.1"),
            ("-1.5e-10", "-1.5e-10"),
            ("1e-400", "0"),
            ("18446744073709551615", "18446744073709552000"),
            ("-9223372036854775808", "-9223372036854776000"),
            ("1.0", "1"),
            ("100", "100"),
            ("12.5e1", "125"),
            ("0.0000001234", "1.234e-7"),
            ("0.000001234", "0.000001234"),
        ];
        for (input, want) in cases {
            assert_eq!(canon(input), want, "input {input}");
            assert_eq!(canon(&format!("[{input}]")), format!("[{want}]"));
        }
    }

    #[test]
    fn numbers_are_correctly_rounded() {
        // Exactly between two doubles / needing more than serde_json's fast
        // path: the result must equal Rust's correctly rounded parse.
        for lit in [
            "2.2250738585072011e-308",
            "2.2250738585072012e-308",
            "9007199254740993.0",
            "0.30000000000000004",
            "7.038531e-26",
            "1.00000000000000011102230246251565404236316680908203125",
            "4.9406564584124654e-324",
        ] {
            let want = match lit.parse::<f64>() {
                Ok(v) => v,
                Err(e) => panic!("{e}"),
            };
            let got = match canon(lit).parse::<f64>() {
                Ok(v) => v,
                Err(e) => panic!("{e}"),
            };
            assert_eq!(got.to_bits(), want.to_bits(), "literal {lit}");
        }
    }

    /// Checks `write_number(v)` against an independent reference: Rust's
    /// `{:e}` (shortest, closest, ties rounded up) with ECMAScript's
    /// ties-to-even rule applied via Rust's exact formatting. Returns
    /// whether `v` was a tie.
    fn check_number(v: f64) -> bool {
        let mut out = Vec::new();
        write_number(v, &mut out);
        let s = String::from_utf8_lossy(&out).into_owned();
        if v == 0.0 {
            assert_eq!(s, "0");
            return false;
        }
        let back: f64 = s.parse().unwrap_or(f64::NAN);
        assert_eq!(back.to_bits(), v.to_bits(), "{s} does not round-trip");
        assert_eq!(s.starts_with('-'), v < 0.0);
        let got = Decimal::parse(s.as_bytes());
        let sci = format!("{:e}", v.abs());
        let want = Decimal::parse(sci.as_bytes());
        assert_eq!(got.k, want.k, "{s} is not shortest ({sci})");
        let mut tie = false;
        if got.digits() != want.digits() || got.n != want.n {
            // Only allowed for an exact tie, resolved to the even digit.
            let exact = format!("{:.*e}", got.k + 40, v.abs());
            let mantissa = exact.split('e').next().unwrap_or_default();
            let tail = mantissa.get(got.k + 1..).unwrap_or_default();
            assert!(
                tail.starts_with('5') && tail[1..].bytes().all(|b| b == b'0'),
                "{s} vs {sci}: not a tie ({exact})"
            );
            assert!(
                !last_digit_is_odd(s.as_bytes()),
                "{s}: tie not broken to even"
            );
            tie = true;
        }
        // ECMAScript layout, checked by re-rendering the reference.
        let mut layout = Vec::new();
        if v < 0.0 {
            layout.push(b'-');
        }
        got.write_es(&mut layout);
        assert_eq!(layout, out);
        // Canonical output is a fixed point.
        assert_eq!(canon(&s), s);
        tie
    }

    #[test]
    fn random_doubles_match_reference() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let v = f64::from_bits(next());
            if v.is_finite() {
                check_number(v);
            }
        }
        // Doubles with short exact expansions, where ties happen.
        let mut ties = 0;
        for _ in 0..20_000 {
            let r = next();
            let m = (r >> 11) | 1;
            let e2 = i32::try_from(r % 60).unwrap_or(0) - 32;
            let v = (m as f64) * 2f64.powi(e2);
            if check_number(v) {
                ties += 1;
            }
            check_number(-v);
        }
        assert!(ties > 0, "no ties exercised");
    }

    #[test]
    fn ties_between_shortest_digit_strings_go_to_even() {
        // 1424953923781206.25 exactly: .2 and .3 are equally close.
        assert_eq!(canon("1424953923781206.25"), "1424953923781206.2");
        assert_eq!(canon("-1424953923781206.25"), "-1424953923781206.2");
        // 2^53 + 2 = 9007199254740994 and 2^54 + 4 print exactly, no tie.
        assert_eq!(canon("9007199254740994"), "9007199254740994");
        assert_eq!(canon("18014398509481988"), "18014398509481988");
        // In [1e15, 2^51) the spacing of doubles is 0.25, so n.25 and n.75
        // are exact ties between two 17-digit strings: even digit wins.
        for n in [
            1_000_000_000_000_001_u64,
            1_234_567_890_123_457,
            2_000_000_000_000_000,
        ] {
            assert_eq!(canon(&format!("{n}.25")), format!("{n}.2"));
            assert_eq!(canon(&format!("{n}.75")), format!("{n}.8"));
            assert_eq!(canon(&format!("{n}.5")), format!("{n}.5"));
        }
    }

    #[test]
    fn rfc8785_sorting_example() {
        let input = r#"{
          "\u20ac": "Euro Sign",
          "\r": "Carriage Return",
          "\ufb33": "Hebrew Letter Dalet With Dagesh",
          "1": "One",
          "\ud83d\ude00": "Emoji: Grinning Face",
          "\u0080": "Control",
          "\u00f6": "Latin Small Letter O With Diaeresis"
        }"#;
        let want = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
                    \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
                    \"\u{1f600}\":\"Emoji: Grinning Face\",\
                    \"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canon(input), want);
    }

    #[test]
    fn utf16_order_differs_from_utf8_order() {
        // U+10000 (UTF-16 D800 DC00) sorts before U+E000 and U+FFFF.
        assert_eq!(
            canon(
                "{\"\u{ffff}\":1,\"\u{e000}\":2,\"\u{10000}\":3,\"a\u{10000}\":4,\"a\u{ffff}\":5}"
            ),
            "{\"a\u{10000}\":4,\"a\u{ffff}\":5,\"\u{10000}\":3,\"\u{e000}\":2,\"\u{ffff}\":1}"
        );
        let samples = [
            "",
            "a",
            "ab",
            "b",
            "\u{7f}",
            "\u{80}",
            "\u{7ff}",
            "\u{800}",
            "\u{d7ff}",
            "\u{e000}",
            "\u{e001}",
            "\u{fffd}",
            "\u{ffff}",
            "\u{10000}",
            "\u{10001}",
            "\u{1f600}",
            "\u{10ffff}",
            "a\u{e000}",
            "a\u{10000}",
            "\u{e000}a",
            "\u{10000}a",
            "\u{ff00}",
            "\u{1ff00}",
            "\u{100}",
            "\u{1000}",
        ];
        for a in samples {
            for b in samples {
                assert_eq!(
                    cmp_utf16(a, b),
                    a.encode_utf16().cmp(b.encode_utf16()),
                    "{a:?} vs {b:?}"
                );
            }
        }
        assert_eq!(cmp_utf16("ab", "a"), Ordering::Greater);
        assert_eq!(cmp_utf16("", ""), Ordering::Equal);
        assert_eq!(cmp_utf16("\u{e9}", "\u{e8}"), Ordering::Greater);
    }

    #[test]
    fn rfc8785_structure_example() {
        let input = r#"{
          "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
          "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
          "literals": [null, true, false]
        }"#;
        let want = "{\"literals\":[null,true,false],\
                    \"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\
                    \"string\":\"\u{20ac}$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}";
        assert_eq!(canon(input), want);
    }

    #[test]
    fn string_escaping() {
        assert_eq!(
            canon(r#""\u0000\u0001\b\t\n\u000b\f\r\u001f \u007f/\\\"é\ud83d\ude00""#),
            "\"\\u0000\\u0001\\b\\t\\n\\u000b\\f\\r\\u001f \u{7f}/\\\\\\\"é\u{1f600}\""
        );
        assert_eq!(canon(r#""\/\u00e9\u20AC""#), "\"/é€\"");
        assert_eq!(canon(r#""""#), "\"\"");
        // Escaping applies to member names as well.
        assert_eq!(canon(r#"{"a\nb":"\u001a"}"#), "{\"a\\nb\":\"\\u001a\"}");
    }

    #[test]
    fn literals_and_whitespace() {
        assert_eq!(
            canon(" \n\t{ \"b\" : [ true , false , null ] , \"a\" : { } , \"c\" : [ ] }\r\n "),
            "{\"a\":{},\"b\":[true,false,null],\"c\":[]}"
        );
        assert_eq!(canon("null"), "null");
        assert_eq!(canon(" 7 "), "7");
    }

    #[test]
    fn equal_values_give_identical_bytes() {
        let a = r#"{"id":1,"name":"A","tags":["x","y"],"nested":{"b":2.0,"a":[1e0,10E-1]}}"#;
        let spellings = [
            r#"{"nested":{"a":[1,1.0],"b":2},"tags":["x","y"],"name":"\u0041","id":1.0}"#,
            "{\n  \"name\" : \"A\",\n  \"id\" : 1e0,\n  \"tags\" : [ \"\\u0078\", \"y\" ],\n  \
             \"nested\" : { \"b\" : 20e-1, \"a\" : [ 0.1e1, 100e-2 ] }\n}",
        ];
        let want = canon(a);
        assert_eq!(
            want,
            r#"{"id":1,"name":"A","nested":{"a":[1,1],"b":2},"tags":["x","y"]}"#
        );
        for s in spellings {
            assert_eq!(canon(s), want, "{s}");
        }
    }

    #[test]
    fn changed_values_give_different_bytes() {
        let base = canon(r#"{"a":1,"b":["x","y"],"c":{"d":true}}"#);
        for changed in [
            r#"{"a":2,"b":["x","y"],"c":{"d":true}}"#,
            r#"{"a":"1","b":["x","y"],"c":{"d":true}}"#,
            r#"{"A":1,"b":["x","y"],"c":{"d":true}}"#,
            r#"{"a":1,"b":["y","x"],"c":{"d":true}}"#,
            r#"{"a":1,"b":["x","y"],"c":{"d":false}}"#,
            r#"{"a":1,"b":["x","y"],"c":{"d":null}}"#,
            r#"{"a":1,"b":["x","y "],"c":{"d":true}}"#,
            r#"{"a":1,"b":["x","y"],"c":{"d":[true]}}"#,
            r#"{"a":1,"b":["x","y"],"c":{"d":true},"e":null}"#,
            r#"{"a":1.000001,"b":["x","y"],"c":{"d":true}}"#,
        ] {
            assert_ne!(canon(changed), base, "{changed}");
        }
        assert_ne!(canon("1"), canon("\"1\""));
        assert_ne!(canon("[]"), canon("{}"));
        assert_ne!(canon("null"), canon("\"null\""));
    }

    #[test]
    fn appends_and_leaves_buffer_alone_on_error() {
        let mut out = b"prefix:".to_vec();
        assert_eq!(canonicalize_into(br#"{"b":1,"a":2}"#, &mut out), Ok(()));
        assert_eq!(out, br#"prefix:{"a":2,"b":1}"#);
        let mut out = b"keep".to_vec();
        assert!(canonicalize_into(b"{\"a\":1,\"a\":2}", &mut out).is_err());
        assert_eq!(out, b"keep");
    }

    #[test]
    fn syntax_errors_have_position() {
        let err = canon_err("{\n  \"a\": 1,\n  \"b\" 2\n}");
        assert_eq!(
            err,
            CanonicalJsonError::Syntax {
                line: 3,
                column: 7,
                message: "expected `:`".to_owned(),
            }
        );
        assert_eq!(
            err.to_string(),
            "the request body is not valid JSON at line 3, column 7: expected `:`; \
             send well-formed JSON or fingerprint the raw bytes instead"
        );
        assert!(matches!(
            canon_err("[1, 2"),
            CanonicalJsonError::Syntax {
                line: 1,
                column: 5,
                ..
            }
        ));
        assert!(matches!(canon_err(""), CanonicalJsonError::Syntax { .. }));
        assert!(matches!(
            canon_err("[01]"),
            CanonicalJsonError::Syntax { .. }
        ));
        assert!(matches!(
            canon_err("NaN"),
            CanonicalJsonError::Syntax { .. }
        ));
        assert!(matches!(
            canon_err("[1,]"),
            CanonicalJsonError::Syntax { .. }
        ));
        // Lone surrogate and invalid UTF-8.
        assert!(matches!(
            canon_err(r#""\ud800""#),
            CanonicalJsonError::Syntax { .. }
        ));
        assert!(matches!(
            canonicalize(b"\"\xff\""),
            Err(CanonicalJsonError::Syntax { .. })
        ));
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        assert_eq!(
            canon_err(r#"{"a":1}x"#),
            CanonicalJsonError::Syntax {
                line: 1,
                column: 8,
                message: "trailing characters".to_owned(),
            }
        );
        assert!(matches!(
            canon_err("1 2"),
            CanonicalJsonError::Syntax { .. }
        ));
        assert!(matches!(
            canon_err("{} {}"),
            CanonicalJsonError::Syntax { .. }
        ));
        assert_eq!(canon("{} \n"), "{}");
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        assert_eq!(
            canon_err(r#"{"a":1,"b":2,"a":3}"#),
            CanonicalJsonError::DuplicateKey {
                key: "a".to_owned()
            }
        );
        // Same name spelled differently.
        assert_eq!(
            canon_err(r#"{"A":1,"\u0041":1}"#),
            CanonicalJsonError::DuplicateKey {
                key: "A".to_owned()
            }
        );
        // Nested.
        let err = canon_err(r#"{"x":[{"k":1},{"z":{"q\n":1,"q\n":1}}]}"#);
        assert_eq!(
            err,
            CanonicalJsonError::DuplicateKey {
                key: "q\n".to_owned()
            }
        );
        assert_eq!(
            err.to_string(),
            "the request body has the member name \"q\\n\" twice in one object, which \
             RFC 8785 canonicalization rejects; send each member name once"
        );
        // Same name in different objects is fine.
        assert_eq!(canon(r#"[{"a":1},{"a":1}]"#), r#"[{"a":1},{"a":1}]"#);
    }

    #[test]
    fn out_of_range_numbers_are_rejected() {
        for lit in ["1e400", "-1e400", "1.8e308"] {
            assert_eq!(
                canon_err(&format!("{{\"a\":[1,2.5,{lit}]}}")),
                CanonicalJsonError::NumberOutOfRange {
                    literal: lit.to_owned()
                },
                "{lit}"
            );
        }
        let big = "9".repeat(400);
        let err = canon_err(&format!("[\"1e999\",{big}]"));
        assert_eq!(
            err,
            CanonicalJsonError::NumberOutOfRange {
                literal: big.clone()
            }
        );
        let shown = err.to_string();
        assert!(shown.starts_with(&format!(
            "the request body contains the number {}…,",
            &big[..64]
        )));
    }

    #[test]
    fn nesting_limit() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let ok = nest(MAX_DEPTH - 1);
        assert_eq!(canon(&ok), ok);
        let obj_ok = format!(
            "{}1{}",
            "{\"a\":".repeat(MAX_DEPTH - 1),
            "}".repeat(MAX_DEPTH - 1)
        );
        assert_eq!(canon(&obj_ok), obj_ok);
        for n in [MAX_DEPTH, MAX_DEPTH + 1, 10_000] {
            assert_eq!(
                canon_err(&nest(n)),
                CanonicalJsonError::TooDeep { limit: MAX_DEPTH },
                "depth {n}"
            );
        }
        let err = canon_err(&"{\"a\":".repeat(MAX_DEPTH + 1));
        assert_eq!(err, CanonicalJsonError::TooDeep { limit: MAX_DEPTH });
        assert_eq!(
            err.to_string(),
            "the request body nests arrays/objects 128 or more levels deep; send a flatter \
             body or fingerprint the raw bytes instead"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        const ALPHABET: &[u8] = b"{}[]\",:0123456789-+.eEtrufalsn \\u\n\xc3\xa9\xff";
        let seed = br#"{"a":[1,2.5e3,-0,"x\u00e9\n",{"b":null,"c":true}],"d":false}"#;
        for round in 0..600 {
            let len = usize::try_from(next() % 64).unwrap_or(0);
            let input: Vec<u8> = match round % 3 {
                // Arbitrary bytes.
                0 => (0..len).map(|_| next().to_le_bytes()[0]).collect(),
                // JSON-ish alphabet.
                1 => (0..len)
                    .map(|_| ALPHABET[usize::try_from(next()).unwrap_or(0) % ALPHABET.len()])
                    .collect(),
                // Mutations of a valid document.
                _ => {
                    let mut doc = seed.to_vec();
                    for _ in 0..1 + next() % 3 {
                        let at = usize::try_from(next()).unwrap_or(0) % doc.len();
                        let b = ALPHABET[usize::try_from(next()).unwrap_or(0) % ALPHABET.len()];
                        match next() % 3 {
                            0 => doc[at] = b,
                            1 => doc.insert(at, b),
                            _ => {
                                doc.remove(at);
                            }
                        }
                    }
                    doc
                }
            };
            if let Ok(once) = canonicalize(&input) {
                // Canonical output is valid JSON and a fixed point.
                assert_eq!(canonicalize(&once).as_ref(), Ok(&once));
            }
        }
    }
}
