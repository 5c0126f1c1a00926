//! `recsys train ranking`: trains the DCN-V2 ranker on MovieLens ratings from a
//! preset (`--preset recsys`, the default; `tfrs-dcn`; `tfrs-basic-ranking`),
//! prints per-epoch and final RMSE, and with `--out` writes the ranker layout
//! that `recsys bundle --ranker DIR` puts into a bundle.
//!
//! The other flags override single settings of the preset; the data, format,
//! seed and split fraction are the flags both models share
//! ([`crate::train::DataArgs`]). The variables keep their `RECSYS_TRAIN_RANKER_`
//! prefix: unlike flags, they have no subcommand to tell the two models apart.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use recsys_trainer::{
    RankingEvent, RankingFeature, RankingModel, RankingOptimizer, RankingPreset, random_split,
    rmse, train_ranking,
};

use crate::epoch_bar::EpochBar;
use crate::train::{DataArgs, load_raw, seconds};

/// The ranking presets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// recsys's default (tuned on a validation slice of the training set).
    Recsys,
    /// TFRS's DCN tutorial (MovieLens part).
    TfrsDcn,
    /// TFRS's basic ranking tutorial.
    TfrsBasicRanking,
}

/// Flags of `recsys train ranking`.
#[derive(Debug, Clone, Args)]
pub struct RankingArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Starting settings; every flag below that is given overrides its value.
    #[arg(
        long,
        value_enum,
        default_value_t = Preset::Recsys,
        env = "RECSYS_TRAIN_RANKER_PRESET"
    )]
    pub preset: Preset,
    /// Write the trained ranker here (config.json, weights.safetensors, vocab/, item_features.tsv, user_features.tsv).
    #[arg(long, env = "RECSYS_TRAIN_RANKER_OUT")]
    pub out: Option<PathBuf>,
    /// Version recorded in the exported ranker (default: recsys-<preset>-seed<seed>).
    #[arg(long, env = "RECSYS_TRAIN_RANKER_VERSION")]
    pub model_version: Option<String>,
    /// Override the preset's most epochs.
    #[arg(long, env = "RECSYS_TRAIN_RANKER_EPOCHS")]
    pub epochs: Option<usize>,
    /// Override the preset's batch size.
    #[arg(long, env = "RECSYS_TRAIN_RANKER_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Override the preset's learning rate.
    #[arg(long, env = "RECSYS_TRAIN_RANKER_LR")]
    pub lr: Option<f64>,
    /// Adam's decoupled weight decay (Adam presets only).
    #[arg(long, env = "RECSYS_TRAIN_RANKER_WEIGHT_DECAY")]
    pub weight_decay: Option<f64>,
    /// Share of the training set held out for validation and early stopping (0: none).
    #[arg(long, env = "RECSYS_TRAIN_RANKER_VALIDATION")]
    pub validation: Option<f64>,
    /// Epochs without a better validation RMSE before stopping (0: never stop early).
    #[arg(long, env = "RECSYS_TRAIN_RANKER_PATIENCE")]
    pub patience: Option<usize>,
    /// Features in x0 order, comma-separated (movie_id, movie_title, movie_genres, movie_year, user_id, user_gender, user_zip_code, user_occupation_text, bucketized_user_age).
    #[arg(long, value_delimiter = ',', env = "RECSYS_TRAIN_RANKER_FEATURES")]
    pub features: Option<Vec<String>>,
    /// Embedding width of every categorical and multi-hot feature.
    #[arg(long, env = "RECSYS_TRAIN_RANKER_DIM")]
    pub dim: Option<usize>,
    /// Cross layers.
    #[arg(long, env = "RECSYS_TRAIN_RANKER_CROSS_LAYERS")]
    pub cross_layers: Option<usize>,
    /// Rank of the cross weights (0: full rank).
    #[arg(long, env = "RECSYS_TRAIN_RANKER_PROJECTION_DIM")]
    pub projection_dim: Option<usize>,
    /// Deep layer widths, comma-separated (empty: none).
    #[arg(long, value_delimiter = ',', env = "RECSYS_TRAIN_RANKER_DEEP")]
    pub deep: Option<Vec<usize>>,
    /// Parallel instead of stacked cross and deep parts.
    #[arg(long, env = "RECSYS_TRAIN_RANKER_PARALLEL")]
    pub parallel: Option<bool>,
    /// Draw a new batch order every epoch.
    #[arg(long, env = "RECSYS_TRAIN_RANKER_RESHUFFLE")]
    pub reshuffle: Option<bool>,
}

impl Preset {
    fn name(self) -> &'static str {
        match self {
            Self::Recsys => "recsys",
            Self::TfrsDcn => "tfrs-dcn",
            Self::TfrsBasicRanking => "tfrs-basic-ranking",
        }
    }
}

/// The preset with the flags' overrides.
fn preset(r: &RankingArgs) -> anyhow::Result<RankingPreset> {
    let mut p = RankingPreset::named(r.preset.name(), r.data.seed)
        .with_context(|| format!("no preset {}", r.preset.name()))?;
    let t = &mut p.train;
    if let Some(epochs) = r.epochs {
        t.epochs = epochs;
    }
    if let Some(batch) = r.batch_size {
        t.batch_size = batch;
    }
    match &mut t.optimizer {
        RankingOptimizer::Adagrad { learning_rate } => {
            if let Some(lr) = r.lr {
                *learning_rate = lr;
            }
            anyhow::ensure!(
                r.weight_decay.is_none(),
                "--weight-decay needs an Adam preset"
            );
        }
        RankingOptimizer::Adam {
            learning_rate,
            weight_decay,
        } => {
            if let Some(lr) = r.lr {
                *learning_rate = lr;
            }
            if let Some(wd) = r.weight_decay {
                *weight_decay = wd;
            }
        }
    }
    if let Some(v) = r.validation {
        t.validation_fraction = v;
    }
    if let Some(patience) = r.patience {
        t.patience = (patience > 0).then_some(patience);
    }
    if let Some(reshuffle) = r.reshuffle {
        t.reshuffle_each_epoch = reshuffle;
    }
    let m = &mut p.model;
    if let Some(names) = &r.features {
        m.features = names
            .iter()
            .map(|name| {
                let feature: RankingFeature =
                    serde_json::from_value(serde_json::Value::from(name.trim()))
                        .map_err(|_| anyhow::anyhow!("--features: no feature {name}"))?;
                Ok(recsys_trainer::FeatureWidth { feature, dim: 32 })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    if let Some(dim) = r.dim {
        m.features.iter_mut().for_each(|f| f.dim = dim);
    }
    if let Some(layers) = r.cross_layers {
        m.cross_layers = layers;
    }
    if let Some(rank) = r.projection_dim {
        m.projection_dim = (rank > 0).then_some(rank);
    }
    if let Some(deep) = &r.deep {
        m.deep_units = deep.clone();
    }
    if let Some(parallel) = r.parallel {
        m.structure = if parallel {
            recsys_model::Structure::Parallel
        } else {
            recsys_model::Structure::Stacked
        };
    }
    Ok(p)
}

/// Loads, splits, trains, evaluates, prints, exports.
pub fn run(r: &RankingArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = r.data.seed;
    // The ranker keys items by MovieLens id (titles are a feature).
    let data = load_raw(&r.data)?;
    let split = random_split(&data.interactions, r.data.train_fraction, seed)?;
    let preset = preset(r)?;
    let model = RankingModel::new(preset.model.clone(), &data, seed)?;
    println!(
        "{} ratings ({} train, {} test), {} users, {} items, preset {}, loaded in {:.2?}",
        data.interactions.len(),
        split.train.len(),
        split.test.len(),
        model.tables().users.values().len(),
        model.tables().items.values().len(),
        r.preset.name(),
        started.elapsed()
    );
    println!(
        "model {}",
        serde_json::to_string(&preset).unwrap_or_default()
    );
    let training = Instant::now();
    let mut progress = Progress::new(preset.train.epochs);
    let report = train_ranking(&model, &split.train, &preset.train, &mut |e| progress.on(e))?;
    let training = training.elapsed();
    if report.validated_on > 0 {
        println!(
            "kept epoch {} of {} (best validation RMSE on {} held-out training ratings)",
            report.best_epoch + 1,
            report.epochs.len(),
            report.validated_on
        );
    }
    let evaluation = Instant::now();
    let train_rmse = rmse(&model, &split.train, 8192)?;
    let test_rmse = rmse(&model, &split.test, 8192)?;
    let evaluation = evaluation.elapsed();
    println!("RMSE train {train_rmse:.4} test {test_rmse:.4}");
    if let Some(out) = &r.out {
        let version = r
            .model_version
            .clone()
            .unwrap_or_else(|| format!("recsys-{}-seed{}", r.preset.name(), seed));
        model
            .export(out, &version)
            .with_context(|| format!("writing the ranker to {}", out.display()))?;
        println!("ranker {version} written to {}", out.display());
    }
    println!(
        "training {:.2}s, evaluation {:.2}s, total {:.2}s",
        training.as_secs_f64(),
        evaluation.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The ranker's progress: the running RMSE per batch, then a line per epoch.
struct Progress(EpochBar);

impl Progress {
    fn new(epochs: usize) -> Self {
        Self(EpochBar::new(epochs))
    }

    fn on(&mut self, event: RankingEvent) {
        match event {
            RankingEvent::EpochStarted { epoch, steps } => self.0.start(epoch, steps),
            RankingEvent::Step { loss } => self
                .0
                .step(loss, |mse| format!("loss {mse:.4} RMSE {:.4}", mse.sqrt())),
            RankingEvent::EpochFinished(report) => {
                self.0.finish();
                let validation = report
                    .validation_rmse
                    .map(|v| format!(", validation RMSE {v:.4}"))
                    .unwrap_or_default();
                println!(
                    "epoch {}/{}: train RMSE {:.4}{validation}, {}",
                    report.epoch + 1,
                    self.0.epochs(),
                    report.train_rmse,
                    seconds(report.elapsed)
                );
            }
        }
    }
}
