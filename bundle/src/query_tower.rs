//! A trained query tower: what the trainer's two-tower model computes for a user,
//! in plain Rust so that the gateway encodes a `user_id` without a tensor library.
//!
//! ```text
//! q = Σ_f E_f[row of feature f]          f = user_id, then each user feature
//! q = W_l q + b_l, ReLU between layers    dense layers, none after the last
//! q = q / |q|                             when l2_normalize
//! ```
//!
//! Row 0 of every table is the out-of-vocabulary row, as Keras
//! `StringLookup(num_oov_indices=1)` assigns it: a user the tower has never seen
//! gets the OOV id row plus the rows of the features the request carries. The
//! features of known users are stored (`users.tsv`), so a request with only a
//! `user_id` is encoded as in training; a feature given in the request overrides
//! the stored value.
//!
//! Files, relative to the bundle:
//!
//! ```text
//! query_tower/weights.safetensors  embedding.{feature} [vocabulary + 1, dim];
//!                                  dense.{i}.weight [out, in], dense.{i}.bias [out]
//! query_tower/vocab/{feature}.txt  line i is the value of row i + 1
//! query_tower/users.tsv            user_id<TAB>feature..., the stored user features
//! ```

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::lines::{f32_from_le_bytes, read_lines, write_lines};
use crate::{BundleError, Vocabulary};

/// The tower's directory inside a bundle.
pub const QUERY_TOWER_DIR: &str = "query_tower";

/// The id feature: the request's `user_id`.
pub const USER_ID_FEATURE: &str = "user_id";

/// The manifest's description of a query tower (paths relative to the bundle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TowerSpec {
    /// safetensors with the embedding tables and dense layers.
    pub weights: String,
    /// The summed features, `user_id` first.
    pub features: Vec<TowerFeature>,
    /// The stored features of known users (absent for an ids-only tower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<String>,
    /// Dense layers after the sum.
    #[serde(default)]
    pub dense_layers: usize,
    /// Whether the output is scaled to unit length.
    #[serde(default)]
    pub l2_normalize: bool,
}

/// One summed feature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TowerFeature {
    /// `user_id`, or a key of the request's `user_features`.
    pub name: String,
    /// Vocabulary file: line i is the value of row i + 1.
    pub vocabulary: String,
}

/// One embedding table as the trainer hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct TableParts {
    /// Feature name (`user_id` for the first table).
    pub name: String,
    /// Values of rows 1.. (row 0 is out of vocabulary).
    pub values: Vec<String>,
    /// Row-major `[values.len() + 1, width]`.
    pub data: Vec<f32>,
}

/// One dense layer as the trainer hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseParts {
    /// Row-major `[out, in]`.
    pub weight: Vec<f32>,
    /// `[out]`.
    pub bias: Vec<f32>,
}

/// Everything a tower is made of, for [`QueryTower::write`].
#[derive(Debug, Clone, PartialEq)]
pub struct TowerParts {
    /// Width of every embedding table.
    pub width: usize,
    /// Summed tables, `user_id` first.
    pub tables: Vec<TableParts>,
    /// Known users and their stored feature values, in the order of `tables[1..]`
    /// (`None`: the user has no value for that feature, so its OOV row is used).
    pub users: Vec<(String, Vec<Option<String>>)>,
    /// Dense layers after the sum.
    pub layers: Vec<DenseParts>,
    /// Scale the output to unit length.
    pub l2_normalize: bool,
}

#[derive(Debug, Clone)]
struct Table {
    name: String,
    vocabulary: Vocabulary,
    data: Vec<f32>,
}

#[derive(Debug, Clone)]
struct Dense {
    out: usize,
    input: usize,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// A loaded query tower.
#[derive(Debug, Clone)]
pub struct QueryTower {
    width: usize,
    dimensions: usize,
    tables: Vec<Table>,
    /// User id → stored row of each feature of `tables[1..]`.
    stored: HashMap<String, Vec<u32>>,
    layers: Vec<Dense>,
    l2_normalize: bool,
}

/// Why a request cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Neither the user nor any feature of the request is known to the tower.
    #[error(
        "user_id {0:?} is not known to the query tower and the request has no user_features it reads"
    )]
    UnknownUser(String),
}

impl QueryTower {
    /// Output dimensions: the item embeddings' width.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Users whose features are stored, or whose id has a row.
    pub fn known_users(&self) -> usize {
        self.tables.first().map_or(0, |t| t.vocabulary.len())
    }

    /// Names of the user features the tower reads from requests.
    pub fn feature_names(&self) -> impl Iterator<Item = &str> {
        self.tables.iter().skip(1).map(|t| t.name.as_str())
    }

    /// The query embedding of `user_id` with the request's categorical
    /// `features` (name → value; names the tower does not read are ignored).
    pub fn encode(
        &self,
        user_id: &str,
        features: &HashMap<String, String>,
    ) -> Result<Vec<f32>, EncodeError> {
        let mut q = vec![0.0f32; self.width];
        let mut known = false;
        let stored = self.stored.get(user_id);
        for (f, table) in self.tables.iter().enumerate() {
            let row = if f == 0 {
                table.vocabulary.get(user_id)
            } else if let Some(value) = features.get(&table.name) {
                table.vocabulary.get(value)
            } else {
                stored.map(|rows| rows[f - 1]).filter(|&r| r > 0)
            };
            known |= row.is_some();
            let row = row.unwrap_or(0) as usize;
            let at = row * self.width;
            for (q, v) in q.iter_mut().zip(&table.data[at..at + self.width]) {
                *q += v;
            }
        }
        if !known {
            return Err(EncodeError::UnknownUser(user_id.to_string()));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let mut out = layer.bias.clone();
            for (o, row) in out.iter_mut().zip(layer.weight.chunks_exact(layer.input)) {
                *o += row.iter().zip(&q).map(|(w, x)| w * x).sum::<f32>();
            }
            if i + 1 < self.layers.len() {
                out.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            q = out;
        }
        if self.l2_normalize {
            let norm = q.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 {
                q.iter_mut().for_each(|v| *v /= norm);
            }
        }
        Ok(q)
    }

    /// Writes `parts` under `bundle_dir/query_tower/` and returns the manifest's spec.
    pub fn write(bundle_dir: &Path, parts: &TowerParts) -> Result<TowerSpec, BundleError> {
        check_parts(parts)?;
        let dir = bundle_dir.join(QUERY_TOWER_DIR);
        let vocab_dir = dir.join("vocab");
        std::fs::create_dir_all(&vocab_dir).map_err(|e| BundleError::io(&vocab_dir, e))?;
        let mut named: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        let mut features = Vec::with_capacity(parts.tables.len());
        for table in &parts.tables {
            let vocabulary = format!(
                "{QUERY_TOWER_DIR}/{}",
                crate::layout::vocabulary_file(&table.name)
            );
            write_lines(&bundle_dir.join(&vocabulary), &table.values)?;
            features.push(TowerFeature {
                name: table.name.clone(),
                vocabulary,
            });
            named.push((
                format!("embedding.{}", table.name),
                vec![table.values.len() + 1, parts.width],
                &table.data,
            ));
        }
        for (i, layer) in parts.layers.iter().enumerate() {
            let out = layer.bias.len();
            named.push((
                format!("dense.{i}.weight"),
                vec![out, layer.weight.len() / out],
                &layer.weight,
            ));
            named.push((format!("dense.{i}.bias"), vec![out], &layer.bias));
        }
        let weights = format!("{QUERY_TOWER_DIR}/weights.safetensors");
        let weights_path = bundle_dir.join(&weights);
        let views = named
            .iter()
            .map(|(name, shape, data)| {
                TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                    .map(|view| (name.clone(), view))
                    .map_err(|e| BundleError::corrupt(&weights_path, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize_to_file(views, None, &weights_path)
            .map_err(|e| BundleError::corrupt(&weights_path, e.to_string()))?;
        let users = if parts.tables.len() > 1 {
            let file = format!("{QUERY_TOWER_DIR}/users.tsv");
            let mut lines = Vec::with_capacity(parts.users.len() + 1);
            let header: Vec<&str> = parts.tables.iter().map(|t| t.name.as_str()).collect();
            lines.push(header.join("\t"));
            for (user, values) in &parts.users {
                let mut cells = vec![clean_cell(user)];
                cells.extend(
                    values
                        .iter()
                        .map(|v| v.as_deref().map_or(String::new(), clean_cell)),
                );
                lines.push(cells.join("\t"));
            }
            write_lines(&bundle_dir.join(&file), &lines)?;
            Some(file)
        } else {
            None
        };
        Ok(TowerSpec {
            weights,
            features,
            users,
            dense_layers: parts.layers.len(),
            l2_normalize: parts.l2_normalize,
        })
    }

    /// Loads the tower `spec` describes from `bundle_dir`, checking every shape.
    pub fn load(bundle_dir: &Path, spec: &TowerSpec) -> Result<Self, BundleError> {
        let weights_path = bundle_dir.join(&spec.weights);
        let bytes = std::fs::read(&weights_path).map_err(|e| BundleError::io(&weights_path, e))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| {
            BundleError::corrupt(&weights_path, format!("not a valid safetensors file: {e}"))
        })?;
        let tensor = |name: &str| -> Result<(Vec<usize>, Vec<f32>), BundleError> {
            let view = tensors.tensor(name).map_err(|e| {
                BundleError::corrupt(&weights_path, format!("tensor {name:?}: {e}"))
            })?;
            if view.dtype() != Dtype::F32 {
                return Err(BundleError::corrupt(
                    &weights_path,
                    format!("tensor {name:?} is {:?}, expected F32", view.dtype()),
                ));
            }
            let data = f32_from_le_bytes(view.data());
            if let Some(at) = data.iter().position(|v| !v.is_finite()) {
                return Err(BundleError::corrupt(
                    &weights_path,
                    format!("tensor {name:?} holds a non-finite value at {at}"),
                ));
            }
            Ok((view.shape().to_vec(), data))
        };
        match spec.features.first() {
            Some(first) if first.name == USER_ID_FEATURE => {}
            _ => {
                return Err(BundleError::corrupt(
                    bundle_dir.join(crate::MANIFEST_FILE),
                    format!("the query tower's first feature must be {USER_ID_FEATURE}"),
                ));
            }
        }
        let mut width = None;
        let mut tables = Vec::with_capacity(spec.features.len());
        for feature in &spec.features {
            let name = format!("embedding.{}", feature.name);
            let (shape, data) = tensor(&name)?;
            let vocab_path = bundle_dir.join(&feature.vocabulary);
            let vocabulary = Vocabulary::read(&vocab_path)?;
            let values = vocabulary.values();
            let expected_width = *width.get_or_insert(shape.get(1).copied().unwrap_or(0));
            if shape != [values.len() + 1, expected_width] || expected_width == 0 {
                return Err(BundleError::corrupt(
                    &weights_path,
                    format!(
                        "tensor {name:?} has shape {shape:?}; {} has {} values, so [{}, {expected_width}] is needed",
                        vocab_path.display(),
                        values.len(),
                        values.len() + 1
                    ),
                ));
            }
            tables.push(Table {
                name: feature.name.clone(),
                vocabulary,
                data,
            });
        }
        let width = width.unwrap_or(0);
        let mut layers = Vec::with_capacity(spec.dense_layers);
        let mut input = width;
        for i in 0..spec.dense_layers {
            let (w_shape, weight) = tensor(&format!("dense.{i}.weight"))?;
            let (b_shape, bias) = tensor(&format!("dense.{i}.bias"))?;
            let out = w_shape.first().copied().unwrap_or(0);
            if w_shape != [out, input] || b_shape != [out] || out == 0 {
                return Err(BundleError::corrupt(
                    &weights_path,
                    format!(
                        "dense layer {i}: weight {w_shape:?} and bias {b_shape:?} do not take {input} inputs"
                    ),
                ));
            }
            layers.push(Dense {
                out,
                input,
                weight,
                bias,
            });
            input = out;
        }
        let dimensions = layers.last().map_or(width, |l| l.out);
        let stored = match &spec.users {
            Some(file) => read_users(&bundle_dir.join(file), &tables)?,
            None => HashMap::new(),
        };
        Ok(Self {
            width,
            dimensions,
            tables,
            stored,
            layers,
            l2_normalize: spec.l2_normalize,
        })
    }
}

fn check_parts(parts: &TowerParts) -> Result<(), BundleError> {
    let fail = |reason: String| Err(BundleError::invalid("query tower", reason));
    match parts.tables.first() {
        Some(t) if t.name == USER_ID_FEATURE => {}
        _ => return fail(format!("the first table must be {USER_ID_FEATURE}")),
    }
    if parts.width == 0 {
        return fail("width must be positive".into());
    }
    for table in &parts.tables {
        if table.data.len() != (table.values.len() + 1) * parts.width {
            return fail(format!(
                "table {} has {} values for {} rows of {}",
                table.name,
                table.data.len(),
                table.values.len() + 1,
                parts.width
            ));
        }
    }
    let mut input = parts.width;
    for (i, layer) in parts.layers.iter().enumerate() {
        let out = layer.bias.len();
        if out == 0 || layer.weight.len() != out * input {
            return fail(format!("dense layer {i} does not take {input} inputs"));
        }
        input = out;
    }
    if let Some((user, _)) = parts
        .users
        .iter()
        .find(|(_, values)| values.len() + 1 != parts.tables.len())
    {
        return fail(format!("user {user:?} does not have one value per feature"));
    }
    Ok(())
}

/// Tabs and line breaks would break the table; values never hold them in practice.
fn clean_cell(value: &str) -> String {
    value.replace(['\t', '\n', '\r'], " ")
}

fn read_users(path: &Path, tables: &[Table]) -> Result<HashMap<String, Vec<u32>>, BundleError> {
    let lines = read_lines(path)?;
    let header: Vec<&str> = lines
        .first()
        .map(|l| l.split('\t').collect())
        .unwrap_or_default();
    let expected: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
    if header != expected {
        return Err(BundleError::corrupt(
            path,
            format!("header is {header:?}, the tower's features are {expected:?}"),
        ));
    }
    let mut stored = HashMap::with_capacity(lines.len().saturating_sub(1));
    for (n, line) in lines.iter().enumerate().skip(1) {
        if line.is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split('\t').collect();
        if cells.len() != tables.len() {
            return Err(BundleError::corrupt(
                path,
                format!(
                    "line {}: {} cells, the header has {}",
                    n + 1,
                    cells.len(),
                    tables.len()
                ),
            ));
        }
        let rows = cells[1..]
            .iter()
            .zip(&tables[1..])
            .map(|(cell, table)| table.vocabulary.lookup(cell))
            .collect();
        stored.insert(cells[0].to_string(), rows);
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts() -> TowerParts {
        TowerParts {
            width: 2,
            tables: vec![
                TableParts {
                    name: USER_ID_FEATURE.into(),
                    values: vec!["u1".into(), "u2".into()],
                    data: vec![0.5, 0.5, 1.0, 0.0, 0.0, 1.0],
                },
                TableParts {
                    name: "gender".into(),
                    values: vec!["F".into(), "M".into()],
                    data: vec![0.0, 0.0, 10.0, 0.0, 0.0, 10.0],
                },
            ],
            users: vec![
                ("u1".into(), vec![Some("F".into())]),
                ("u2".into(), vec![None]),
            ],
            layers: vec![],
            l2_normalize: false,
        }
    }

    fn round_trip(parts: &TowerParts) -> QueryTower {
        let dir = tempfile::tempdir().unwrap();
        let spec = QueryTower::write(dir.path(), parts).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        let spec: TowerSpec = serde_json::from_str(&json).unwrap();
        QueryTower::load(dir.path(), &spec).unwrap()
    }

    #[test]
    fn sums_id_and_stored_features() {
        let tower = round_trip(&parts());
        let none = HashMap::new();
        assert_eq!(tower.encode("u1", &none).unwrap(), vec![11.0, 0.0]);
        // u2 has no stored gender: its OOV row (zeros here).
        assert_eq!(tower.encode("u2", &none).unwrap(), vec![0.0, 1.0]);
        // The request overrides the stored value.
        let male = HashMap::from([("gender".to_string(), "M".to_string())]);
        assert_eq!(tower.encode("u1", &male).unwrap(), vec![1.0, 10.0]);
        // An unknown user with a known feature: OOV id row plus the feature.
        assert_eq!(tower.encode("new", &male).unwrap(), vec![0.5, 10.5]);
        assert_eq!(
            tower.encode("new", &none),
            Err(EncodeError::UnknownUser("new".into()))
        );
    }

    #[test]
    fn dense_layers_and_normalization() {
        let mut p = parts();
        p.layers = vec![
            DenseParts {
                weight: vec![1.0, 0.0, 0.0, -1.0, 1.0, 1.0],
                bias: vec![0.0, 0.0, 1.0],
            },
            DenseParts {
                weight: vec![1.0, 1.0, 0.0, 0.0, 0.0, 2.0],
                bias: vec![0.0, 0.0],
            },
        ];
        p.l2_normalize = true;
        let tower = round_trip(&p);
        assert_eq!(tower.dimensions(), 2);
        // u2: sum [0, 1] → layer 0 [0, -1, 2] → ReLU [0, 0, 2] → layer 1 [0, 4] → unit.
        let q = tower.encode("u2", &HashMap::new()).unwrap();
        assert_eq!(q, vec![0.0, 1.0]);
    }

    #[test]
    fn wrong_shapes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let spec = QueryTower::write(dir.path(), &parts()).unwrap();
        // A vocabulary that lost a line no longer fits its table.
        std::fs::write(dir.path().join("query_tower/vocab/gender.txt"), "F\n").unwrap();
        let err = QueryTower::load(dir.path(), &spec).unwrap_err().to_string();
        assert!(
            err.contains("embedding.gender") && err.contains("gender.txt"),
            "{err}"
        );
        let mut bad = parts();
        bad.tables[1].data.pop();
        let err = QueryTower::write(dir.path(), &bad).unwrap_err().to_string();
        assert!(err.contains("gender"), "{err}");
    }
}
