//! The amqp source of queue triggers: not built yet (issue 18 is under way).

use platform::queue::{Connector, Consumer, SourceError, Subscription};

/// Connects queue triggers to amqp.
pub struct AmqpConnector;

#[async_trait::async_trait]
impl Connector for AmqpConnector {
    fn kind(&self) -> &'static str {
        "amqp"
    }

    async fn connect(&self, _sub: &Subscription<'_>) -> Result<Box<dyn Consumer>, SourceError> {
        Err(SourceError::new("the amqp source is not built yet"))
    }
}
