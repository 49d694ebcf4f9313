use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::Mutex;

use super::{App, AppError, IncomingMessage};

/// How long the keyword table is cached; edits made with psql show within it.
const REFRESH: Duration = Duration::from_secs(2);

/// The keyword table as last read, and when.
type Cached = Option<(Instant, Arc<HashMap<String, String>>)>;

/// Replies from `dbrouter.keywords` when a message's first word (any case)
/// is a keyword there.
pub struct Keyword {
    pool: PgPool,
    cache: Mutex<Cached>,
}

impl Keyword {
    pub fn new(pool: PgPool) -> Self {
        Keyword {
            pool,
            cache: Mutex::new(None),
        }
    }

    async fn read(&self) -> Result<Vec<(String, String)>, sqlx::Error> {
        let mut conn = crate::db::Conn::acquire(&self.pool).await?;
        let rows = sqlx::query_as("SELECT keyword, reply FROM dbrouter.keywords")
            .persistent(crate::db::prepared())
            .fetch_all(conn.get())
            .await?;
        conn.done().await?;
        Ok(rows)
    }

    async fn table(&self) -> Result<Arc<HashMap<String, String>>, AppError> {
        let mut cache = self.cache.lock().await;
        if let Some((at, map)) = cache.as_ref() {
            if at.elapsed() < REFRESH {
                return Ok(map.clone());
            }
        }
        let rows = self
            .read()
            .await
            .map_err(|e| AppError::new(format!("could not read dbrouter.keywords: {e}")))?;
        let map = Arc::new(rows.into_iter().collect::<HashMap<_, _>>());
        *cache = Some((Instant::now(), map.clone()));
        Ok(map)
    }
}

#[async_trait]
impl App for Keyword {
    fn name(&self) -> &str {
        "keyword"
    }

    async fn handle(&self, msg: &mut IncomingMessage) -> Result<bool, AppError> {
        let Some(word) = msg.text.split_whitespace().next() else {
            return Ok(false);
        };
        let word = word.to_lowercase();
        let table = self.table().await?;
        match table.get(&word) {
            Some(reply) => {
                msg.respond(reply.clone());
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
