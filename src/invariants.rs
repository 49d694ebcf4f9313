//! The invariants of dbrouter's tables (`sql/invariants.sql`): what must
//! hold whenever no transaction is in flight. The fault drill and the tests
//! check them.

/// One invariant: what breaks it, what the ids it returns are, and the
/// query returning them.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub name: &'static str,
    pub ids_of: &'static str,
    pub sql: &'static str,
}

const FILE: &str = include_str!("../sql/invariants.sql");

/// Every check of `sql/invariants.sql`, in its order.
pub fn checks() -> Vec<Check> {
    FILE.split("\n-- check: ")
        .skip(1)
        .filter_map(|chunk| {
            let (title, sql) = chunk.split_once('\n')?;
            let (name, ids_of) = title.trim().rsplit_once(" (")?;
            Some(Check {
                name,
                ids_of: ids_of.trim_end_matches(')'),
                sql: sql.trim(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_check_is_read() {
        let checks = super::checks();
        assert_eq!(checks.len(), super::FILE.matches("\n-- check: ").count());
        for c in checks {
            assert!(c.sql.contains("SELECT"), "{c:?}");
            assert!(!c.ids_of.is_empty(), "{c:?}");
        }
    }
}
