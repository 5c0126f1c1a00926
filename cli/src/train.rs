//! `recsys train retrieval`: trains the two-tower retrieval model on MovieLens and
//! prints TFRS's factorized top-k accuracies for the training and test sets;
//! `recsys train ranking` trains the DCN-V2 ranker ([`crate::train_ranking`]).
//! One subcommand per model, so each model's flags are its own (`--preset`,
//! `--epochs`, `--out` mean the model named) and its help lists only them; the
//! data set, its split and the seed ([`DataArgs`]) are the same for both.
//!
//! Retrieval settings start from a preset: `recsys` (the default) or `tfrs-basic`, TFRS's
//! basic retrieval tutorial (movie titles as item ids, ids only, 32 dimensions,
//! batch 8192, Adagrad 0.1, 3 epochs); flags override single settings. Both
//! split at random 80/20 with seed 42 (our own shuffle; see
//! `recsys_trainer::split`).

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use recsys_trainer::evaluate::TFRS_KS;
use recsys_trainer::{
    Dataset, FeatureChoice, OptimizerChoice, TopKAccuracy, TrainConfig, TrainEvent, TwoTower,
    TwoTowerConfig, factorized_top_k, factorized_top_k_unseen, popularity_top_k,
    popularity_top_k_unseen, random_split,
};

use crate::epoch_bar::EpochBar;
use crate::train_export::ExportArgs;

/// `recsys train`: which model.
#[derive(Debug, Clone, Subcommand)]
pub enum TrainCommand {
    /// Train the two-tower retrieval model and print its factorized top-k accuracies.
    Retrieval(Box<TrainArgs>),
    /// Train the DCN-V2 ranker (ratings, clicks or both) and print its metrics
    /// (both boxed: their flags are a few hundred bytes each).
    Ranking(Box<crate::train_ranking::RankingArgs>),
}

/// The data set, its split and the seed: the same flags for either model.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// The data directory (MovieLens 100K: u.data, u.user, u.item; 1M: ratings.dat, users.dat, movies.dat).
    #[arg(long, env = "RECSYS_TRAIN_DATA")]
    pub data: PathBuf,
    /// The data set's format.
    #[arg(long, value_enum, default_value_t = Format::Ml100k, env = "RECSYS_TRAIN_FORMAT")]
    pub format: Format,
    /// Seeds the split, the initial weights and the batch order.
    #[arg(long, default_value_t = 42, env = "RECSYS_TRAIN_SEED")]
    pub seed: u64,
    /// Share of interactions used for training.
    #[arg(long, default_value_t = 0.8, env = "RECSYS_TRAIN_FRACTION")]
    pub train_fraction: f64,
}

/// Options of `recsys train retrieval`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Starting settings; every flag below that is given overrides its value.
    #[arg(long, value_enum, default_value_t = Preset::Recsys, env = "RECSYS_TRAIN_PRESET")]
    pub preset: Preset,
    /// Passes over the training set.
    #[arg(long, env = "RECSYS_TRAIN_EPOCHS")]
    pub epochs: Option<usize>,
    /// Interactions per batch (and in-batch candidates).
    #[arg(long, env = "RECSYS_TRAIN_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// Learning rate.
    #[arg(long, env = "RECSYS_TRAIN_LR")]
    pub lr: Option<f64>,
    /// Embedding dimensions.
    #[arg(long, env = "RECSYS_TRAIN_DIM")]
    pub dim: Option<usize>,
    /// Optimizer.
    #[arg(long, value_enum, env = "RECSYS_TRAIN_OPTIMIZER")]
    pub optimizer: Option<OptimizerArg>,
    /// What identifies an item: the title (TFRS's tutorial) or the MovieLens id.
    #[arg(long, value_enum, default_value_t = ItemKey::Title, env = "RECSYS_TRAIN_ITEM_KEY")]
    pub item_key: ItemKey,
    /// Add user features and title tokens, genres and year to the towers (`--features false` to drop them).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", env = "RECSYS_TRAIN_FEATURES")]
    pub features: Option<bool>,
    /// Softmax temperature (1 for none).
    #[arg(long, env = "RECSYS_TRAIN_TEMPERATURE")]
    pub temperature: Option<f32>,
    /// Correct logits by each candidate's training frequency (log-Q; `--log-q false` to drop it).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", env = "RECSYS_TRAIN_LOG_Q")]
    pub log_q: Option<bool>,
    /// Mask in-batch negatives that are the positive item.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", env = "RECSYS_TRAIN_REMOVE_ACCIDENTAL_HITS")]
    pub remove_accidental_hits: Option<bool>,
    /// Draw a new batch order every epoch (TFRS's tutorial keeps one).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", env = "RECSYS_TRAIN_RESHUFFLE")]
    pub reshuffle: Option<bool>,
    /// Hold out this share of the training set as a validation set: train on
    /// the rest and report validation instead of test figures, for choosing
    /// settings without looking at the test set.
    #[arg(long, env = "RECSYS_TRAIN_VALIDATION_FRACTION")]
    pub validation_fraction: Option<f64>,
    /// Write the trained model here (config.json, weights.safetensors, features.safetensors, vocab/).
    #[arg(long, env = "RECSYS_TRAIN_OUT")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub export: ExportArgs,
}

/// Named starting points for the model and training settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// Our defaults: the tutorial's model and optimizer with the log-Q
    /// correction (docs/quality.md has the measurements that chose them).
    Recsys,
    /// TFRS's basic retrieval tutorial: ids only, 32 dimensions, Adagrad 0.1,
    /// batch 8192, 3 epochs, no log-Q correction.
    #[value(name = "tfrs-basic")]
    TfrsBasic,
}

/// A preset's model shape and training settings.
struct Settings {
    model: TwoTowerConfig,
    train: TrainConfig,
}

impl Preset {
    fn settings(self, seed: u64) -> Settings {
        let tutorial = TwoTowerConfig {
            dim: 32,
            features: FeatureChoice::IDS_ONLY,
        };
        match self {
            Preset::Recsys => Settings {
                model: tutorial,
                train: TrainConfig::recsys_retrieval(seed),
            },
            Preset::TfrsBasic => Settings {
                model: tutorial,
                train: TrainConfig::tfrs_basic_retrieval(seed),
            },
        }
    }
}

impl TrainArgs {
    /// The preset's settings with every given flag applied over them.
    fn settings(&self) -> Settings {
        let Settings {
            mut model,
            mut train,
        } = self.preset.settings(self.data.seed);
        if let Some(dim) = self.dim {
            model.dim = dim;
        }
        if let Some(features) = self.features {
            model.features = if features {
                FeatureChoice::ALL
            } else {
                FeatureChoice::IDS_ONLY
            };
        }
        train.epochs = self.epochs.unwrap_or(train.epochs);
        train.batch_size = self.batch_size.unwrap_or(train.batch_size);
        let (kind, preset_lr) = match train.optimizer {
            OptimizerChoice::Adagrad { learning_rate } => (OptimizerArg::Adagrad, learning_rate),
            OptimizerChoice::Adam { learning_rate } => (OptimizerArg::Adam, learning_rate),
        };
        let kind = self.optimizer.unwrap_or(kind);
        // A different optimizer without --lr starts from that optimizer's usual step.
        let lr = self.lr.unwrap_or(match (kind, self.optimizer) {
            (OptimizerArg::Adam, Some(_)) => 0.001,
            (OptimizerArg::Adagrad, Some(_)) => 0.1,
            _ => preset_lr,
        });
        train.optimizer = match kind {
            OptimizerArg::Adagrad => OptimizerChoice::Adagrad { learning_rate: lr },
            OptimizerArg::Adam => OptimizerChoice::Adam { learning_rate: lr },
        };
        if let Some(t) = self.temperature {
            train.loss.temperature = (t != 1.0).then_some(t);
        }
        if let Some(r) = self.remove_accidental_hits {
            train.loss.remove_accidental_hits = r;
        }
        train.log_q_correction = self.log_q.unwrap_or(train.log_q_correction);
        train.reshuffle_each_epoch = self.reshuffle.unwrap_or(train.reshuffle_each_epoch);
        Settings { model, train }
    }
}

/// Supported data sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// MovieLens 100K.
    #[value(name = "ml-100k")]
    Ml100k,
    /// MovieLens 1M.
    #[value(name = "ml-1m")]
    Ml1m,
    /// A generic CSV directory: interactions.csv (user,item and optionally
    /// rating or label, timestamp), items.csv and users.csv when present
    /// (`recsys_trainer::interactions_csv`).
    Csv,
}

/// Optimizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// Adagrad (Keras defaults otherwise).
    Adagrad,
    /// Adam (Keras defaults otherwise).
    Adam,
}

/// Item identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ItemKey {
    /// The movie title, as TFRS's tutorial (1664 items in 100K).
    Title,
    /// The MovieLens movie id (1682 items in 100K).
    Id,
}

/// Trains the model `command` names.
pub fn run(command: TrainCommand) -> anyhow::Result<()> {
    match command {
        TrainCommand::Retrieval(args) => run_retrieval(*args),
        TrainCommand::Ranking(args) => crate::train_ranking::run(&args),
    }
}

/// Loads, splits, trains, evaluates, prints.
fn run_retrieval(args: TrainArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let seed = args.data.seed;
    // The export needs the items' own ids, so keep the data as loaded.
    let raw = load_raw(&args.data)?;
    let data = match args.item_key {
        ItemKey::Title => Cow::Owned(raw.keyed_by_title()),
        ItemKey::Id => Cow::Borrowed(&raw),
    };
    let mut split = random_split(&data.interactions, args.data.train_fraction, seed)?;
    let held_out = match args.validation_fraction {
        // The training set's own split; the test set is dropped unseen.
        Some(fraction) => {
            split = random_split(&split.train, 1.0 - fraction, seed)?;
            "validation"
        }
        None => "test",
    };
    let settings = args.settings();
    let model = TwoTower::new(settings.model, &data, seed)?;
    println!(
        "{} interactions ({} train, {} {held_out}), {} users, {} items, loaded in {:.2?}",
        data.interactions.len(),
        split.train.len(),
        split.test.len(),
        model.vocabularies().user_id.values().len(),
        model.catalog_len(),
        started.elapsed()
    );

    let config = settings.train;
    let training = Instant::now();
    let mut progress = Progress::new(config.epochs);
    recsys_trainer::train(&model, &split.train, &config, &mut |e| progress.on(e))?;
    let training = training.elapsed();

    let evaluation = Instant::now();
    let train_acc = factorized_top_k(&model, &split.train, &TFRS_KS, 4096)?;
    let test_acc = factorized_top_k(&model, &split.test, &TFRS_KS, 4096)?;
    // As the cluster serves: each user's training items left out.
    let unseen_acc = factorized_top_k_unseen(&model, &split.test, &split.train, &TFRS_KS, 4096)?;
    let evaluation = evaluation.elapsed();
    let popularity = popularity_top_k(&split.train, &split.test, &TFRS_KS);
    let popularity_unseen =
        popularity_top_k_unseen(&split.train, &split.test, &split.train, &TFRS_KS);
    print_table(&[
        ("train", &train_acc),
        (held_out, &test_acc),
        ("popularity", &popularity),
        ("test, seen left out", &unseen_acc),
        ("popularity, seen left out", &popularity_unseen),
    ]);

    if let Some(out) = &args.out {
        model
            .save(out)
            .with_context(|| format!("saving the model to {}", out.display()))?;
        println!("model written to {}", out.display());
    }
    if let Some(out) = &args.export.bundle_out {
        let path = args
            .data
            .data
            .canonicalize()
            .unwrap_or_else(|_| args.data.data.clone());
        let source = trained_source(&path);
        crate::train_export::export(&model, &raw, &source, &args.export, out)?;
    }
    println!(
        "training {:.2}s, evaluation {:.2}s, total {:.2}s",
        training.as_secs_f64(),
        evaluation.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The manifest's `source` of a bundle trained on `data`: `recsys demo --data`
/// reuses a bundle whose source matches.
pub fn trained_source(data: &std::path::Path) -> String {
    format!("trained on {}", data.display())
}

/// What `recsys demo --data` serves: the ranker trained with `recsys train
/// ranking` defaults, then the retrieval model with `recsys train retrieval`
/// defaults exported into `out` with that ranker attached.
pub fn train_for_demo(data: &std::path::Path, out: &std::path::Path) -> anyhow::Result<()> {
    // Parsed like a command line, so the defaults are the flags' own.
    #[derive(Debug, clap::Parser)]
    struct Train {
        #[command(subcommand)]
        model: TrainCommand,
    }
    let parse = |model: &str, extra: &[&std::ffi::OsStr]| -> anyhow::Result<TrainCommand> {
        let mut argv: Vec<&std::ffi::OsStr> = vec![
            "train".as_ref(),
            model.as_ref(),
            "--data".as_ref(),
            data.as_os_str(),
        ];
        argv.extend_from_slice(extra);
        Ok(<Train as clap::Parser>::try_parse_from(argv)?.model)
    };
    let mut ranker = out.as_os_str().to_owned();
    ranker.push("-ranker");
    println!("\n== the ranker (recsys train ranking)");
    run(parse("ranking", &["--out".as_ref(), &ranker])?)?;
    println!("\n== the retrieval model (recsys train retrieval), exported with the ranker");
    run(parse(
        "retrieval",
        &[
            "--bundle-out".as_ref(),
            out.as_os_str(),
            "--ranker".as_ref(),
            &ranker,
        ],
    )?)
}

/// The data set as the loader reads it, keyed by item id.
pub(crate) fn load_raw(args: &DataArgs) -> anyhow::Result<Dataset> {
    match args.format {
        Format::Ml100k => recsys_trainer::load_movielens_100k(&args.data),
        Format::Ml1m => recsys_trainer::load_movielens_1m(&args.data),
        Format::Csv => {
            let present = |name: &str| Some(args.data.join(name)).filter(|p| p.exists());
            recsys_trainer::load_interactions_csv(
                &args.data.join("interactions.csv"),
                present("items.csv").as_deref(),
                present("users.csv").as_deref(),
            )
        }
    }
    .with_context(|| format!("loading {}", args.data.display()))
}

/// `recsys train retrieval`'s progress: the batches' summed loss, then a line per epoch.
struct Progress(EpochBar);

impl Progress {
    fn new(epochs: usize) -> Self {
        Self(EpochBar::new(epochs))
    }

    fn on(&mut self, event: TrainEvent) {
        match event {
            TrainEvent::EpochStarted { epoch, steps } => self.0.start(epoch, steps),
            TrainEvent::Step { loss } => self.0.step(loss, |mean| format!("loss {mean:.1}")),
            TrainEvent::EpochFinished(report) => {
                self.0.finish();
                println!(
                    "epoch {}/{}: loss {:.1}, {}",
                    report.epoch + 1,
                    self.0.epochs(),
                    report.mean_batch_loss,
                    seconds(report.elapsed)
                );
            }
        }
    }
}

pub(crate) fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn print_table(rows: &[(&str, &TopKAccuracy)]) {
    print!("{:<34}", "factorized top-k");
    for k in TFRS_KS {
        print!("{:>9}", format!("top-{k}"));
    }
    println!();
    for (name, acc) in rows {
        print!("{:<34}", format!("{name} ({})", acc.count));
        for a in &acc.accuracy {
            print!("{a:>9.4}");
        }
        println!();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Train {
        #[command(subcommand)]
        model: TrainCommand,
    }

    fn parse(argv: &[&str]) -> Result<TrainCommand, clap::Error> {
        Train::try_parse_from(std::iter::once("train").chain(argv.iter().copied())).map(|t| t.model)
    }

    #[test]
    fn each_model_has_its_own_flags_and_the_shared_data_flags() {
        let TrainCommand::Retrieval(r) =
            parse(&["retrieval", "--data", "d", "--epochs", "2"]).unwrap()
        else {
            panic!("not retrieval");
        };
        assert_eq!((r.data.seed, r.data.train_fraction), (42, 0.8));
        assert_eq!(r.epochs, Some(2));
        assert_eq!(r.preset, Preset::Recsys);
        let TrainCommand::Ranking(k) = parse(&[
            "ranking", "--data", "d", "--preset", "tfrs-dcn", "--epochs", "3", "--seed", "7",
        ])
        .unwrap() else {
            panic!("not ranking");
        };
        assert_eq!(k.data.seed, 7);
        assert_eq!(k.epochs, Some(3));
        assert_eq!(k.preset, crate::train_ranking::Preset::TfrsDcn);
        // A flag of the other model is refused, not ignored.
        assert!(parse(&["ranking", "--data", "d", "--bundle-out", "b"]).is_err());
        assert!(parse(&["retrieval", "--data", "d", "--cross-layers", "2"]).is_err());
        // A model must be named.
        assert!(parse(&["--data", "d"]).is_err());
    }
}
