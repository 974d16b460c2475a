//! The nats source of queue triggers: not built yet (issue 18 is under way).

use platform::queue::{Connector, Consumer, SourceError, Subscription};

/// Connects queue triggers to nats.
pub struct NatsConnector;

#[async_trait::async_trait]
impl Connector for NatsConnector {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn connect(&self, _sub: &Subscription<'_>) -> Result<Box<dyn Consumer>, SourceError> {
        Err(SourceError::new("the nats source is not built yet"))
    }
}
