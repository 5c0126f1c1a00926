//! The two-tower retrieval model: a query (user) tower and a candidate (item)
//! tower whose dot product scores a pair, as in TFRS's retrieval tutorials.
//!
//! ```text
//! user tower  u = E_user[id] + Σ_f E_f[feature f]                  (age, gender, …)
//! item tower  i = E_item[id] + mean E_token[title] + mean E_genre[genres] + E_year[bucket]
//! score       u · i
//! ```
//!
//! With ids only this is exactly the basic retrieval tutorial (an `Embedding`
//! per tower after a `StringLookup`). TFRS's featurized tutorials concatenate
//! the feature embeddings and apply a `Dense` layer; without an activation that
//! is a sum of linearly projected embeddings, and since the embeddings are free
//! parameters a plain sum of same-width embeddings spans the same functions with
//! fewer weights, so we sum.
//!
//! Embeddings start uniform in ±0.05 (Keras's `Embedding` default) from a
//! ChaCha8 stream seeded by the caller, in tensor-name order: the same seed
//! gives the same model. Files written by [`TwoTower::save`]:
//!
//! ```text
//! config.json              TwoTowerConfig
//! weights.safetensors      user.id, user.feature.{name}, item.id, item.title_token, item.genre, item.year
//! features.safetensors     item tables (title_tokens.rows/weights, genres.rows/weights, year), user.features
//! vocab/{name}.txt         line i = value of row i + 1 (row 0 = out of vocabulary)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Interaction};
use crate::error::{Result, TrainerError};
use crate::features::{
    FeatureChoice, ItemTable, Padded, UserFeatureRows, Vocabularies, build_tables,
};
use crate::vocabulary::Vocabulary;

/// The model's shape.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TwoTowerConfig {
    /// Embedding width of both towers (tutorial: 32).
    pub dim: usize,
    /// Features beyond the ids.
    pub features: FeatureChoice,
}

/// Keras's `RandomUniform` default bound for `Embedding`.
const INIT_BOUND: f32 = 0.05;

/// A two-tower model with its vocabularies and feature tables.
#[derive(Debug)]
pub struct TwoTower {
    config: TwoTowerConfig,
    vocab: Vocabularies,
    items: ItemTable,
    users: UserFeatureRows,
    vars: BTreeMap<String, Var>,
    device: Device,
}

impl TwoTower {
    /// A fresh model over `data`'s ids and features, initialized from `seed`.
    pub fn new(config: TwoTowerConfig, data: &Dataset, seed: u64) -> Result<Self> {
        if config.dim == 0 {
            return Err(TrainerError::InvalidConfig {
                field: "dim",
                reason: "must be at least 1".into(),
            });
        }
        let vocab = Vocabularies::build(data, &config.features);
        if vocab.item_id.values().is_empty() {
            return Err(TrainerError::Empty("no items"));
        }
        let (items, users) = build_tables(data, &vocab, &config.features);
        let device = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let vars = tensor_shapes(&config, &vocab)
            .into_iter()
            .map(|(name, rows)| {
                let values: Vec<f32> = (0..rows * config.dim)
                    .map(|_| rng.random_range(-INIT_BOUND..INIT_BOUND))
                    .collect();
                let var =
                    Var::from_tensor(&Tensor::from_vec(values, (rows, config.dim), &device)?)?;
                Ok((name, var))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            vocab,
            items,
            users,
            vars,
            device,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &TwoTowerConfig {
        &self.config
    }

    /// The vocabularies.
    pub fn vocabularies(&self) -> &Vocabularies {
        &self.vocab
    }

    /// Every trainable variable, in name order.
    pub fn vars(&self) -> Vec<Var> {
        self.vars.values().cloned().collect()
    }

    /// Number of catalog items (rows 1..=n of the item vocabulary).
    pub fn catalog_len(&self) -> usize {
        self.vocab.item_id.values().len()
    }

    /// (user row, item row) of each interaction; unknown ids are row 0.
    pub fn encode(&self, interactions: &[Interaction]) -> Vec<(u32, u32)> {
        interactions
            .iter()
            .map(|i| {
                (
                    self.vocab.user_id.lookup(&i.user),
                    self.vocab.item_id.lookup(&i.item),
                )
            })
            .collect()
    }

    /// Query embeddings `[users.len(), dim]` for user rows.
    pub fn query_embeddings(&self, users: &[u32]) -> Result<Tensor> {
        let mut x = self.lookup("user.id", users)?;
        for (f, name) in self.users.names.iter().enumerate() {
            let rows = self.users.column(f, users);
            x = (x + self.lookup(&format!("user.feature.{name}"), &rows)?)?;
        }
        Ok(x)
    }

    /// Candidate embeddings `[items.len(), dim]` for item rows.
    pub fn candidate_embeddings(&self, items: &[u32]) -> Result<Tensor> {
        let f = &self.config.features;
        let mut x = self.lookup("item.id", items)?;
        if f.title_tokens {
            x = (x + self.pooled("item.title_token", &self.items.title_tokens, items)?)?;
        }
        if f.genres {
            x = (x + self.pooled("item.genre", &self.items.genres, items)?)?;
        }
        if f.year {
            let rows: Vec<u32> = items.iter().map(|&i| self.items.year[i as usize]).collect();
            x = (x + self.lookup("item.year", &rows)?)?;
        }
        Ok(x)
    }

    /// Embeddings of the whole catalog, `[catalog_len, dim]`; row `r` is item row `r + 1`.
    pub fn catalog_embeddings(&self) -> Result<Tensor> {
        let rows: Vec<u32> = (1..=self.catalog_len() as u32).collect();
        self.candidate_embeddings(&rows)
    }

    /// The `k` best catalog items for a user id (unknown users get row 0's
    /// embedding), best first, as (item id, score).
    pub fn recommend(&self, user: &str, k: usize) -> Result<Vec<(String, f32)>> {
        let q = self.query_embeddings(&[self.vocab.user_id.lookup(user)])?;
        let scores = q
            .matmul(&self.catalog_embeddings()?.t()?)?
            .squeeze(0)?
            .to_vec1::<f32>()?;
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        Ok(order
            .into_iter()
            .take(k)
            .map(|i| {
                let id = self.vocab.item_id.value(i as u32 + 1).unwrap_or_default();
                (id.to_string(), scores[i])
            })
            .collect())
    }

    /// The stored features of every user row, for exporting the query tower.
    pub fn user_feature_rows(&self) -> &UserFeatureRows {
        &self.users
    }

    /// A trained table by tensor name (`user.id`, `user.feature.{name}`, …).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        Ok(self.var(name)?.as_tensor().clone())
    }

    fn lookup(&self, name: &str, rows: &[u32]) -> Result<Tensor> {
        let table = self.var(name)?;
        let ids = Tensor::from_slice(rows, rows.len(), &self.device)?;
        Ok(table.as_tensor().index_select(&ids, 0)?)
    }

    fn pooled(&self, name: &str, padded: &Padded, entities: &[u32]) -> Result<Tensor> {
        let (rows, weights) = padded.gather(entities);
        let n = entities.len();
        let embedded = self
            .lookup(name, &rows)?
            .reshape((n, padded.width, self.config.dim))?;
        let weights = Tensor::from_vec(weights, (n, padded.width, 1), &self.device)?;
        Ok(embedded.broadcast_mul(&weights)?.sum(1)?)
    }

    fn var(&self, name: &str) -> Result<&Var> {
        self.vars
            .get(name)
            .ok_or_else(|| TrainerError::InvalidConfig {
                field: "tensor",
                reason: format!("the model has no tensor {name}"),
            })
    }

    /// Writes the model to `dir` (created if missing).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let vocab_dir = dir.join("vocab");
        std::fs::create_dir_all(&vocab_dir).map_err(|e| TrainerError::io(&vocab_dir, e))?;
        let config_path = dir.join("config.json");
        let json =
            serde_json::to_string_pretty(&self.config).map_err(|e| TrainerError::ModelFile {
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
        std::fs::write(&config_path, json).map_err(|e| TrainerError::io(&config_path, e))?;
        for (name, vocab) in self.named_vocabularies() {
            vocab.write(&vocab_dir.join(format!("{name}.txt")))?;
        }
        let weights: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&weights, dir.join("weights.safetensors"))?;
        candle_core::safetensors::save(&self.feature_tensors()?, dir.join("features.safetensors"))?;
        Ok(())
    }

    /// Reads what [`TwoTower::save`] wrote.
    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| TrainerError::io(&config_path, e))?;
        let config: TwoTowerConfig =
            serde_json::from_str(&text).map_err(|e| TrainerError::ModelFile {
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
        let device = Device::Cpu;
        let vocab_dir = dir.join("vocab");
        let read = |name: &str| Vocabulary::read(&vocab_dir.join(format!("{name}.txt")));
        let features_path = dir.join("features.safetensors");
        let tables = candle_core::safetensors::load(&features_path, &device)?;
        let names = user_feature_names(&tables);
        let mut vocab = Vocabularies {
            user_id: read("user_id")?,
            item_id: read("item_id")?,
            title_token: read("title_token")?,
            genre: read("genre")?,
            year: read("year")?,
            user_features: BTreeMap::new(),
        };
        for name in &names {
            vocab
                .user_features
                .insert(name.clone(), read(&format!("user_feature.{name}"))?);
        }
        let (items, users) = tables_from_tensors(&tables, names, &features_path)?;
        let weights_path = dir.join("weights.safetensors");
        let mut weights = candle_core::safetensors::load(&weights_path, &device)?;
        let mut vars = BTreeMap::new();
        for (name, rows) in tensor_shapes(&config, &vocab) {
            let tensor = weights
                .remove(&name)
                .ok_or_else(|| TrainerError::ModelFile {
                    path: weights_path.clone(),
                    reason: format!("no tensor {name}"),
                })?;
            if tensor.dims() != [rows, config.dim] {
                return Err(TrainerError::ModelFile {
                    path: weights_path.clone(),
                    reason: format!(
                        "tensor {name} has shape {:?} where the vocabularies and config need [{rows}, {}]",
                        tensor.dims(),
                        config.dim
                    ),
                });
            }
            vars.insert(name, Var::from_tensor(&tensor.to_dtype(DType::F32)?)?);
        }
        Ok(Self {
            config,
            vocab,
            items,
            users,
            vars,
            device,
        })
    }

    fn named_vocabularies(&self) -> Vec<(String, &Vocabulary)> {
        let mut out = vec![
            ("user_id".to_string(), &self.vocab.user_id),
            ("item_id".to_string(), &self.vocab.item_id),
            ("title_token".to_string(), &self.vocab.title_token),
            ("genre".to_string(), &self.vocab.genre),
            ("year".to_string(), &self.vocab.year),
        ];
        for (name, v) in &self.vocab.user_features {
            out.push((format!("user_feature.{name}"), v));
        }
        out
    }

    fn feature_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let d = &self.device;
        let items = self.vocab.item_id.rows();
        let padded = |p: &Padded| -> Result<(Tensor, Tensor)> {
            Ok((
                Tensor::from_slice(&p.rows, (items, p.width), d)?,
                Tensor::from_slice(&p.weights, (items, p.width), d)?,
            ))
        };
        let (tr, tw) = padded(&self.items.title_tokens)?;
        let (gr, gw) = padded(&self.items.genres)?;
        let mut out = HashMap::from([
            ("item.title_tokens.rows".to_string(), tr),
            ("item.title_tokens.weights".to_string(), tw),
            ("item.genres.rows".to_string(), gr),
            ("item.genres.weights".to_string(), gw),
            (
                "item.year".to_string(),
                Tensor::from_slice(&self.items.year, items, d)?,
            ),
        ]);
        for (f, name) in self.users.names.iter().enumerate() {
            let all: Vec<u32> = (0..self.vocab.user_id.rows() as u32).collect();
            let column = self.users.column(f, &all);
            out.insert(
                format!("user.features.{name}"),
                Tensor::from_vec(column, all.len(), d)?,
            );
        }
        Ok(out)
    }
}

/// Embedding tables and their row counts, in name order.
fn tensor_shapes(config: &TwoTowerConfig, vocab: &Vocabularies) -> BTreeMap<String, usize> {
    let f = &config.features;
    let mut shapes = BTreeMap::from([
        ("user.id".to_string(), vocab.user_id.rows()),
        ("item.id".to_string(), vocab.item_id.rows()),
    ]);
    if f.title_tokens {
        shapes.insert("item.title_token".into(), vocab.title_token.rows());
    }
    if f.genres {
        shapes.insert("item.genre".into(), vocab.genre.rows());
    }
    if f.year {
        shapes.insert("item.year".into(), vocab.year.rows());
    }
    for (name, v) in &vocab.user_features {
        shapes.insert(format!("user.feature.{name}"), v.rows());
    }
    shapes
}

fn user_feature_names(tables: &HashMap<String, Tensor>) -> Vec<String> {
    let mut names: Vec<String> = tables
        .keys()
        .filter_map(|k| k.strip_prefix("user.features.").map(str::to_string))
        .collect();
    names.sort();
    names
}

fn tables_from_tensors(
    tables: &HashMap<String, Tensor>,
    names: Vec<String>,
    path: &Path,
) -> Result<(ItemTable, UserFeatureRows)> {
    let get = |name: &str| {
        tables.get(name).ok_or_else(|| TrainerError::ModelFile {
            path: path.to_path_buf(),
            reason: format!("no tensor {name}"),
        })
    };
    let padded = |prefix: &str| -> Result<Padded> {
        let rows = get(&format!("{prefix}.rows"))?;
        let weights = get(&format!("{prefix}.weights"))?;
        Ok(Padded {
            width: rows.dim(1)?,
            rows: rows.flatten_all()?.to_vec1()?,
            weights: weights.flatten_all()?.to_vec1()?,
        })
    };
    let items = ItemTable {
        title_tokens: padded("item.title_tokens")?,
        genres: padded("item.genres")?,
        year: get("item.year")?.to_vec1()?,
    };
    let columns: Vec<Vec<u32>> = names
        .iter()
        .map(|n| {
            get(&format!("user.features.{n}"))?
                .to_vec1()
                .map_err(Into::into)
        })
        .collect::<Result<_>>()?;
    let users = columns.first().map_or(0, Vec::len);
    let mut rows = Vec::with_capacity(users * names.len());
    for u in 0..users {
        rows.extend(columns.iter().map(|c| c[u]));
    }
    Ok((items, UserFeatureRows { names, rows }))
}
