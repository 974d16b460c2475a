//! Webhook destinations: an asynchronous invocation's record POSTed as JSON.

use std::sync::OnceLock;
use std::time::Duration;

/// How long a webhook may take to answer.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// POSTs `body` to `url`; any 2xx answer means it was taken.
pub(crate) async fn post(url: &str, body: Vec<u8>) -> Result<(), String> {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .timeout(WEBHOOK_TIMEOUT)
            .build()
            .expect("a client with a timeout builds")
    });
    let res = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("it answered {}", res.status()))
    }
}
