//! Puts a ranker made elsewhere into a bundle: the "train in TFRS, serve here"
//! path. `tools/tfrs_export` writes a ranker directory (`config.json`,
//! `weights.safetensors`, `vocab/`, `item_features.tsv`), and `recsys train
//! ranking` the same plus `user_features.tsv`; this copies it under the
//! bundle's `ranker/`, rewrites the vocabulary paths to be relative to the bundle
//! (as the manifest's paths are), loads it once to prove it is whole, names it
//! in the manifest and seals the bundle again (the ranker's files checksummed).

use std::path::{Path, PathBuf};

use recsys_bundle::layout::{self, RANKER_DIR, ranker_file};
use recsys_bundle::ranker_variants::{check_variant_name, variant_dir};
use recsys_bundle::{BundleError, Manifest, RankerSpec};
use recsys_model::{Ranker, RankerConfig};

/// What [`attach_ranker`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedRanker {
    /// The ranker's model version.
    pub version: String,
    /// Items the ranker has features for.
    pub ranker_items: usize,
    /// Of the bundle's items given, those the ranker has no features for: ranking
    /// nodes refuse them unless told to score them as out of vocabulary.
    pub unknown_items: usize,
}

/// Copies the ranker in `source` into the bundle at `bundle_dir` and records it in
/// the manifest; counts which of `items` (the bundle's item ids) it does not know.
/// Fails, naming the file, when the ranker does not load.
pub fn attach_ranker(
    bundle_dir: &Path,
    source: &Path,
    items: &[u64],
) -> Result<AttachedRanker, BundleError> {
    attach_ranker_variant(bundle_dir, source, items, None)
}

/// [`attach_ranker`] as the ranker variant `variant` (`rankers/{variant}/`,
/// `recsys_bundle::ranker_variants`) when given, beside the bundle's own
/// ranker, which it needs. A variant attached again replaces the one before.
pub fn attach_ranker_variant(
    bundle_dir: &Path,
    source: &Path,
    items: &[u64],
    variant: Option<&str>,
) -> Result<AttachedRanker, BundleError> {
    let dir = match variant {
        Some(name) => {
            check_variant_name(name).map_err(|reason| BundleError::Invalid {
                field: "variant",
                reason,
            })?;
            if Manifest::load(bundle_dir)?.ranker.is_none() {
                return Err(BundleError::Invalid {
                    field: "variant",
                    reason: format!(
                        "{name}: the bundle has no ranker yet; attach its default ranker first"
                    ),
                });
            }
            variant_dir(name)
        }
        None => RANKER_DIR.to_string(),
    };
    let config_path = source.join(ranker_file::CONFIG);
    let text =
        std::fs::read_to_string(&config_path).map_err(|e| BundleError::io(&config_path, e))?;
    let mut config: RankerConfig = serde_json::from_str(&text)
        .map_err(|e| BundleError::corrupt(&config_path, format!("not a ranker config: {e}")))?;
    let target = bundle_dir.join(&dir);
    std::fs::create_dir_all(&target).map_err(|e| BundleError::io(&target, e))?;
    // The exporter may have written straight into the bundle: copying a file onto
    // itself would truncate it.
    let in_place = same_file(source, &target);
    // A trained ranker stores its users' features; a TFRS export has none.
    let user_features = source.join(ranker_file::USER_FEATURES).is_file();
    if !in_place {
        for file in [ranker_file::WEIGHTS, ranker_file::ITEM_FEATURES] {
            copy(&source.join(file), &target.join(file))?;
        }
        if user_features {
            copy(
                &source.join(ranker_file::USER_FEATURES),
                &target.join(ranker_file::USER_FEATURES),
            )?;
        }
    }
    let vocab_dir = target.join("vocab");
    std::fs::create_dir_all(&vocab_dir).map_err(|e| BundleError::io(&vocab_dir, e))?;
    for feature in config
        .features
        .iter_mut()
        .filter(|f| !f.vocabulary.is_empty())
    {
        let from = vocabulary_file(source, &feature.vocabulary).ok_or_else(|| {
            BundleError::corrupt(
                &config_path,
                format!(
                    "feature {}: vocabulary {} is neither in {} nor in its parent",
                    feature.name,
                    feature.vocabulary,
                    source.display()
                ),
            )
        })?;
        let name = layout::vocabulary_file(&feature.name);
        let to = target.join(&name);
        if !(in_place && same_file(&from, &to)) {
            copy(&from, &to)?;
        }
        feature.vocabulary = format!("{dir}/{name}");
    }
    let config_out = target.join(ranker_file::CONFIG);
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| BundleError::corrupt(&config_out, format!("cannot encode: {e}")))?;
    std::fs::write(&config_out, text + "\n").map_err(|e| BundleError::io(&config_out, e))?;

    let spec = RankerSpec::attached_in(&dir, user_features);
    let ranker = Ranker::load(&spec.files(bundle_dir)).map_err(|e| BundleError::Invalid {
        field: "ranker",
        reason: e.to_string(),
    })?;
    let mut manifest = Manifest::load(bundle_dir)?;
    match variant {
        Some(name) => {
            manifest.ranker_variants.insert(name.to_string(), spec);
        }
        None => manifest.ranker = Some(spec),
    }
    // The ranker's files are new or rewritten: hash them anew.
    manifest
        .files
        .retain(|path, _| !path.starts_with(&format!("{dir}/")));
    crate::seal(bundle_dir, &mut manifest)?;
    Ok(AttachedRanker {
        version: ranker.version().to_string(),
        ranker_items: ranker.items(),
        unknown_items: items.iter().filter(|&&id| !ranker.knows_item(id)).count(),
    })
}

/// Where a config's vocabulary path points: relative to the ranker directory, or
/// (as `tools/tfrs_export` writes it, `ranker/vocab/...`) to the bundle it was
/// meant for: the ranker directory's parent, or the ranker directory itself once
/// the leading bundle path is dropped (a ranker directory that was moved). Paths
/// that climb out are refused.
fn vocabulary_file(source: &Path, vocabulary: &str) -> Option<PathBuf> {
    let relative = Path::new(vocabulary);
    if relative.is_absolute() || relative.components().any(|c| c.as_os_str() == "..") {
        return None;
    }
    let components: Vec<_> = relative.components().collect();
    let from_source = |skip: usize| source.join(components[skip..].iter().collect::<PathBuf>());
    std::iter::once(from_source(0))
        .chain(source.parent().map(|parent| parent.join(relative)))
        .chain((1..components.len()).map(from_source))
        .find(|path| path.is_file())
}

fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

fn copy(from: &Path, to: &Path) -> Result<(), BundleError> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| BundleError::io(from, e))
}
