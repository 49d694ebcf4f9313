//! Text as gateways send it: form fields percent-decoded to bytes, then
//! decoded in the character set the gateway names, strictly. Bytes that
//! are not valid in that set are refused with an error naming the set and
//! the field; nothing is replaced by U+FFFD, so no message is stored
//! garbled.
//!
//! Kannel names the set of an inbound message's text in the get-url's
//! `%C` (with `%c`, the coding: 0 GSM, 1 binary, 2 UCS-2) and in post-url's
//! `Content-Type: …; charset=` (with `X-Kannel-Coding`). Without
//! `mo-recode`, a message a phone sent as UCS-2 (emoji, most non-Latin
//! scripts) arrives as raw UTF-16BE.

use encoding_rs::Encoding;

/// A form (`a=1&b=2`, `+` for space) as raw byte pairs, in order.
/// (`form_urlencoded::parse`, which serde_urlencoded uses, decodes to text
/// at once, replacing what is not UTF-8 with U+FFFD: the very loss this
/// module exists to prevent.)
pub fn form_pairs(raw: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    raw.split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = match p.iter().position(|&b| b == b'=') {
                Some(i) => (&p[..i], &p[i + 1..]),
                None => (p, &p[..0]),
            };
            (unescape(k), unescape(v))
        })
        .collect()
}

fn unescape(s: &[u8]) -> Vec<u8> {
    let plus: Vec<u8> = s
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&plus).collect()
}

/// The character set a gateway names, for decoding: `charset` (a label
/// such as `UTF-8`, `UTF-16BE`, `UCS-2`, `ISO-8859-1`) or, without one,
/// Kannel's `coding` (2: UCS-2, i.e. UTF-16BE; otherwise UTF-8).
pub fn named(charset: Option<&str>, coding: Option<&str>) -> Result<&'static Encoding, String> {
    let coding = coding.map(str::trim).filter(|c| !c.is_empty());
    if coding == Some("1") {
        return Err(
            "the message is binary (coding 1, 8-bit data), not text; dbrouter stores text only"
                .into(),
        );
    }
    let label = charset
        .map(|c| c.trim().trim_matches('"').trim())
        .filter(|c| !c.is_empty());
    match label {
        None if coding == Some("2") => Ok(encoding_rs::UTF_16BE),
        None => Ok(encoding_rs::UTF_8),
        Some(l) => {
            let upper = l.to_ascii_uppercase();
            match upper.as_str() {
                // Kannel's and SMPP's names that the WHATWG labels lack.
                "UCS-2" | "UCS2" | "UCS-2BE" | "UTF-16" | "UTF16BE" => Ok(encoding_rs::UTF_16BE),
                "UTF8" => Ok(encoding_rs::UTF_8),
                "LATIN1" | "ISO8859-1" | "ISO_8859-1" => Ok(encoding_rs::WINDOWS_1252),
                _ => Encoding::for_label(l.as_bytes()).ok_or_else(|| {
                    format!(
                        "unknown character set {l:?}: send UTF-8, UTF-16BE (UCS-2) or ISO-8859-1"
                    )
                }),
            }
        }
    }
}

/// `bytes` as text in `encoding`, or an error naming `what` and the set.
pub fn decode(bytes: &[u8], encoding: &'static Encoding, what: &str) -> Result<String, String> {
    encoding
        .decode_without_bom_handling_and_without_replacement(bytes)
        .map(|s| s.into_owned())
        .ok_or_else(|| {
            format!(
                "{what} is not valid {}: check the charset the gateway sends (Kannel: %C in get-url, or mo-recode = true)",
                encoding.name()
            )
        })
}

/// The `charset` parameter of a Content-Type header value, unquoted.
pub fn content_type_charset(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A form, its %C and %c, and the text or the error expected.
    type Case = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Result<&'static str, &'static str>,
    );

    fn text(raw: &str, charset: Option<&str>, coding: Option<&str>) -> Result<String, String> {
        let pairs = form_pairs(raw.as_bytes());
        let enc = named(charset, coding)?;
        decode(&pairs[0].1, enc, "text")
    }

    #[test]
    fn decodes_what_the_gateway_names_and_refuses_the_rest() {
        // (form, %C, %c, expected)
        let cases: &[Case] = &[
            (
                "text=hello++world%09tab%0Anext",
                Some("UTF-8"),
                Some("0"),
                Ok("hello  world\ttab\nnext"),
            ),
            ("text=caf%C3%A9+%F0%9F%98%80", None, None, Ok("café 😀")),
            (
                "text=%00c%00a%00f%00%E9%00+%D8%3D%DE%00",
                Some("UTF-16BE"),
                Some("2"),
                Ok("café 😀"),
            ),
            ("text=%04%16%04%16", None, Some("2"), Ok("ЖЖ")),
            ("text=%04%16", Some("UCS-2"), None, Ok("Ж")),
            ("text=caf%E9", Some("ISO-8859-1"), None, Ok("café")),
            ("text=caf%E9", Some("\"latin1\""), None, Ok("café")),
            (
                "text=caf%E9",
                Some("UTF-8"),
                Some("0"),
                Err("text is not valid UTF-8"),
            ),
            ("text=caf%E9", None, None, Err("text is not valid UTF-8")),
            (
                "text=%D8%3D",
                Some("UTF-16BE"),
                None,
                Err("text is not valid UTF-16BE"),
            ),
            (
                "text=%00a%00",
                Some("UTF-16BE"),
                None,
                Err("text is not valid UTF-16BE"),
            ),
            ("text=x", None, Some("1"), Err("binary (coding 1")),
            (
                "text=x",
                Some("KOI-7X"),
                None,
                Err("unknown character set \"KOI-7X\""),
            ),
        ];
        for (raw, charset, coding, want) in cases {
            let got = text(raw, *charset, *coding);
            match (want, &got) {
                (Ok(w), Ok(g)) => assert_eq!(g, w, "{raw}"),
                (Err(w), Err(g)) => assert!(g.contains(w), "{raw}: {g}"),
                _ => panic!("{raw}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn reads_the_charset_of_a_content_type() {
        assert_eq!(
            content_type_charset("text/plain; charset=\"UTF-16BE\""),
            Some("UTF-16BE")
        );
        assert_eq!(
            content_type_charset("application/x-www-form-urlencoded;Charset=utf-8"),
            Some("utf-8")
        );
        assert_eq!(content_type_charset("text/plain"), None);
    }
}
