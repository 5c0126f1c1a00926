//! The query model of a bundle: either a table of user embeddings (what a TFRS
//! query tower with only a `user_id` feature computes, `StringLookup` then
//! `Embedding`; synthetic bundles have one) or a trained [`QueryTower`].

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::lines::{f32_from_le_bytes, read_lines, write_lines};
use crate::query_tower::{EncodeError, QueryTower};
use crate::{BundleError, Manifest, QueryModelSpec};

/// What turns a `user_id` (and user features) into a query embedding.
#[derive(Debug, Clone)]
pub enum QueryModel {
    /// One stored embedding per known user; features are not read.
    Table(UserEmbeddings),
    /// A trained tower over the user id and user features.
    Tower(QueryTower),
}

impl QueryModel {
    /// Loads the query model `spec` names from `dir`.
    pub fn load(dir: &Path, spec: &QueryModelSpec) -> Result<Self, BundleError> {
        Ok(match spec {
            QueryModelSpec::EmbeddingTable {
                file,
                tensor,
                vocabulary,
            } => Self::Table(UserEmbeddings::load(
                &Manifest::resolve(dir, file),
                tensor,
                &Manifest::resolve(dir, vocabulary),
            )?),
            QueryModelSpec::Tower(spec) => Self::Tower(QueryTower::load(dir, spec)?),
        })
    }

    /// Output dimensions.
    pub fn dimensions(&self) -> usize {
        match self {
            Self::Table(t) => t.dimensions(),
            Self::Tower(t) => t.dimensions(),
        }
    }

    /// Number of users with their own row.
    pub fn known_users(&self) -> usize {
        match self {
            Self::Table(t) => t.len(),
            Self::Tower(t) => t.known_users(),
        }
    }

    /// The query embedding of `user_id` with the request's categorical features.
    pub fn encode(
        &self,
        user_id: &str,
        features: &HashMap<String, String>,
    ) -> Result<Vec<f32>, EncodeError> {
        match self {
            Self::Table(t) => t
                .embedding(user_id)
                .map(<[f32]>::to_vec)
                .ok_or_else(|| EncodeError::UnknownUser(user_id.to_string())),
            Self::Tower(t) => t.encode(user_id, features),
        }
    }
}

/// User embeddings by user id.
#[derive(Debug, Clone)]
pub struct UserEmbeddings {
    dimensions: usize,
    ids: Vec<String>,
    rows: HashMap<String, usize>,
    data: Vec<f32>,
}

impl UserEmbeddings {
    /// A table from ids and row-major embeddings.
    pub fn new(ids: Vec<String>, dimensions: usize, data: Vec<f32>) -> Result<Self, BundleError> {
        if dimensions == 0 || data.len() != ids.len() * dimensions {
            return Err(BundleError::invalid(
                "user table",
                format!(
                    "{} values for {} users of {dimensions} dimensions",
                    data.len(),
                    ids.len()
                ),
            ));
        }
        let mut rows = HashMap::with_capacity(ids.len());
        for (row, id) in ids.iter().enumerate() {
            if rows.insert(id.clone(), row).is_some() {
                return Err(BundleError::invalid(
                    "user table",
                    format!("user {id:?} appears twice"),
                ));
            }
        }
        Ok(Self {
            dimensions,
            ids,
            rows,
            data,
        })
    }

    /// Embedding dimensions.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when the table has no users.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Row-major embeddings, row order of [`UserEmbeddings::ids`].
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// User ids in row order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The embedding of `user_id`, or `None` for a user the table does not know.
    pub fn embedding(&self, user_id: &str) -> Option<&[f32]> {
        let row = *self.rows.get(user_id)?;
        Some(&self.data[row * self.dimensions..(row + 1) * self.dimensions])
    }

    /// Writes the table as a safetensors file holding `tensor` and a vocabulary file.
    pub fn save(
        &self,
        tensor_path: &Path,
        tensor: &str,
        vocabulary_path: &Path,
    ) -> Result<(), BundleError> {
        let bytes: &[u8] = bytemuck::cast_slice(&self.data);
        let view = TensorView::new(Dtype::F32, vec![self.ids.len(), self.dimensions], bytes)
            .map_err(|e| BundleError::corrupt(tensor_path, e.to_string()))?;
        safetensors::serialize_to_file([(tensor, view)], None, tensor_path)
            .map_err(|e| BundleError::corrupt(tensor_path, e.to_string()))?;
        write_lines(vocabulary_path, &self.ids)
    }

    /// Reads a table written by [`UserEmbeddings::save`].
    pub fn load(
        tensor_path: &Path,
        tensor: &str,
        vocabulary_path: &Path,
    ) -> Result<Self, BundleError> {
        let bytes = std::fs::read(tensor_path).map_err(|e| BundleError::io(tensor_path, e))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| {
            BundleError::corrupt(tensor_path, format!("not a valid safetensors file: {e}"))
        })?;
        let view = tensors
            .tensor(tensor)
            .map_err(|e| BundleError::corrupt(tensor_path, format!("tensor {tensor:?}: {e}")))?;
        let (users, dimensions) = match (view.dtype(), view.shape()) {
            (Dtype::F32, [users, dimensions]) => (*users, *dimensions),
            (dtype, shape) => {
                return Err(BundleError::corrupt(
                    tensor_path,
                    format!(
                        "tensor {tensor:?} is {dtype:?} {shape:?}, expected F32 [users, dimensions]"
                    ),
                ));
            }
        };
        let data = f32_from_le_bytes(view.data());
        let ids = read_lines(vocabulary_path)?;
        if ids.len() != users {
            return Err(BundleError::corrupt(
                vocabulary_path,
                format!(
                    "{} user ids for {users} rows of {}",
                    ids.len(),
                    tensor_path.display()
                ),
            ));
        }
        if let Some(position) = data.iter().position(|v| !v.is_finite()) {
            return Err(BundleError::corrupt(
                tensor_path,
                format!(
                    "row {} holds a non-finite value",
                    position / dimensions.max(1)
                ),
            ));
        }
        Self::new(ids, dimensions, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let table =
            UserEmbeddings::new(vec!["a".into(), "b".into()], 2, vec![1., 2., 3., 4.]).unwrap();
        let (tensor, vocab) = (
            dir.path().join("q.safetensors"),
            dir.path().join("vocab/u.txt"),
        );
        table.save(&tensor, "user_embedding", &vocab).unwrap();
        let loaded = UserEmbeddings::load(&tensor, "user_embedding", &vocab).unwrap();
        assert_eq!(loaded.embedding("b"), Some(&[3., 4.][..]));
        assert_eq!(loaded.embedding("c"), None);
    }

    #[test]
    fn corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let tensor = dir.path().join("q.safetensors");
        std::fs::write(&tensor, b"garbage").unwrap();
        let err = UserEmbeddings::load(&tensor, "t", &dir.path().join("v.txt"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("q.safetensors"), "{err}");
    }
}
