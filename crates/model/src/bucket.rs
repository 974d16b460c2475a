//! Names in the object store: bucket names by S3's rules and object keys by its bounds.
//! Checked once at the front doors (the S3 API, `/v1/buckets`), so the store holds only
//! valid names.

use crate::limits::{BUCKET_NAME_LEN_MAX, BUCKET_NAME_LEN_MIN, OBJECT_KEY_BYTES_MAX};

/// Why a bucket name or an object key is refused; the text names the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

/// S3's rules for general purpose buckets: 3..=63 characters of `[a-z0-9.-]`, a letter or
/// digit at both ends, no `..`, not an IPv4 address, and none of the reserved prefixes and
/// suffixes. Names follow them so that a bucket works as a DNS label (virtual-host style
/// requests, the website's `{bucket}.{domain}`) and moves to S3 unchanged.
pub fn validate_bucket_name(name: &str) -> Result<(), NameError> {
    let err = |why: &str| Err(NameError(format!("bucket name `{name}`: {why}")));
    if name.len() < BUCKET_NAME_LEN_MIN || name.len() > BUCKET_NAME_LEN_MAX {
        return err(&format!(
            "must be {BUCKET_NAME_LEN_MIN} to {BUCKET_NAME_LEN_MAX} characters long"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return err("may hold only lowercase letters, digits, dots and hyphens");
    }
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !alnum(name.as_bytes()[0]) || !alnum(name.as_bytes()[name.len() - 1]) {
        return err("must begin and end with a letter or a digit");
    }
    if name.contains("..") {
        return err("may not hold two dots in a row");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return err("may not be an IP address");
    }
    for prefix in ["xn--", "sthree-", "amzn-s3-demo-"] {
        if name.starts_with(prefix) {
            return err(&format!("may not begin with `{prefix}` (reserved by S3)"));
        }
    }
    for suffix in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
        if name.ends_with(suffix) {
            return err(&format!("may not end with `{suffix}` (reserved by S3)"));
        }
    }
    Ok(())
}

/// An object key: 1..=1024 bytes of UTF-8 (S3's bound) without NUL, which no client sends
/// and which text columns and paths of other backends would cut short.
pub fn validate_object_key(key: &str) -> Result<(), NameError> {
    if key.is_empty() {
        return Err(NameError("object key: may not be empty".into()));
    }
    if key.len() > OBJECT_KEY_BYTES_MAX {
        return Err(NameError(format!(
            "object key: {} bytes long, over the limit of {OBJECT_KEY_BYTES_MAX}",
            key.len()
        )));
    }
    if key.contains('\0') {
        return Err(NameError("object key: may not hold a NUL character".into()));
    }
    Ok(())
}

/// A bucket's static website (S3's `WebsiteConfiguration`, the part Nimbus serves): the
/// gateway answers `{bucket}.{website domain}` from the bucket's objects.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Website {
    /// Appended to a request for a "directory" (`/`, `dir/`): `index.html`.
    pub index_document: String,
    /// The object answered, with status 404, for a key that does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_document: Option<String>,
}

impl Website {
    /// S3's rules: the index document is a non-empty suffix without a slash (it is appended
    /// to a directory's key); the error document is an object key.
    pub fn validate(&self) -> Result<(), NameError> {
        if self.index_document.is_empty() {
            return Err(NameError("index document: may not be empty".into()));
        }
        if self.index_document.contains('/') {
            return Err(NameError(format!(
                "index document `{}`: may not hold a slash (it is a suffix appended to \
                 a directory's key)",
                self.index_document
            )));
        }
        validate_object_key(&self.index_document)
            .map_err(|e| NameError(format!("index document: {e}")))?;
        if let Some(error) = &self.error_document {
            validate_object_key(error).map_err(|e| NameError(format!("error document: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod website_tests {
    use super::*;

    #[test]
    fn website_documents_are_checked() {
        let site = |index: &str, error: Option<&str>| Website {
            index_document: index.into(),
            error_document: error.map(str::to_string),
        };
        assert_eq!(
            site("index.html", Some("errors/404.html")).validate(),
            Ok(())
        );
        assert_eq!(site("index.html", None).validate(), Ok(()));
        assert!(site("", None).validate().unwrap_err().0.contains("empty"));
        assert!(
            site("a/index.html", None)
                .validate()
                .unwrap_err()
                .0
                .contains("slash")
        );
        assert!(
            site("index.html", Some(""))
                .validate()
                .unwrap_err()
                .0
                .contains("error document")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3s_rules() {
        for good in ["abc", "my-bucket", "my.bucket.1", "a1b", &"a".repeat(63)] {
            assert_eq!(validate_bucket_name(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("ab", "3 to 63"),
            (&"a".repeat(64), "3 to 63"),
            ("My-Bucket", "lowercase"),
            ("my_bucket", "lowercase"),
            ("-abc", "begin and end"),
            ("abc.", "begin and end"),
            ("a..b", "two dots"),
            ("192.168.5.4", "IP address"),
            ("xn--abc", "xn--"),
            ("sthree-x", "sthree-"),
            ("abc-s3alias", "-s3alias"),
            ("abc--ol-s3", "--ol-s3"),
        ] {
            let e = validate_bucket_name(bad).unwrap_err();
            assert!(e.0.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn keys_are_bounded_utf8() {
        assert!(validate_object_key("a").is_ok());
        assert!(validate_object_key("dir/sub dir/ü 😀.txt").is_ok());
        assert!(validate_object_key(&"k".repeat(1024)).is_ok());
        assert!(
            validate_object_key(&"k".repeat(1025))
                .unwrap_err()
                .0
                .contains("1025 bytes")
        );
        // The bound is in bytes, not characters.
        assert!(validate_object_key(&"ü".repeat(513)).is_err());
        assert!(validate_object_key("").is_err());
        assert!(validate_object_key("a\0b").is_err());
    }
}
