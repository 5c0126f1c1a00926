//! `s3://bucket/prefix`: where a root lies in a store, and its objects' keys.

use object_store::path::Path as ObjectPath;

use crate::StoreError;

/// A bundle root in an S3-compatible store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreUrl {
    /// The bucket.
    pub bucket: String,
    /// The key prefix of the root, without slashes at either end (may be empty).
    pub prefix: String,
}

impl StoreUrl {
    /// Parses `s3://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let fail = |reason: &str| StoreError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| fail("an object store root is s3://bucket/prefix"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(fail(
                "the bucket must be 3 to 63 lowercase letters, digits, '-' or '.'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix
            .split('/')
            .any(|part| part == "." || part == ".." || (part.is_empty() && !prefix.is_empty()))
        {
            return Err(fail("the prefix must not hold empty, '.' or '..' parts"));
        }
        Ok(Self {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The key of `relative` (`/`-separated) inside the root.
    pub fn key(&self, relative: &str) -> ObjectPath {
        if self.prefix.is_empty() {
            ObjectPath::from(relative)
        } else {
            ObjectPath::from(format!("{}/{relative}", self.prefix))
        }
    }

    /// The URL of `relative` inside the root, for messages.
    pub fn url_of(&self, relative: &str) -> String {
        format!("{self}/{relative}")
    }
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_buckets_and_prefixes() {
        let url = StoreUrl::parse("s3://models/recsys/prod/").unwrap();
        assert_eq!(url.bucket, "models");
        assert_eq!(url.prefix, "recsys/prod");
        assert_eq!(
            url.key("v1/manifest.json").as_ref(),
            "recsys/prod/v1/manifest.json"
        );
        assert_eq!(url.to_string(), "s3://models/recsys/prod");
        let bare = StoreUrl::parse("s3://models").unwrap();
        assert_eq!(bare.key("CURRENT").as_ref(), "CURRENT");
        for bad in [
            "/data/root",
            "s3://",
            "s3://A",
            "s3://models/a//b",
            "s3://models/../x",
        ] {
            assert!(StoreUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
