//! Access keys for the AWS-compatible APIs: made, listed, deleted, and looked up by id
//! for SigV4 verification without touching the store.

use std::collections::HashMap;

use model::{ErrorCode, limits};
use store::AwsKeyRecord;

use crate::{Error, Platform, now_ms};

/// What an access key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsScope {
    /// Every operation, as the admin token.
    Admin,
    /// Invocations and running flows (Step Functions' starts, an execution's description,
    /// task tokens' answers): what an application that calls functions and flows needs.
    Invoke,
    /// What functions get (`AWS_ACCESS_KEY_ID` in their environment): the object store,
    /// invocations, and running flows (Step Functions' starts, an execution's description,
    /// task tokens' answers), not the rest of the Lambda or Step Functions APIs.
    Function,
}

impl AwsScope {
    pub fn as_str(self) -> &'static str {
        match self {
            AwsScope::Admin => "admin",
            AwsScope::Invoke => "invoke",
            AwsScope::Function => "function",
        }
    }
}

impl std::str::FromStr for AwsScope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "admin" => Ok(AwsScope::Admin),
            "invoke" => Ok(AwsScope::Invoke),
            other => Err(Error::invalid(format!(
                "scope: `{other}` is not a scope; use admin or invoke"
            ))),
        }
    }
}

/// An access key as the verifier needs it.
#[derive(Clone, Debug)]
pub struct AwsKey {
    pub access_key_id: String,
    pub secret: String,
    pub scope: AwsScope,
}

/// Access key ids start so, as AWS's start with `AKIA`: a reader of a log line can tell
/// whose key it is.
const ACCESS_KEY_PREFIX: &str = "NKIA";

/// `n` characters from `[A-Za-z0-9]` (or `[A-Z0-9]` with `upper`), from the system's
/// random source by way of v4 UUIDs. The modulo bias of 256 over 62 costs under a tenth of
/// a bit per character, far below what the lengths here leave.
fn random_chars(n: usize, upper: bool) -> String {
    const ALL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let alphabet = if upper { UPPER } else { ALL };
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() == n {
                break;
            }
            out.push(alphabet[*b as usize % alphabet.len()] as char);
        }
    }
    out
}

fn new_record(name: &str, scope: AwsScope, builtin: bool) -> AwsKeyRecord {
    AwsKeyRecord {
        access_key_id: format!("{ACCESS_KEY_PREFIX}{}", random_chars(16, true)),
        name: name.to_string(),
        secret: random_chars(40, false),
        scope: scope.as_str().to_string(),
        builtin,
        created_at_ms: now_ms(),
    }
}

fn to_key(r: &AwsKeyRecord) -> AwsKey {
    AwsKey {
        access_key_id: r.access_key_id.clone(),
        secret: r.secret.clone(),
        // The store's CHECK admits only these two.
        scope: if r.scope == "invoke" {
            AwsScope::Invoke
        } else {
            AwsScope::Admin
        },
    }
}

/// The access key functions are given and where they use it.
#[derive(Clone, Debug)]
pub struct FunctionKey {
    /// The S3 API's endpoint (`AWS_ENDPOINT_URL_S3`).
    pub s3_endpoint: String,
    /// The server's own listener, where Step Functions' API is (`AWS_ENDPOINT_URL_SFN`).
    pub api_endpoint: String,
    pub key: AwsKey,
}

pub(crate) type AwsKeys = HashMap<String, AwsKey>;

impl Platform {
    /// Loads the access keys into memory, where signature checks find them.
    pub(crate) async fn load_aws_keys(&self) -> Result<(), Error> {
        let keys = self.meta.list_aws_keys().await?;
        *self.aws_keys.write().unwrap() = keys
            .iter()
            .map(|k| (k.access_key_id.clone(), to_key(k)))
            .collect();
        Ok(())
    }

    /// The admin's access key, made on the first start (by whichever node gets there
    /// first): what the server writes to `aws.credentials`.
    pub async fn admin_aws_key(&self) -> Result<AwsKeyRecord, Error> {
        if let Some(k) = self
            .meta
            .list_aws_keys()
            .await?
            .into_iter()
            .find(|k| k.builtin)
        {
            return Ok(k);
        }
        let stored = self
            .meta
            .create_aws_key(&new_record("admin", AwsScope::Admin, true))
            .await?;
        self.remember_aws_key(&stored);
        Ok(stored)
    }

    /// Makes an access key. The secret is in the answer; it is stored to verify
    /// signatures but never shown again.
    pub async fn create_aws_key(&self, name: &str, scope: AwsScope) -> Result<AwsKeyRecord, Error> {
        if name.is_empty() || name.chars().count() > limits::NAME_LEN_MAX {
            return Err(Error::invalid(format!(
                "name: must be 1 to {} characters",
                limits::NAME_LEN_MAX
            )));
        }
        if self.aws_keys.read().unwrap().len() >= limits::INVOKE_KEYS_MAX {
            return Err(Error::invalid(format!(
                "there are already {} access keys; delete unused ones first",
                limits::INVOKE_KEYS_MAX
            )));
        }
        let stored = self
            .meta
            .create_aws_key(&new_record(name, scope, false))
            .await?;
        self.remember_aws_key(&stored);
        Ok(stored)
    }

    /// Every access key (their secrets are the caller's to withhold).
    pub async fn list_aws_keys(&self) -> Result<Vec<AwsKeyRecord>, Error> {
        Ok(self.meta.list_aws_keys().await?)
    }

    /// Deletes an access key; signatures made with it fail at once. The admin's key stays.
    pub(crate) async fn delete_aws_key(&self, access_key_id: &str) -> Result<(), Error> {
        let builtin = self
            .meta
            .list_aws_keys()
            .await?
            .into_iter()
            .any(|k| k.builtin && k.access_key_id == access_key_id);
        if builtin {
            return Err(Error::invalid(format!(
                "`{access_key_id}` is the admin's access key (in aws.credentials); it cannot be deleted"
            )));
        }
        self.meta
            .delete_aws_key(access_key_id)
            .await
            .map_err(|e| match e {
                store::StoreError::KeyNotFound(id) => Error::new(
                    ErrorCode::KeyNotFound,
                    format!("key `{id}` does not exist; `nimbus keys ls` lists them"),
                ),
                other => other.into(),
            })?;
        self.aws_keys.write().unwrap().remove(access_key_id);
        Ok(())
    }

    fn remember_aws_key(&self, stored: &AwsKeyRecord) {
        self.aws_keys
            .write()
            .unwrap()
            .insert(stored.access_key_id.clone(), to_key(stored));
    }

    /// Makes the access key functions are given, derived from `secret` (the admin token),
    /// so every node sharing the token derives the same key and none is stored; functions'
    /// environments name it with `s3_endpoint` (`AWS_ENDPOINT_URL_S3`) and `api_endpoint`
    /// (the server's own listener, `AWS_ENDPOINT_URL_SFN`: Step Functions' API), so the AWS
    /// SDKs inside them reach the object store and answer task tokens unchanged.
    pub fn enable_function_key(&self, secret: &str, s3_endpoint: String, api_endpoint: String) {
        use sha2::{Digest, Sha256};
        let derive = |what: &str, n: usize, alphabet: &[u8]| -> String {
            Sha256::digest(format!("nimbus function key\n{what}\n{secret}").as_bytes())
                .iter()
                .chain(Sha256::digest(format!("{what}\n{secret}").as_bytes()).iter())
                .take(n)
                .map(|b| alphabet[*b as usize % alphabet.len()] as char)
                .collect()
        };
        let key = AwsKey {
            access_key_id: format!(
                "{ACCESS_KEY_PREFIX}{}",
                derive("id", 16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
            ),
            secret: derive(
                "secret",
                40,
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
            ),
            scope: AwsScope::Function,
        };
        *self.function_key.write().unwrap() = Some(FunctionKey {
            s3_endpoint,
            api_endpoint,
            key,
        });
    }

    /// The functions' access key and the endpoints they are told of, once enabled.
    pub fn function_key(&self) -> Option<FunctionKey> {
        self.function_key.read().unwrap().clone()
    }

    /// The access key with this id, for a signature check.
    pub fn aws_key(&self, access_key_id: &str) -> Option<AwsKey> {
        if let Some(k) = self.aws_keys.read().unwrap().get(access_key_id) {
            return Some(k.clone());
        }
        self.function_key
            .read()
            .unwrap()
            .as_ref()
            .filter(|f| f.key.access_key_id == access_key_id)
            .map(|f| f.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_look_like_aws_keys() {
        let r = new_record("ci", AwsScope::Invoke, false);
        assert_eq!(r.access_key_id.len(), 20);
        assert!(r.access_key_id.starts_with("NKIA"));
        assert!(
            r.access_key_id[4..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
        assert_eq!(r.secret.len(), 40);
        assert!(r.secret.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(r.secret, new_record("ci", AwsScope::Invoke, false).secret);
        assert_eq!(to_key(&r).scope, AwsScope::Invoke);
        assert!("root".parse::<AwsScope>().is_err());
    }
}
