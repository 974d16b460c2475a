//! The test S3 server, for the tests of this crate and of the crates that run on it
//! (feature `testkit`): SeaweedFS, which `.ci/run` starts on loopback with SigV4 checked
//! against the identity in `.ci/seaweedfs-s3.json`.
//!
//! The server is `NIMBUS_TEST_S3` (default `http://127.0.0.1:8333`), the bucket
//! `NIMBUS_TEST_S3_BUCKET` (default `nimbus-test`, made by `weed mini -bucket=`), and the
//! credentials are read from that same JSON file, so that they are written in one place.
//! Each caller gets a prefix of its own, so tests run in parallel and again without meeting
//! each other's keys.

use crate::{Credentials, S3Config};

/// The identities SeaweedFS is started with.
const IDENTITIES: &str = include_str!("../../../.ci/seaweedfs-s3.json");

/// The test server's location under a fresh prefix of its own.
pub fn config() -> S3Config {
    let identities: serde_json::Value =
        serde_json::from_str(IDENTITIES).expect(".ci/seaweedfs-s3.json is JSON");
    let key = &identities["identities"][0]["credentials"][0];
    let text = |field: &str| {
        key[field]
            .as_str()
            .unwrap_or_else(|| panic!(".ci/seaweedfs-s3.json has no {field}"))
            .to_string()
    };
    let endpoint =
        std::env::var("NIMBUS_TEST_S3").unwrap_or_else(|_| "http://127.0.0.1:8333".into());
    S3Config {
        bucket: std::env::var("NIMBUS_TEST_S3_BUCKET").unwrap_or_else(|_| "nimbus-test".into()),
        prefix: format!("test-{:016x}", rand::random::<u64>()),
        allow_http: endpoint.starts_with("http://"),
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        credentials: Some(Credentials {
            access_key_id: text("accessKey"),
            secret_access_key: text("secretKey"),
        }),
    }
}
