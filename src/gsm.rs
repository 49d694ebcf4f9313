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

/// Whether the whole text can be sent in the 7-bit default coding.
pub fn is_gsm7(text: &str) -> bool {
    text.chars().all(fits)
}

#[cfg(test)]
mod tests {
    use super::*;

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
