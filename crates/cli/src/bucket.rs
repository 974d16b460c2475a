//! `nimbus bucket`: the object store's basics over `/v1/buckets` (make, list, remove, serve
//! as a website). Objects themselves go through the S3 tools (`aws s3 cp`, boto3, …).

use std::process::ExitCode;

use reqwest::Method;
use serde_json::Value;

use crate::client::Client;
use crate::{BucketCommand, Output};

/// Objects asked for per page by `bucket ls NAME` (the API's maximum).
const PAGE_OBJECTS: usize = 1000;

pub async fn bucket(
    client: &Client,
    command: &BucketCommand,
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command {
        BucketCommand::Create { name } => {
            let created: Value = client
                .json(
                    client
                        .request(Method::POST, "/v1/buckets")
                        .json(&serde_json::json!({ "name": name })),
                )
                .await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                println!("created bucket {name}");
            }
        }
        BucketCommand::Ls { name: None, .. } => {
            let list: Value = client
                .json(client.request(Method::GET, "/v1/buckets"))
                .await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<40} {:>14}  WEBSITE", "NAME", "CREATED_AT_MS");
                for b in list["buckets"].as_array().into_iter().flatten() {
                    let website = match &b["website"] {
                        Value::Null => "-".to_string(),
                        w => match w["error_document"].as_str() {
                            Some(e) => format!(
                                "index {}, error {e}",
                                w["index_document"].as_str().unwrap_or("")
                            ),
                            None => format!("index {}", w["index_document"].as_str().unwrap_or("")),
                        },
                    };
                    println!(
                        "{:<40} {:>14}  {website}",
                        b["name"].as_str().unwrap_or(""),
                        b["created_at_ms"]
                    );
                }
            }
        }
        BucketCommand::Ls {
            name: Some(name),
            prefix,
        } => {
            // Page through the whole listing; JSON output is one array of every object.
            let mut after: Option<String> = None;
            let mut all = Vec::new();
            if output != Output::Json {
                println!("{:>12} {:>14}  KEY", "SIZE_BYTES", "MODIFIED_MS");
            }
            loop {
                let mut query = vec![
                    ("prefix", prefix.clone().unwrap_or_default()),
                    ("limit", PAGE_OBJECTS.to_string()),
                ];
                if let Some(a) = &after {
                    query.push(("after", a.clone()));
                }
                let page: Value = client
                    .json(
                        client
                            .request(Method::GET, &format!("/v1/buckets/{name}/objects"))
                            .query(&query),
                    )
                    .await?;
                for o in page["objects"].as_array().into_iter().flatten() {
                    if output == Output::Json {
                        all.push(o.clone());
                    } else {
                        println!(
                            "{:>12} {:>14}  {}",
                            o["size_bytes"],
                            o["modified_ms"],
                            o["key"].as_str().unwrap_or("")
                        );
                    }
                }
                match page["next_after"].as_str() {
                    Some(next) => after = Some(next.to_string()),
                    None => break,
                }
            }
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "objects": all }))?
                );
            }
        }
        BucketCommand::Rm { name, force } => {
            client
                .send(
                    client
                        .request(Method::DELETE, &format!("/v1/buckets/{name}"))
                        .query(&[("force", force.to_string())]),
                )
                .await?;
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "bucket": name, "deleted": true })
                    )?
                );
            } else {
                println!("deleted bucket {name}");
            }
        }
        BucketCommand::Website {
            name,
            index,
            error,
            off,
        } => {
            let path = format!("/v1/buckets/{name}/website");
            if *off {
                client.send(client.request(Method::DELETE, &path)).await?;
                if output == Output::Json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({ "bucket": name, "website": null })
                        )?
                    );
                } else {
                    println!("bucket {name} is no longer a website");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let Some(index) = index else {
                anyhow::bail!("name the index document (--index index.html), or --off");
            };
            let mut body = serde_json::json!({ "index_document": index });
            if let Some(e) = error {
                body["error_document"] = e.as_str().into();
            }
            let site: Value = client
                .json(client.request(Method::PUT, &path).json(&body))
                .await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&site)?);
            } else {
                let error = error
                    .as_deref()
                    .map_or(String::new(), |e| format!(", error document {e}"));
                println!(
                    "bucket {name} is a website: index document {index}{error}, served for host \
                     {name}.<--website-domain> on the server's listener"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
