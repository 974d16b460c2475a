//! The HTTP client of the control API, with errors a user can act on.

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::Cli;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    /// The server's base URL.
    pub fn endpoint(&self) -> &str {
        &self.base
    }

    pub fn new(cli: &Cli) -> anyhow::Result<Client> {
        let base = cli.endpoint.trim_end_matches('/').to_string();
        let token = match &cli.token {
            Some(t) => t.clone(),
            None => local_token(&base, cli.data_dir.as_deref())?,
        };
        Client::with(&base, &token)
    }

    /// A client of the server at `base` with `token`.
    pub fn with(base: &str, token: &str) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("nimbus-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// Whether a server answers at this client's endpoint.
    pub async fn reachable(&self) -> bool {
        self.http
            .get(format!("{}/healthz", self.base))
            .timeout(std::time::Duration::from_millis(500))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// The server's URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// Sends a request; a non-success answer becomes an error carrying the API's message.
    pub async fn send(&self, req: RequestBuilder) -> anyhow::Result<Response> {
        let res = req.send().await.map_err(|e| self.connect_error(e))?;
        if res.status().is_success() {
            return Ok(res);
        }
        Err(api_error(res).await)
    }

    pub async fn json<T: DeserializeOwned>(&self, req: RequestBuilder) -> anyhow::Result<T> {
        let res = self.send(req).await?;
        res.json().await.context("reading the server's answer")
    }

    pub fn connect_error(&self, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            anyhow!(
                "cannot reach the Nimbus server at {}: is it running? Start one with `nimbus server`, \
                 or point NIMBUS_ENDPOINT at it",
                self.base
            )
        } else {
            anyhow!("request to {} failed: {e}", self.base)
        }
    }
}

/// Turns an error answer into a one-line message: the API's own message and code.
pub async fn api_error(res: Response) -> anyhow::Error {
    let status = res.status();
    let text = res.text().await.unwrap_or_default();
    #[derive(serde::Deserialize)]
    struct Body {
        code: String,
        message: String,
    }
    match serde_json::from_str::<Body>(&text) {
        Ok(b) if status == StatusCode::UNAUTHORIZED => anyhow!(
            "{} ({}); pass --token or NIMBUS_TOKEN, or --data-dir of the local server",
            b.message,
            b.code
        ),
        Ok(b) => anyhow!("{} ({})", b.message, b.code),
        Err(_) => anyhow!("the server answered {status}: {}", text.trim()),
    }
}

/// The admin token of a server on this machine, read from its data dir.
fn local_token(base: &str, data_dir: Option<&Path>) -> anyhow::Result<String> {
    let local = ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|p| base.starts_with(p));
    if !local {
        bail!("no token for {base}: pass --token or set NIMBUS_TOKEN");
    }
    let dir = data_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(crate::default_data_dir);
    let path = dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t.trim().to_string()),
        Err(e) => bail!(
            "no token: pass --token or set NIMBUS_TOKEN, or --data-dir of the local server \
             (cannot read {}: {e})",
            path.display()
        ),
    }
}
