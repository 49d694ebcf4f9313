//! How long a text is as SMS: its encoding (GSM-7 when every character is
//! in the GSM 03.38 alphabet or its extension, else UCS-2), and the parts
//! it takes on the air.
//!
//! One part carries 160 septets (GSM-7) or 70 UTF-16 units (UCS-2). A longer
//! text is split into parts of 153 septets or 67 units each (the rest of the
//! 140 octets holds the concatenation header), filled greedily, never
//! splitting a character: an extension character (`€`, `[`, ...) costs two
//! septets and a character outside the Basic Multilingual Plane (most
//! emoji) two UTF-16 units, and neither is cut in half. An empty text is one
//! (empty) part.
//!
//! The database computes the same counts (`dbrouter.encoding`,
//! `dbrouter.segments`, migrations/0011_segments.sql) into every
//! message's `encoding` and `segments`; `tests/segments.rs` checks the two
//! against each other on random texts.

use crate::gsm;

/// A text's encoding on the air.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    /// The name the database stores (`messages.encoding`).
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ucs2 => "ucs2",
        }
    }

    /// What one part holds, in this encoding's units, alone and when
    /// concatenated.
    fn capacity(self) -> (usize, usize) {
        match self {
            Encoding::Gsm7 => (160, 153),
            Encoding::Ucs2 => (70, 67),
        }
    }

    /// The units `c` costs: septets (GSM-7) or UTF-16 units (UCS-2).
    fn cost(self, c: char) -> usize {
        match self {
            Encoding::Gsm7 => gsm::septets(c),
            Encoding::Ucs2 => c.len_utf16(),
        }
    }
}

/// The encoding `text` is sent in.
pub fn encoding(text: &str) -> Encoding {
    if gsm::is_gsm7(text) {
        Encoding::Gsm7
    } else {
        Encoding::Ucs2
    }
}

/// `text` cut into the parts it is sent as (one part when it fits in one).
pub fn split(text: &str) -> Vec<&str> {
    let enc = encoding(text);
    let (single, multi) = enc.capacity();
    if text.chars().map(|c| enc.cost(c)).sum::<usize>() <= single {
        return vec![text];
    }
    let mut parts = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, c) in text.char_indices() {
        let cost = enc.cost(c);
        if used + cost > multi {
            parts.push(&text[start..i]);
            start = i;
            used = 0;
        }
        used += cost;
    }
    parts.push(&text[start..]);
    parts
}

/// How many parts `text` takes.
pub fn segments(text: &str) -> usize {
    split(text).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_at_the_edges() {
        let a = |n: usize| "a".repeat(n);
        assert_eq!(segments(""), 1);
        assert_eq!(segments(&a(160)), 1);
        assert_eq!(segments(&a(161)), 2);
        assert_eq!(segments(&a(306)), 2);
        assert_eq!(segments(&a(307)), 3);
        // 80 euro signs are 160 septets: one part; one more is two.
        assert_eq!(segments(&"€".repeat(80)), 1);
        assert_eq!(segments(&"€".repeat(81)), 2);
        // 152 septets then an escape pair: the pair goes whole to part two.
        let t = format!("{}€{}", a(152), a(10));
        assert_eq!(split(&t)[0], a(152));
        let u = |n: usize| "ж".repeat(n);
        assert_eq!(encoding(&u(1)), Encoding::Ucs2);
        assert_eq!(segments(&u(70)), 1);
        assert_eq!(segments(&u(71)), 2);
        assert_eq!(segments(&u(134)), 2);
        assert_eq!(segments(&u(135)), 3);
        // 35 emoji are 70 units: one part; an emoji is never cut.
        assert_eq!(segments(&"😀".repeat(35)), 1);
        let e = format!("{}😀", u(66));
        assert_eq!(split(&format!("{e}{}", u(10)))[0], u(66));
    }

    #[test]
    fn the_parts_join_back_into_the_text() {
        let t = format!("{}😀{}", "ж".repeat(100), "x".repeat(200));
        assert_eq!(split(&t).concat(), t);
    }
}
