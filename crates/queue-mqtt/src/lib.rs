//! The mqtt source of queue triggers: not built yet (issue 18 is under way).

use platform::queue::{Connector, Consumer, SourceError, Subscription};

/// Connects queue triggers to mqtt.
pub struct MqttConnector;

#[async_trait::async_trait]
impl Connector for MqttConnector {
    fn kind(&self) -> &'static str {
        "mqtt"
    }

    async fn connect(&self, _sub: &Subscription<'_>) -> Result<Box<dyn Consumer>, SourceError> {
        Err(SourceError::new("the mqtt source is not built yet"))
    }
}
