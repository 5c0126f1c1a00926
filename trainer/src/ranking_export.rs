//! Writes a trained [`RankingModel`] in the ranker layout that
//! `recsys_model::Ranker::load` reads and `recsys_bundle_builder::attach_ranker` puts
//! into a bundle:
//!
//! ```text
//! DIR/config.json          RankerConfig: version, the DcnConfig, features in x0 order
//! DIR/weights.safetensors  embedding.{feature} and the DCN-V2 tensors, as trained
//! DIR/vocab/{feature}.txt  line i is embedding row i + 1 (row 0: out of vocabulary)
//! DIR/item_features.tsv    item_id (the u64 item id) and the item-side features
//! DIR/user_features.tsv    user_id and the user-side features other than the id,
//!                          when there are any: the values a request may leave out
//! ```
//!
//! Vocabulary paths in config.json are relative to DIR (`vocab/...`); attaching
//! the ranker to a bundle rewrites them relative to the bundle.

use std::fmt::Write as _;
use std::path::Path;

use recsys_model::{FeatureKind, FeatureSpec, Normalization, Pooling, RankerConfig, Side};

use crate::error::{Result, TrainerError};
use crate::ranking_features::{Column, ColumnValues};
use crate::ranking_model::RankingModel;

use recsys_bundle::layout::ranker_file::{
    CONFIG as CONFIG_FILE, ITEM_FEATURES as ITEM_FEATURES_FILE,
    USER_FEATURES as USER_FEATURES_FILE, WEIGHTS as WEIGHTS_FILE,
};
use recsys_bundle::layout::vocabulary_file;

/// Writes `model` to `dir` (created when missing) as ranker `version`.
pub fn export(model: &RankingModel, dir: &Path, version: &str) -> Result<()> {
    let vocab_dir = dir.join("vocab");
    std::fs::create_dir_all(&vocab_dir).map_err(|e| TrainerError::io(&vocab_dir, e))?;
    let tables = model.tables();
    let config = RankerConfig {
        version: version.to_string(),
        dcn: model.config().dcn(),
        features: tables
            .columns
            .iter()
            .zip(&model.config().features)
            .map(|(column, width)| spec(column, width.dim))
            .collect(),
    };
    let config_path = dir.join(CONFIG_FILE);
    let json = serde_json::to_string_pretty(&config).map_err(|e| TrainerError::ModelFile {
        path: config_path.clone(),
        reason: e.to_string(),
    })?;
    write(&config_path, json + "\n")?;
    for column in &tables.columns {
        // Multi-hot cells are split on `|`, so no value may hold one.
        if column.feature.kind() == FeatureKind::MultiHot
            && let Some(value) = column.vocabulary.values().iter().find(|v| v.contains('|'))
        {
            return Err(TrainerError::ModelFile {
                path: dir.join(ITEM_FEATURES_FILE),
                reason: format!("{} value {value:?} holds a |", column.feature.name()),
            });
        }
        if column.feature.kind() != FeatureKind::Numeric {
            column
                .vocabulary
                .write(&vocab_dir.join(format!("{}.txt", column.feature.name())))?;
        }
    }
    model.varmap().save(dir.join(WEIGHTS_FILE))?;

    // Items by their u64 id, in id order.
    let item_path = dir.join(ITEM_FEATURES_FILE);
    let mut items = Vec::with_capacity(tables.items.values().len());
    for (r, id) in tables.items.values().iter().enumerate() {
        let id: u64 = id.parse().map_err(|_| TrainerError::ModelFile {
            path: item_path.clone(),
            reason: format!("item id {id:?} is not an unsigned integer, as served item ids are"),
        })?;
        items.push((id, r + 1));
    }
    items.sort_unstable();
    let item_columns: Vec<&Column> = side(model, Side::Item);
    let text = table(
        &item_path,
        "item_id",
        &item_columns,
        items.iter().map(|&(id, row)| (id.to_string(), row)),
    )?;
    write(&item_path, text)?;

    let user_columns: Vec<&Column> = side(model, Side::User)
        .into_iter()
        .filter(|c| c.feature.name() != "user_id")
        .collect();
    let user_path = dir.join(USER_FEATURES_FILE);
    if user_columns.is_empty() {
        // A stale table from an earlier export would give another model's defaults.
        if user_path.exists() {
            std::fs::remove_file(&user_path).map_err(|e| TrainerError::io(&user_path, e))?;
        }
    } else {
        let users = tables
            .users
            .values()
            .iter()
            .enumerate()
            .map(|(r, id)| (id.clone(), r + 1));
        let text = table(&user_path, "user_id", &user_columns, users)?;
        write(&user_path, text)?;
    }
    Ok(())
}

fn side(model: &RankingModel, side: Side) -> Vec<&Column> {
    model
        .tables()
        .columns
        .iter()
        .filter(|c| c.feature.side() == side)
        .collect()
}

fn spec(column: &Column, dim: usize) -> FeatureSpec {
    let name = column.feature.name();
    let side = column.feature.side();
    let vocabulary = vocabulary_file(name);
    match &column.values {
        ColumnValues::Rows(_) => FeatureSpec::categorical(name, side, &vocabulary, dim),
        ColumnValues::Lists(_) => FeatureSpec {
            kind: FeatureKind::MultiHot,
            pooling: Some(Pooling::Mean),
            ..FeatureSpec::categorical(name, side, &vocabulary, dim)
        },
        ColumnValues::Numbers { mean, std, .. } => FeatureSpec {
            kind: FeatureKind::Numeric,
            vocabulary: String::new(),
            normalization: Some(Normalization {
                mean: *mean,
                std: *std,
            }),
            ..FeatureSpec::categorical(name, side, "", 1)
        },
    }
}

/// A TSV table: `key` then one column per feature; rows are (key, entity row).
fn table(
    path: &Path,
    key: &str,
    columns: &[&Column],
    rows: impl Iterator<Item = (String, usize)>,
) -> Result<String> {
    let mut text = String::from(key);
    for column in columns {
        text.push('\t');
        text.push_str(column.feature.name());
    }
    text.push('\n');
    for (id, row) in rows {
        check_cell(path, key, &id)?;
        text.push_str(&id);
        for column in columns {
            let cell = column.cell(row);
            check_cell(path, column.feature.name(), &cell)?;
            let _ = write!(text, "\t{cell}");
        }
        text.push('\n');
    }
    Ok(text)
}

/// Cells cannot hold the table's separators.
fn check_cell(path: &Path, name: &str, cell: &str) -> Result<()> {
    if cell.contains(['\t', '\n', '\r']) {
        return Err(TrainerError::ModelFile {
            path: path.to_path_buf(),
            reason: format!("{name} value {cell:?} holds a tab or a line break"),
        });
    }
    Ok(())
}

fn write(path: &Path, text: String) -> Result<()> {
    std::fs::write(path, text).map_err(|e| TrainerError::io(path, e))
}
