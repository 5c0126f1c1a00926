//! From a trained two-tower model to a bundle the cluster serves: the item tower's
//! embeddings of the whole catalog go into hash-sharded usearch indexes (inner
//! product, the score the model trained on), the query tower and the stored user
//! features into `query_tower/` (`recsys_bundle::query_tower`), titles into the
//! catalog. A ranker is attached afterwards with `recsys_bundle_builder::attach_ranker`.
//!
//! Items travel as `u64` ids on the wire while the trainer keys them by string:
//! [`catalog_ids`] keeps numeric ids as they are (MovieLens movie ids), maps a
//! title key back to the smallest movie id carrying that title (so a ranker keyed
//! by movie id knows it), and hashes anything else.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use recsys_bundle::attributes::{ATTRIBUTES_FILE, ItemAttributes};
use recsys_bundle::query_tower::{TableParts, TowerParts, USER_ID_FEATURE};
use recsys_bundle::user_history::{USER_HISTORY_FILE, UserHistory};
use recsys_bundle::{IndexParams, Manifest, Metric, QueryModelSpec, QueryTower};
use recsys_bundle_builder::{BuildEvent, BuildOptions, ItemVectors};

use crate::dataset::Dataset;
use crate::error::{Result, TrainerError};
use crate::two_tower::TwoTower;

/// How to write the bundle.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Hash shards.
    pub shards: u32,
    /// HNSW parameters; the metric is forced to inner product.
    pub params: IndexParams,
    /// The bundle's version string.
    pub version: String,
    /// Where the data came from, for the manifest.
    pub source: String,
    /// Index construction threads; 0 for all cores.
    pub threads: usize,
}

/// The wire id and display name of each catalog row of a model (row `r + 1` is
/// entry `r`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogIds {
    /// `u64` item ids, unique.
    pub ids: Vec<u64>,
    /// Display names (titles where known).
    pub names: Vec<String>,
}

/// Wire ids and names for the model's item keys `keys` (the item vocabulary's
/// values), given the data set as loaded (keyed by item id, before any re-keying
/// by title).
pub fn catalog_ids(keys: &[String], data: &Dataset) -> Result<CatalogIds> {
    let by_id: HashMap<&str, &crate::dataset::Item> =
        data.items.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut by_title: HashMap<&str, u64> = HashMap::new();
    for item in &data.items {
        if let (Some(title), Ok(id)) = (item.title.as_deref(), item.id.parse::<u64>()) {
            let entry = by_title.entry(title).or_insert(id);
            *entry = (*entry).min(id);
        }
    }
    let mut ids = Vec::with_capacity(keys.len());
    let mut names = Vec::with_capacity(keys.len());
    let mut seen = HashSet::with_capacity(keys.len());
    for key in keys {
        let (id, name) = if let Ok(id) = key.parse::<u64>() {
            let name = by_id
                .get(key.as_str())
                .and_then(|i| i.title.clone())
                .unwrap_or_else(|| key.clone());
            (id, name)
        } else if let Some(&id) = by_title.get(key.as_str()) {
            (id, key.clone())
        } else {
            (fnv1a(key), key.clone())
        };
        if !seen.insert(id) {
            return Err(TrainerError::InvalidConfig {
                field: "item ids",
                reason: format!("item {key:?} maps to id {id}, which another item has"),
            });
        }
        ids.push(id);
        names.push(name);
    }
    Ok(CatalogIds { ids, names })
}

/// A stable 64-bit hash for item keys that are not numbers.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The query tower of `model` in the bundle's form.
pub fn tower_parts(model: &TwoTower) -> Result<TowerParts> {
    let vocab = model.vocabularies();
    let width = model.config().dim;
    let table = |name: &str, tensor: &str, values: &[String]| -> Result<TableParts> {
        Ok(TableParts {
            name: name.to_string(),
            values: values.to_vec(),
            data: model.tensor(tensor)?.flatten_all()?.to_vec1::<f32>()?,
        })
    };
    let users = model.user_feature_rows();
    let mut tables = vec![table(USER_ID_FEATURE, "user.id", vocab.user_id.values())?];
    for name in &users.names {
        let values = vocab
            .user_features
            .get(name)
            .map_or(&[][..], |v| v.values());
        tables.push(table(name, &format!("user.feature.{name}"), values)?);
    }
    let mut stored = Vec::new();
    if !users.names.is_empty() {
        for (r, user) in vocab.user_id.values().iter().enumerate() {
            let row = [r as u32 + 1];
            let values = users
                .names
                .iter()
                .enumerate()
                .map(|(f, name)| {
                    let feature_row = users.column(f, &row)[0];
                    vocab.user_features[name]
                        .value(feature_row)
                        .map(str::to_string)
                })
                .collect();
            stored.push((user.clone(), values));
        }
    }
    Ok(TowerParts {
        width,
        tables,
        users: stored,
        layers: Vec::new(),
        l2_normalize: false,
    })
}

/// Each user's interactions in `data` (keyed by item id, as loaded) as wire
/// ids of `catalog`, whose entries are the model's item keys `keys` (item ids,
/// or titles when the model was trained by title): what the gateway leaves out
/// of that user's answers. Interactions with items the model does not know
/// are left out.
pub fn user_history(keys: &[String], catalog: &CatalogIds, data: &Dataset) -> UserHistory {
    let wire: HashMap<&str, u64> = keys
        .iter()
        .map(String::as_str)
        .zip(catalog.ids.iter().copied())
        .collect();
    let title: HashMap<&str, &str> = data
        .items
        .iter()
        .filter_map(|item| Some((item.id.as_str(), item.title.as_deref()?)))
        .collect();
    UserHistory::from_pairs(data.interactions.iter().filter_map(|interaction| {
        let item = interaction.item.as_str();
        let id = wire
            .get(item)
            .or_else(|| title.get(item).and_then(|title| wire.get(title)))?;
        Some((interaction.user.clone(), *id))
    }))
}

/// The attributes of `catalog`'s items (the model's item keys `keys`) that
/// `data` describes: `genre` (a keyword list) and `year` (an integer), as
/// MovieLens gives them; `None` when no item has either.
pub fn item_attributes(
    keys: &[String],
    catalog: &CatalogIds,
    data: &Dataset,
) -> Result<Option<ItemAttributes>> {
    let by_key: HashMap<&str, &crate::dataset::Item> = data
        .items
        .iter()
        .flat_map(|item| {
            std::iter::once((item.id.as_str(), item))
                .chain(item.title.as_deref().map(|title| (title, item)))
        })
        .collect();
    let clean = |text: &str| text.replace(['\t', '\n', '\r', '|'], " ");
    let mut tsv = String::from("id\tgenre:keyword_list\tyear:integer\n");
    let mut any = false;
    for (key, id) in keys.iter().zip(&catalog.ids) {
        let Some(item) = by_key.get(key.as_str()) else {
            continue;
        };
        let genres: Vec<String> = item.genres.iter().map(|g| clean(g)).collect();
        any |= !genres.is_empty() || item.year.is_some();
        let year = item.year.map(|year| year.to_string()).unwrap_or_default();
        tsv.push_str(&format!("{id}\t{}\t{year}\n", genres.join("|")));
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(ItemAttributes::parse(
        &tsv,
        Path::new(ATTRIBUTES_FILE),
    )?))
}

/// Writes `model` as a bundle into `dir`: item embeddings into `options.shards`
/// usearch files, the query tower, the catalog, each user's `history` (when
/// any), the items' `attributes` (when given), and the manifest last.
pub fn export_bundle(
    model: &TwoTower,
    catalog: &CatalogIds,
    history: &UserHistory,
    attributes: Option<&ItemAttributes>,
    dir: &Path,
    options: &ExportOptions,
    progress: &(dyn Fn(BuildEvent) + Sync),
) -> Result<Manifest> {
    let embeddings = model.catalog_embeddings()?;
    let (rows, dimensions) = embeddings.dims2()?;
    if rows != catalog.ids.len() {
        return Err(TrainerError::InvalidConfig {
            field: "catalog",
            reason: format!(
                "{} item ids for a catalog of {rows} embeddings",
                catalog.ids.len()
            ),
        });
    }
    let items = ItemVectors {
        dimensions,
        data: embeddings.flatten_all()?.to_vec1::<f32>()?,
        ids: catalog.ids.clone(),
        names: Some(catalog.names.clone()),
    };
    let build = BuildOptions {
        params: IndexParams {
            metric: Metric::Ip,
            ..options.params
        },
        shard_count: options.shards,
        version: options.version.clone(),
        source: options.source.clone(),
        threads: options.threads,
    };
    // The tower first: a failure then leaves no manifest, so no half bundle loads.
    std::fs::create_dir_all(dir).map_err(|e| TrainerError::io(dir, e))?;
    let spec = QueryTower::write(dir, &tower_parts(model)?)?;
    let mut manifest = recsys_bundle_builder::build_bundle(dir, &items, None, &build, progress)?;
    manifest.query_model = Some(QueryModelSpec::Tower(spec));
    if history.users() > 0 {
        history.save(&dir.join(USER_HISTORY_FILE))?;
        manifest.user_history = Some(USER_HISTORY_FILE.to_string());
    }
    if let Some(attributes) = attributes {
        attributes.save(&dir.join(ATTRIBUTES_FILE))?;
        manifest.attributes = Some(ATTRIBUTES_FILE.to_string());
    }
    recsys_bundle_builder::seal(dir, &mut manifest)?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use recsys_bundle::filter::AttributeValue;

    use super::*;
    use crate::dataset::{Interaction, Item};

    fn movie(id: &str, title: &str, year: Option<u16>, genres: &[&str]) -> Item {
        Item {
            id: id.into(),
            title: Some(title.into()),
            year,
            genres: genres.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// A model keyed by title (as MovieLens trains by default) gets each
    /// title's genres and year under the title's wire id; the history maps
    /// ratings of ids through their titles.
    #[test]
    fn attributes_and_histories_follow_the_models_keys() {
        let data = Dataset {
            interactions: vec![
                Interaction {
                    user: "u1".into(),
                    item: "7".into(),
                    rating: Some(4.0),
                    timestamp: None,
                },
                Interaction {
                    user: "u1".into(),
                    item: "unknown".into(),
                    rating: None,
                    timestamp: None,
                },
            ],
            items: vec![
                movie("7", "Heat (1995)", Some(1995), &["Action", "Crime|Drama"]),
                movie("8", "Quiet (2001)", None, &[]),
            ],
            users: Vec::new(),
        };
        let keys = vec!["Heat (1995)".to_string(), "Quiet (2001)".to_string()];
        let catalog = catalog_ids(&keys, &data).unwrap();
        assert_eq!(catalog.ids, vec![7, 8]);
        let attributes = item_attributes(&keys, &catalog, &data).unwrap().unwrap();
        let crime_drama = ["Action".to_string(), "Crime Drama".to_string()];
        assert_eq!(
            attributes.value(7, "genre"),
            Some(AttributeValue::KeywordList(&crime_drama))
        );
        assert_eq!(
            attributes.value(7, "year"),
            Some(AttributeValue::Integer(1995))
        );
        assert_eq!(attributes.value(8, "genre"), None);
        assert_eq!(attributes.value(8, "year"), None);
        let history = user_history(&keys, &catalog, &data);
        assert_eq!(history.items("u1"), &[7]);
        // Items with neither genres nor years: no attributes at all.
        let bare = Dataset {
            items: vec![movie("8", "Quiet (2001)", None, &[])],
            ..data
        };
        assert!(
            item_attributes(
                &keys[1..],
                &CatalogIds {
                    ids: vec![8],
                    names: vec![]
                },
                &bare
            )
            .unwrap()
            .is_none()
        );
    }
}
