//! What the gateway loads from the bundle: dimensions and shard count to validate
//! and route, the query model to encode users, and the catalog to name items.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use recsys_bundle::attributes::ItemAttributes;
use recsys_bundle::query_tower::EncodeError;
use recsys_bundle::ranker_inputs::RankerInputs;
use recsys_bundle::user_history::UserHistory;
use recsys_bundle::{BundleError, Catalog, Manifest, QueryModel};
use recsys_discovery::VersionSet;
use recsys_proto::v1::feature_value::Kind;
use recsys_proto::v1::{FeatureValue, recommend_request::Query};

use crate::GatewayError;
use crate::catalog_overlay::{CatalogOverlay, Names};

/// The bundle version a request uses (`version`, or the primary when empty),
/// or why there is none. A failed load is told apart from one still running,
/// with the loader's reason (it names the file and what is wrong, e.g. a
/// checksum mismatch): "still loading" would send an operator to wait for a
/// gateway that will never serve.
pub fn ready_bundle(
    versions: &VersionSet<BundleState>,
    version: &str,
) -> Result<(String, Arc<BundleState>), GatewayError> {
    versions
        .get(version)
        .map_err(|why| GatewayError::NotReady(why.to_string()))
}

/// The gateway's read-only view of its bundle.
#[derive(Debug)]
pub struct BundleState {
    /// The manifest.
    pub manifest: Manifest,
    /// Item names; empty when the bundle has none.
    pub catalog: Catalog,
    /// The query model, when the bundle has one.
    pub query_model: Option<QueryModel>,
    /// The ranker's user-side request features, when the bundle has a ranker:
    /// what `validate` checks values against.
    pub ranker_inputs: Option<RankerInputs>,
    /// The same for each ranker variant but the default, by name.
    pub variant_inputs: std::collections::BTreeMap<String, RankerInputs>,
    /// The traffic shares the manifest records (everything to the default
    /// without them); a `--ranker-shares` file overrides them.
    pub shares: recsys_bundle::Shares,
    /// What each user already has, left out of their answers by default
    /// (empty when the bundle carries no history).
    pub history: UserHistory,
    /// The items' typed attributes, which diversity caps read.
    pub attributes: Option<ItemAttributes>,
    /// Names of the items changed since the version was built (with etcd).
    pub overlay: Arc<CatalogOverlay>,
    /// Stops the overlay's follower when the version is dropped
    /// (`catalog_overlay::follow`).
    pub(crate) follow: Option<tokio_util::sync::DropGuard>,
    /// Keeps the version's files in the bundle cache (a root in an object
    /// store) while it is held; released when the version is retired.
    pub(crate) pin: recsys_bundle::VersionPin,
}

impl BundleState {
    /// Verifies and loads the parts the gateway needs from the bundle in `dir`.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let manifest = Manifest::load(dir)?;
        // Requests carry a query of the bundle's dimension, and the gateway
        // decodes none larger than `recommend_request_max_bytes`, sized for this.
        if manifest.dimensions > recsys_proto::limits::MAX_DIMENSIONS {
            return Err(BundleError::corrupt(
                dir.join("manifest.json"),
                format!(
                    "dimensions is {}, the limit is {}",
                    manifest.dimensions,
                    recsys_proto::limits::MAX_DIMENSIONS
                ),
            ));
        }
        // The catalog and the query model against their recorded checksums first:
        // a corrupt file keeps the gateway NOT_SERVING with the file named.
        recsys_bundle::verify_files(dir, &manifest, recsys_bundle::FileSet::Gateway)?;
        let catalog = match &manifest.catalog {
            Some(file) => Catalog::load(&Manifest::resolve(dir, file))?,
            None => Catalog::default(),
        };
        let query_model = manifest
            .query_model
            .as_ref()
            .map(|spec| QueryModel::load(dir, spec))
            .transpose()?;
        if let Some(model) = &query_model
            && model.dimensions() != manifest.dimensions
        {
            return Err(BundleError::corrupt(
                dir.join("manifest.json"),
                format!(
                    "query model has {} dimensions, items {}",
                    model.dimensions(),
                    manifest.dimensions
                ),
            ));
        }
        let ranker_inputs = manifest
            .ranker_files(dir)
            .map(|files| RankerInputs::load(&files.config))
            .transpose()?;
        let mut variant_inputs = std::collections::BTreeMap::new();
        for (name, spec) in &manifest.ranker_variants {
            variant_inputs.insert(name.clone(), RankerInputs::load(&spec.files(dir).config)?);
        }
        let shares = manifest
            .shares()
            .map_err(|e| BundleError::corrupt(dir.join("manifest.json"), e))?;
        let history = match &manifest.user_history {
            Some(file) => UserHistory::load(&Manifest::resolve(dir, file))?,
            None => UserHistory::default(),
        };
        let attributes = manifest
            .attributes
            .as_ref()
            .map(|file| ItemAttributes::load(&Manifest::resolve(dir, file)))
            .transpose()?;
        Ok(Self {
            ranker_inputs,
            variant_inputs,
            shares,
            history,
            attributes,
            overlay: Arc::new(CatalogOverlay::new(manifest.log_revision)),
            follow: None,
            pin: recsys_bundle::VersionPin::none(),
            manifest,
            catalog,
            query_model,
        })
    }

    /// Item names: the catalog with the change log's names on top.
    pub fn names(&self) -> Names<'_> {
        self.overlay.names(&self.catalog)
    }

    /// The query embedding for a validated request.
    pub fn encode(
        &self,
        query: &Query,
        user_features: &HashMap<String, FeatureValue>,
    ) -> Result<Vec<f32>, GatewayError> {
        match query {
            Query::QueryEmbedding(embedding) => Ok(embedding.values.clone()),
            Query::UserId(user_id) => {
                let model = self
                    .query_model
                    .as_ref()
                    .ok_or(GatewayError::NoQueryModel)?;
                let features = categorical_features(model, user_features)?;
                model.encode(user_id, &features).map_err(|e| match e {
                    EncodeError::UnknownUser(user) => GatewayError::UnknownUser(user),
                })
            }
        }
    }
}

/// The request's values of the features the query tower reads, as the strings
/// its vocabularies hold. Other features (the ranker's) pass through untouched.
fn categorical_features(
    model: &QueryModel,
    user_features: &HashMap<String, FeatureValue>,
) -> Result<HashMap<String, String>, GatewayError> {
    let QueryModel::Tower(tower) = model else {
        return Ok(HashMap::new());
    };
    let mut out = HashMap::new();
    for name in tower.feature_names() {
        let Some(kind) = user_features.get(name).and_then(|v| v.kind.as_ref()) else {
            continue;
        };
        let value = match kind {
            Kind::StringValue(s) => s.clone(),
            Kind::IntValue(i) => i.to_string(),
            Kind::FloatValue(_) | Kind::StringList(_) => {
                return Err(GatewayError::invalid(
                    "user_features",
                    format!(
                        "{name} is a categorical feature of the query tower: send a string_value or an int_value"
                    ),
                ));
            }
        };
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

impl BundleState {
    /// The request features and heads of variant `name`'s ranker.
    pub fn inputs_of(&self, variant: &str) -> Option<&RankerInputs> {
        if variant == recsys_bundle::DEFAULT_VARIANT {
            self.ranker_inputs.as_ref()
        } else {
            self.variant_inputs.get(variant)
        }
    }
}
