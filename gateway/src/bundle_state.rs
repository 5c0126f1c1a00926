//! What the gateway loads from the bundle: dimensions and shard count to validate
//! and route, the query model to encode users, and the catalog to name items.

use std::path::Path;

use recsys_bundle::{BundleError, Catalog, Manifest, QueryModelSpec, UserTable};
use recsys_proto::v1::recommend_request::Query;

use crate::GatewayError;

/// The gateway's read-only view of its bundle.
#[derive(Debug)]
pub struct BundleState {
    /// The manifest.
    pub manifest: Manifest,
    /// Item names; empty when the bundle has none.
    pub catalog: Catalog,
    /// The query model, when the bundle has one.
    pub users: Option<UserTable>,
}

impl BundleState {
    /// Loads the parts the gateway needs from the bundle in `dir`.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let manifest = Manifest::load(dir)?;
        let catalog = match &manifest.catalog {
            Some(file) => Catalog::load(&Manifest::resolve(dir, file))?,
            None => Catalog::default(),
        };
        let users = match &manifest.query_model {
            Some(QueryModelSpec::EmbeddingTable {
                file,
                tensor,
                vocabulary,
            }) => Some(UserTable::load(
                &Manifest::resolve(dir, file),
                tensor,
                &Manifest::resolve(dir, vocabulary),
            )?),
            None => None,
        };
        if let Some(users) = &users
            && users.dimensions() != manifest.dimensions
        {
            return Err(BundleError::corrupt(
                dir.join("manifest.json"),
                format!(
                    "query model has {} dimensions, items {}",
                    users.dimensions(),
                    manifest.dimensions
                ),
            ));
        }
        Ok(Self {
            manifest,
            catalog,
            users,
        })
    }

    /// The query embedding for a validated request.
    pub fn encode(&self, query: &Query) -> Result<Vec<f32>, GatewayError> {
        match query {
            Query::QueryEmbedding(embedding) => Ok(embedding.values.clone()),
            Query::UserId(user_id) => {
                let users = self.users.as_ref().ok_or(GatewayError::NoQueryModel)?;
                users
                    .embedding(user_id)
                    .map(<[f32]>::to_vec)
                    .ok_or_else(|| GatewayError::UnknownUser(user_id.clone()))
            }
        }
    }
}
