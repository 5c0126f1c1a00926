//! Which ranker variant (A/B arm) ranks a request: the user's assignment by
//! the traffic shares (`recsys_bundle::ranker_variants`), from the bundle or
//! from a `--ranker-shares` file the gateway re-reads while it runs, so an
//! experiment ramps up or stops without a restart.
//!
//! The file is parsed for its shape when read; its names are checked against
//! the bundle version each request uses, since a rollout may add or drop a
//! variant: a file naming a variant the version lacks is not applied to it
//! (the version's own shares are, and the log says why, once per version).

use std::collections::BTreeMap;
use std::sync::Mutex;

use recsys_bundle::ranker_variants::parse_weights;
use recsys_bundle::{DEFAULT_VARIANT, Shares};

use crate::bundle_state::BundleState;

/// A shares file as read: weights by variant name, and the salt.
#[derive(Debug)]
pub struct SharesFile {
    weights: BTreeMap<String, f64>,
    salt: String,
    /// The shares for the last bundle version asked about, worked out once.
    resolved: Mutex<Option<(String, Result<Shares, String>)>>,
}

impl SharesFile {
    /// Reads `{"NAME": WEIGHT, ..., "salt": "..."}`; the weights are checked
    /// here for themselves, the names against each bundle version later.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (weights, salt) = parse_weights(text)?;
        let names: Vec<&str> = weights.keys().map(String::as_str).collect();
        Shares::new(&weights, &names, &salt)?;
        Ok(Self {
            weights,
            salt,
            resolved: Mutex::new(None),
        })
    }

    /// The variant of `user_id` on `bundle`: by the file's shares when every
    /// variant it names is one of the bundle's, otherwise by the bundle's own.
    fn assign(&self, bundle: &BundleState, user_id: &str) -> String {
        let version = &bundle.manifest.version;
        let mut resolved = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        if resolved.as_ref().is_none_or(|(v, _)| v != version) {
            let shares = Shares::new(&self.weights, &bundle.manifest.variant_names(), &self.salt);
            if let Err(reason) = &shares {
                tracing::warn!(
                    bundle_version = %version,
                    %reason,
                    "the ranker shares file does not fit this bundle version; its own shares apply"
                );
            }
            *resolved = Some((version.clone(), shares));
        }
        match resolved.as_ref().map(|(_, shares)| shares) {
            Some(Ok(shares)) => shares.assign(user_id).to_string(),
            _ => bundle.shares.assign(user_id).to_string(),
        }
    }
}

/// The variant that ranks `user_id`'s request on `bundle`: the default for a
/// request without a user (an embedding query: nobody to keep in one arm).
pub fn variant_of(user_id: &str, bundle: &BundleState, file: Option<&SharesFile>) -> String {
    if user_id.is_empty() {
        return DEFAULT_VARIANT.to_string();
    }
    match file {
        Some(file) => file.assign(bundle, user_id),
        None => bundle.shares.assign(user_id).to_string(),
    }
}
