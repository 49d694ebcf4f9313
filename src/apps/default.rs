use async_trait::async_trait;

use super::{App, AppError, IncomingMessage};

/// Replies with a configured text when no app handled the message.
pub struct DefaultReply {
    reply: String,
}

impl DefaultReply {
    pub fn new(reply: String) -> Self {
        DefaultReply { reply }
    }
}

#[async_trait]
impl App for DefaultReply {
    fn name(&self) -> &str {
        "default"
    }

    async fn default(&self, msg: &mut IncomingMessage) -> Result<bool, AppError> {
        if self.reply.is_empty() {
            return Ok(false);
        }
        msg.respond(self.reply.clone());
        Ok(true)
    }
}
