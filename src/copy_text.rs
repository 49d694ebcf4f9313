//! Encoding rows for `COPY ... FROM STDIN` in PostgreSQL's text format.

/// Appends one field, escaped for COPY's text format (`None` is `\N`).
pub fn push_field(out: &mut String, value: Option<&str>) {
    let Some(value) = value else {
        out.push_str("\\N");
        return;
    };
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            // COPY cannot carry NUL in text; Postgres rejects it in text too.
            // Keep it visible so the error names the row rather than the stream.
            '\0' => out.push_str("\\x00"),
            c => out.push(c),
        }
    }
}

/// Appends one row of fields, tab-separated and newline-terminated.
pub fn push_row(out: &mut String, fields: &[Option<&str>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        push_field(out, *f);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_specials_and_null() {
        let mut s = String::new();
        push_row(&mut s, &[Some("a\tb\\c\nd\re"), None, Some("")]);
        assert_eq!(s, "a\\tb\\\\c\\nd\\re\t\\N\t\n");
    }
}
