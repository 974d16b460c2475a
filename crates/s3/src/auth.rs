//! Who may use the object store: requests signed (SigV4 or V2, in headers or a presigned
//! query) by one of the platform's AWS access keys (`platform::keys`), the same keys as the
//! Lambda API's. An admin-scope key may do everything, and so may functions' own key
//! (`Platform::enable_function_key`) here. An invoke-scope key is for
//! applications that call functions, so it may do nothing here (AccessDenied): buckets are
//! the operator's until keys carry bucket permissions. Anonymous requests are refused.

use std::sync::Arc;

use platform::{AwsScope, Platform};
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::{S3Result, s3_error};

pub(crate) struct Keys {
    platform: Arc<Platform>,
}

impl Keys {
    pub(crate) fn new(platform: Arc<Platform>) -> Keys {
        Keys { platform }
    }
}

#[async_trait::async_trait]
impl S3Auth for Keys {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        // In memory (`Platform::aws_key`): a signature check touches no store.
        match self.platform.aws_key(access_key) {
            Some(key) => Ok(SecretKey::from(key.secret)),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS access key id you provided does not exist in our records."
            )),
        }
    }
}

#[async_trait::async_trait]
impl S3Access for Keys {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(credentials) = cx.credentials() else {
            return Err(s3_error!(
                AccessDenied,
                "anonymous requests are refused: sign them with an access key (nimbus keys create --aws)"
            ));
        };
        match self.platform.aws_key(&credentials.access_key) {
            Some(key) if matches!(key.scope, AwsScope::Admin | AwsScope::Function) => Ok(()),
            Some(_) => Err(s3_error!(
                AccessDenied,
                "an access key of scope invoke may only invoke functions; use a key of scope admin for buckets"
            )),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}
