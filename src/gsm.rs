//! The GSM 03.38 alphabet: which texts an SMS can carry in its 7-bit
//! default coding (160 characters a part) rather than UCS-2 (70).
//!
//! A character fits when it is in the default alphabet or its extension
//! table (`^ { } \ [ ~ ] | €` and form feed, each costing two septets).
//! Anything else (emoji, most scripts, curly quotes) needs UCS-2 for the
//! whole message.

/// The default alphabet, in code order (0x1B, the escape to the extension
/// table, is left out).
const DEFAULT: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";

/// The extension table's characters.
const EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// Whether `c` can be sent in the 7-bit default coding.
pub fn fits(c: char) -> bool {
    c != '\u{1b}' && (DEFAULT.contains(c) || EXTENSION.contains(c))
}

/// The septets `c` takes in the 7-bit coding: two for an extension
/// character (an escape and its code), else one.
pub fn septets(c: char) -> usize {
    if EXTENSION.contains(c) {
        2
    } else {
        1
    }
}

/// The extension table's characters with their codes (after the escape).
const EXTENSION_CODES: [(char, u8); 10] = [
    ('\u{c}', 0x0A),
    ('^', 0x14),
    ('{', 0x28),
    ('}', 0x29),
    ('\\', 0x2F),
    ('[', 0x3C),
    ('~', 0x3D),
    (']', 0x3E),
    ('|', 0x40),
    ('€', 0x65),
];

/// The escape to the extension table.
const ESCAPE: u8 = 0x1B;

/// `text` in the 7-bit coding, one septet per byte ("unpacked", as SMPP
/// carries it with data_coding 0); None if a character does not fit.
pub fn encode_unpacked(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        if let Some(&(_, code)) = EXTENSION_CODES.iter().find(|(e, _)| *e == c) {
            out.extend([ESCAPE, code]);
        } else {
            let code = DEFAULT.chars().position(|d| d == c && d != '\u{1b}')?;
            out.push(u8::try_from(code).ok()?);
        }
    }
    Some(out)
}

/// Unpacked septets back to text. A septet above 0x7F, an escape before an
/// unknown code, or a trailing escape is an error naming the byte.
pub fn decode_unpacked(bytes: &[u8]) -> Result<String, String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == ESCAPE {
            let next = bytes.get(i + 1).copied();
            match EXTENSION_CODES.iter().find(|(_, code)| Some(*code) == next) {
                Some(&(c, _)) => out.push(c),
                None => {
                    return Err(format!(
                        "GSM 7-bit text has an escape at byte {i} not followed by an extension code"
                    ))
                }
            }
            i += 2;
            continue;
        }
        match DEFAULT.chars().nth(usize::from(b)) {
            Some(c) if b < 0x80 => out.push(c),
            _ => return Err(format!("byte {b:#04x} at {i} is not a GSM 7-bit septet")),
        }
        i += 1;
    }
    Ok(out)
}

/// Whether the whole text can be sent in the 7-bit default coding.
pub fn is_gsm7(text: &str) -> bool {
    text.chars().all(fits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacked_septets_round_trip() {
        let t = "Ça coute 5€ [promo] {x} ~ | ^ \\ @£$ ÆØÅ\n";
        let bytes = encode_unpacked(t).unwrap();
        assert_eq!(bytes[0], 0x09, "Ç is 0x09");
        assert_eq!(decode_unpacked(&bytes).unwrap(), t);
        assert_eq!(encode_unpacked("😀"), None);
        assert!(decode_unpacked(&[0x41, 0x1B]).is_err());
        assert!(decode_unpacked(&[0x80]).is_err());
    }

    #[test]
    fn the_alphabet_has_its_128_codes() {
        assert_eq!(DEFAULT.chars().count(), 128);
    }

    #[test]
    fn tells_gsm7_texts_from_the_rest() {
        for t in [
            "hello",
            "Ça coute 5€ [promo] {x} ~ | ^ \\",
            "line\nbreak",
            "ÆØÅ äöü ñ ß É è",
            "",
        ] {
            assert!(is_gsm7(t), "{t:?} fits");
        }
        for t in [
            "😀",
            "Привет",
            "“quoted”",
            "tab\there",
            "ç lowercase c-cedilla",
            "\u{1b}",
        ] {
            assert!(!is_gsm7(t), "{t:?} needs UCS-2");
        }
    }
}
