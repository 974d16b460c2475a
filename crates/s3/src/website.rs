//! Bucket websites in the S3 API: `PutBucketWebsite`, `GetBucketWebsite` and
//! `DeleteBucketWebsite`, kept with the bucket in the store (`ObjectMeta::bucket_website`).
//! The gateway (`api::gateway::website`) serves what they configure.
//!
//! Nimbus serves an index document and an error document; S3's whole-bucket redirects and
//! routing rules are refused (NotImplemented) rather than stored and silently ignored.

use model::bucket::Website;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Result, s3_error};

use crate::ObjectStore;
use crate::error::object_error;

impl ObjectStore {
    pub(crate) async fn put_website(
        &self,
        bucket: &str,
        config: WebsiteConfiguration,
    ) -> S3Result<()> {
        if config.redirect_all_requests_to.is_some() || config.routing_rules.is_some() {
            return Err(s3_error!(
                NotImplemented,
                "Nimbus serves an index and an error document; RedirectAllRequestsTo and \
                 RoutingRules are not supported"
            ));
        }
        let Some(index) = config.index_document else {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                "A value for IndexDocument Suffix must be provided",
            ));
        };
        let website = Website {
            index_document: index.suffix,
            error_document: config.error_document.map(|e| e.key),
        };
        website
            .validate()
            .map_err(|e| S3Error::with_message(S3ErrorCode::InvalidArgument, e.0))?;
        self.meta
            .set_bucket_website(bucket, Some(&website))
            .await
            .map_err(object_error)
    }

    pub(crate) async fn get_website(&self, bucket: &str) -> S3Result<GetBucketWebsiteOutput> {
        match self
            .meta
            .bucket_website(bucket)
            .await
            .map_err(object_error)?
        {
            Some(w) => Ok(GetBucketWebsiteOutput {
                index_document: Some(IndexDocument {
                    suffix: w.index_document,
                }),
                error_document: w.error_document.map(|key| ErrorDocument { key }),
                ..Default::default()
            }),
            None => Err(s3_error!(
                NoSuchWebsiteConfiguration,
                "The specified bucket does not have a website configuration"
            )),
        }
    }

    /// Removing a configuration that is not there succeeds, as on S3.
    pub(crate) async fn delete_website(&self, bucket: &str) -> S3Result<()> {
        self.meta
            .set_bucket_website(bucket, None)
            .await
            .map_err(object_error)
    }
}
