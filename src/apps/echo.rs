use async_trait::async_trait;

use super::{App, AppError, IncomingMessage};

/// "echo X" replies "X"; "ping" replies "pong" (case-insensitive keywords).
pub struct Echo;

#[async_trait]
impl App for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    async fn handle(&self, msg: &mut IncomingMessage) -> Result<bool, AppError> {
        let text = msg.text.trim();
        let (word, rest) = match text.split_once(char::is_whitespace) {
            Some((w, r)) => (w, r.trim_start()),
            None => (text, ""),
        };
        if word.eq_ignore_ascii_case("ping") && rest.is_empty() {
            msg.respond("pong");
            return Ok(true);
        }
        if word.eq_ignore_ascii_case("echo") && !rest.is_empty() {
            let reply = rest.to_string();
            msg.respond(reply);
            return Ok(true);
        }
        Ok(false)
    }
}
