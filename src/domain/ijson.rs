//! I-JSON (RFC 7493) at the door: JSON that every common parser reads back the same.
//! A message is stored and sent as its writer wrote it, so whatever a browser's
//! `JSON.parse`, Python's `json` or serde would refuse or mangle must be refused when
//! it is written, not discovered by every reader later. Three rules, each named in the
//! refusal: no lone surrogate in a string (`"\ud800"` has no UTF-8 form), no number
//! beyond a double's range (`1e400` reads as infinity or fails), no nesting deeper
//! than [`MAX_DEPTH`] (deep documents overflow recursive parsers).

/// Deepest nesting of arrays and objects a message may have, the message object
/// itself counting as the first level.
pub const MAX_DEPTH: usize = 64;

/// The longest number without an exponent that needs no parse to know it is within a
/// double's range: 308 characters hold at most 308 digits, below 1e308 < `f64::MAX`.
const MAX_PLAIN_NUMBER: usize = 308;

/// Which I-JSON rule a text breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error(
        "a string holds a lone surrogate ({0}), which no UTF-8 text can carry: send a valid \
        pair or another character (I-JSON, RFC 7493)"
    )]
    LoneSurrogate(String),
    #[error(
        "the number {0} is beyond a double's range, so common parsers cannot read it back: \
        send it as a string (I-JSON, RFC 7493)"
    )]
    NumberOutOfRange(String),
    #[error(
        "the JSON is nested deeper than {MAX_DEPTH} levels of arrays and objects (I-JSON, RFC \
        7493)"
    )]
    TooDeep,
}

/// Checks the I-JSON rules on JSON text whose outermost value may sit at `base_depth`
/// levels of nesting already (1 for messages inside a batch array), allowing
/// [`MAX_DEPTH`] more. Text that is not JSON at all passes through: the parser that
/// reads it next says what is wrong with it.
pub fn check(json: &[u8], base_depth: usize) -> Result<(), Violation> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH + base_depth {
                    return Err(Violation::TooDeep);
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'"' => i = string(json, i + 1)?,
            b'-' | b'0'..=b'9' => i = number(json, i)?,
            _ => i += 1,
        }
    }
    Ok(())
}

/// Scans a string from just after its opening quote; returns the index after its
/// closing quote.
fn string(json: &[u8], mut i: usize) -> Result<usize, Violation> {
    // A high surrogate waiting for its low half, and where its escape began.
    let mut high: Option<usize> = None;
    while i < json.len() {
        if high.is_none() {
            // Plain characters, most of a string, skipped a word at a time up to its
            // next quote or escape.
            i += memchr::memchr2(b'"', b'\\', &json[i..]).unwrap_or(json.len() - i);
            if i == json.len() {
                break;
            }
        }
        match json[i] {
            b'"' => break,
            b'\\' if json.get(i + 1) == Some(&b'u') => {
                let unit = json
                    .get(i + 2..i + 6)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                match (unit, high) {
                    (Some(0xDC00..=0xDFFF), Some(_)) => high = None,
                    (Some(0xDC00..=0xDFFF), None) => return Err(lone(json, i)),
                    (_, Some(start)) => return Err(lone(json, start)),
                    (Some(0xD800..=0xDBFF), None) => high = Some(i),
                    _ => {}
                }
                i += 6;
                continue;
            }
            _ if high.is_some() => return Err(lone(json, high.unwrap_or(i))),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    match high {
        Some(start) => Err(lone(json, start)),
        None => Ok(i + 1),
    }
}

fn lone(json: &[u8], at: usize) -> Violation {
    let escape = json.get(at..(at + 6).min(json.len())).unwrap_or_default();
    Violation::LoneSurrogate(String::from_utf8_lossy(escape).into_owned())
}

/// Scans a number; returns the index after it.
fn number(json: &[u8], start: usize) -> Result<usize, Violation> {
    let end = json[start..]
        .iter()
        .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
        .map_or(json.len(), |len| start + len);
    let digits = &json[start..end];
    // Only a long number or one with an exponent can overflow: most need no parse.
    if digits.len() <= MAX_PLAIN_NUMBER && !digits.iter().any(|b| matches!(b, b'e' | b'E')) {
        return Ok(end);
    }
    let text = std::str::from_utf8(digits).unwrap_or_default();
    match text.parse::<f64>() {
        Ok(value) if value.is_infinite() => {
            let shown: String = text.chars().take(40).collect();
            Err(Violation::NumberOutOfRange(shown))
        }
        _ => Ok(end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_every_parser_reads_back_passes() {
        for ok in [
            r#"{"a":[1,-2.5e10,1.7976931348623157e308,1e-400,0]}"#,
            r#"{"s":"\ud83d\ude00 \\ud800 \" \u00e9 é 😀"}"#,
            r#"{"k\u0041":"\uD800\uDC00"}"#,
            "not json [[[",
        ] {
            assert_eq!(check(ok.as_bytes(), 0), Ok(()), "{ok}");
        }
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(check(deep.as_bytes(), 0), Ok(()));
    }

    #[test]
    fn each_rule_is_named_when_broken() {
        for (bad, expected) in [
            (
                r#"{"s":"\ud800"}"#,
                Violation::LoneSurrogate(r"\ud800".into()),
            ),
            (
                r#"{"s":"x\uDBFFy"}"#,
                Violation::LoneSurrogate(r"\uDBFF".into()),
            ),
            (
                r#"{"s":"\udc00"}"#,
                Violation::LoneSurrogate(r"\udc00".into()),
            ),
            (
                r#"{"s":"\ud800\u0041"}"#,
                Violation::LoneSurrogate(r"\ud800".into()),
            ),
            (
                r#"{"\ud800":1}"#,
                Violation::LoneSurrogate(r"\ud800".into()),
            ),
            (
                r#"{"n":1e400}"#,
                Violation::NumberOutOfRange("1e400".into()),
            ),
            (
                r#"{"n":[-1E+309]}"#,
                Violation::NumberOutOfRange("-1E+309".into()),
            ),
        ] {
            assert_eq!(check(bad.as_bytes(), 0), Err(expected), "{bad}");
        }
        let huge = format!(r#"{{"n":1{}}}"#, "0".repeat(400));
        assert!(matches!(
            check(huge.as_bytes(), 0),
            Err(Violation::NumberOutOfRange(_))
        ));
        let nines = format!(r#"{{"n":-{}}}"#, "9".repeat(309));
        assert!(matches!(
            check(nines.as_bytes(), 0),
            Err(Violation::NumberOutOfRange(_))
        ));
        let largest = format!(r#"{{"n":[{},-{}.5]}}"#, "9".repeat(308), "9".repeat(307));
        assert_eq!(check(largest.as_bytes(), 0), Ok(()), "below 1e308");
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(check(deep.as_bytes(), 0), Err(Violation::TooDeep));
        assert_eq!(check(deep.as_bytes(), 1), Ok(()), "inside a batch array");
    }
}
