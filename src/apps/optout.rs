use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::Mutex;

use super::{App, AppError, IncomingMessage, OptChange};

/// How long the keyword table is cached; edits made with psql show within it.
const REFRESH: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Stop,
    Start,
}

/// The keyword table as last read: keyword → (action, reply).
type Table = Arc<HashMap<String, (Action, String)>>;

/// STOP/START handling from `dbrouter.opt_out_keywords` (any language): a
/// message that *is* one of those keywords (any case; surrounding spaces
/// and trailing `.` or `!` ignored) opts its sender out or back in and is
/// answered with the keyword's reply. "stop the music" is not an opt-out:
/// only the bare keyword is, as carriers handle it. Put this app first, so
/// a STOP is never taken by another app's keyword.
pub struct OptOut {
    pool: PgPool,
    cache: Mutex<Option<(Instant, Table)>>,
}

impl OptOut {
    pub fn new(pool: PgPool) -> Self {
        OptOut {
            pool,
            cache: Mutex::new(None),
        }
    }

    async fn read(&self) -> Result<Vec<(String, String, String)>, sqlx::Error> {
        let mut conn = crate::db::Conn::acquire(&self.pool).await?;
        let rows = sqlx::query_as("SELECT keyword, action, reply FROM dbrouter.opt_out_keywords")
            .persistent(crate::db::prepared())
            .fetch_all(conn.get())
            .await?;
        conn.done().await?;
        Ok(rows)
    }

    async fn table(&self) -> Result<Table, AppError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, table)) = cache.as_ref() {
            if at.elapsed() < REFRESH {
                return Ok(table.clone());
            }
        }
        let rows = self
            .read()
            .await
            .map_err(|e| AppError::new(format!("could not read dbrouter.opt_out_keywords: {e}")))?;
        let table: Table = Arc::new(
            rows.into_iter()
                .map(|(keyword, action, reply)| {
                    let action = if action == "start" {
                        Action::Start
                    } else {
                        Action::Stop
                    };
                    (keyword, (action, reply))
                })
                .collect(),
        );
        *cache = Some((Instant::now(), table.clone()));
        Ok(table)
    }
}

/// The message as a candidate keyword: trimmed, lower case, without
/// trailing `.`/`!`. `None` when it is more than one word.
fn bare_word(text: &str) -> Option<String> {
    let word = text.trim().trim_end_matches(['.', '!']).trim();
    (!word.is_empty() && !word.contains(char::is_whitespace)).then(|| word.to_lowercase())
}

#[async_trait]
impl App for OptOut {
    fn name(&self) -> &str {
        "optout"
    }

    async fn handle(&self, msg: &mut IncomingMessage) -> Result<bool, AppError> {
        let Some(word) = bare_word(&msg.text) else {
            return Ok(false);
        };
        let table = self.table().await?;
        let Some((action, reply)) = table.get(&word) else {
            return Ok(false);
        };
        msg.opt_change = Some(match action {
            Action::Stop => OptChange::Stop { keyword: word },
            Action::Start => OptChange::Start { keyword: word },
        });
        msg.respond(reply.clone());
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::bare_word;

    #[test]
    fn only_a_bare_keyword_counts() {
        assert_eq!(bare_word("  STOP! ").as_deref(), Some("stop"));
        assert_eq!(bare_word("Arrêt.").as_deref(), Some("arrêt"));
        assert_eq!(bare_word("stop the music"), None);
        assert_eq!(bare_word("  "), None);
        assert_eq!(bare_word("!!"), None);
    }
}
