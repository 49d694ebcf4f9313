//! Values written out as SQL literals, for a prepared statement run by
//! `EXECUTE name(...)` in a simple query. The simple-query protocol has no
//! parameters, but it can carry several statements in one round trip; the
//! inbound batch uses that to send its write and its COMMIT together.
//!
//! Every value becomes an escape string constant, `E'…'`, whose meaning does
//! not depend on `standard_conforming_strings`; the prepared statement's
//! parameter types say how the server reads it (an array's text form, a
//! number). Text holding a NUL byte cannot be written this way (no
//! PostgreSQL text can hold one, and the simple query is NUL-terminated):
//! the builder then gives up and the caller binds the values instead, where
//! the server reports the bad text.

use std::fmt::Display;

/// The argument list of an `EXECUTE`, built one value at a time.
pub struct Args {
    sql: String,
    ok: bool,
}

impl Args {
    /// `EXECUTE statement(` …
    pub fn execute(statement: &str) -> Args {
        Args {
            sql: format!("EXECUTE {statement}("),
            ok: true,
        }
    }

    fn next(&mut self) {
        if !self.sql.ends_with('(') {
            self.sql.push_str(", ");
        }
    }

    /// A number (or anything whose text form needs no quoting inside an
    /// array or a string constant: digits, '.', '-', 'e').
    pub fn number(&mut self, v: impl Display) -> &mut Args {
        self.next();
        self.sql.push_str(&format!("E'{v}'"));
        self
    }

    /// An array of numbers, NULL for `None`.
    pub fn numbers<T: Display>(&mut self, v: impl IntoIterator<Item = Option<T>>) -> &mut Args {
        self.next();
        self.sql.push_str("E'{");
        for (i, x) in v.into_iter().enumerate() {
            if i > 0 {
                self.sql.push(',');
            }
            match x {
                Some(x) => self.sql.push_str(&x.to_string()),
                None => self.sql.push_str("NULL"),
            }
        }
        self.sql.push_str("}'");
        self
    }

    /// An array of text, NULL for `None`. Each element is double-quoted
    /// inside the array (so no text is read as NULL, and spaces, commas and
    /// braces stay as they are), with `"` and `\` escaped by a backslash;
    /// the whole array is then escaped once more for the `E'…'` constant.
    pub fn texts<'a>(&mut self, v: impl IntoIterator<Item = Option<&'a str>>) -> &mut Args {
        self.next();
        self.sql.push_str("E'{");
        for (i, x) in v.into_iter().enumerate() {
            if i > 0 {
                self.sql.push(',');
            }
            let Some(x) = x else {
                self.sql.push_str("NULL");
                continue;
            };
            self.sql.push('"');
            for c in x.chars() {
                match c {
                    // `\` escapes twice: in the array, then in the constant.
                    '"' => self.sql.push_str("\\\\\""),
                    '\\' => self.sql.push_str("\\\\\\\\"),
                    // `''`, not `\'`: the latter is refused under backslash_quote = off.
                    '\'' => self.sql.push_str("''"),
                    '\0' => self.ok = false,
                    c => self.sql.push(c),
                }
            }
            self.sql.push('"');
        }
        self.sql.push_str("}'");
        self
    }

    /// The finished `EXECUTE name(...)`, or None if some text held a NUL.
    pub fn finish(mut self) -> Option<String> {
        self.sql.push(')');
        self.ok.then_some(self.sql)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_escape_twice_and_nul_gives_up() {
        let mut a = Args::execute("s");
        a.numbers([Some(1), None])
            .number(2.5)
            .texts([Some("a\"b\\c'd"), None, Some("")]);
        assert_eq!(
            a.finish().as_deref(),
            Some(r#"EXECUTE s(E'{1,NULL}', E'2.5', E'{"a\\"b\\\\c''d",NULL,""}')"#)
        );
        let mut a = Args::execute("s");
        a.texts([Some("a\0b")]);
        assert_eq!(a.finish(), None);
    }
}
