//! The redis source of queue triggers: not built yet (issue 18 is under way).

use platform::queue::{Connector, Consumer, SourceError, Subscription};

/// Connects queue triggers to redis.
pub struct RedisConnector;

#[async_trait::async_trait]
impl Connector for RedisConnector {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn connect(&self, _sub: &Subscription<'_>) -> Result<Box<dyn Consumer>, SourceError> {
        Err(SourceError::new("the redis source is not built yet"))
    }
}
