//! `recsys train`: trains the two-tower retrieval model on MovieLens and prints
//! TFRS's factorized top-k accuracies for the training and test sets.
//!
//! The defaults are TFRS's basic retrieval tutorial: movie titles as item ids,
//! ids only, 32 dimensions, batch 8192, Adagrad 0.1, 3 epochs, a random 80/20
//! split with seed 42 (our own shuffle; see `recsys_trainer::split`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use recsys_trainer::evaluate::TFRS_KS;
use recsys_trainer::in_batch_softmax::LossOptions;
use recsys_trainer::{
    Dataset, FeatureChoice, OptimizerChoice, TopKAccuracy, TrainConfig, TrainEvent, TwoTower,
    TwoTowerConfig, factorized_top_k, random_split,
};

/// Options of `recsys train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// The data directory (MovieLens 100K: u.data, u.user, u.item; 1M: ratings.dat, users.dat, movies.dat).
    #[arg(long, env = "RECSYS_TRAIN_DATA")]
    pub data: PathBuf,
    /// The data set's format.
    #[arg(long, value_enum, default_value_t = Format::Ml100k, env = "RECSYS_TRAIN_FORMAT")]
    pub format: Format,
    /// Passes over the training set.
    #[arg(long, default_value_t = 3, env = "RECSYS_TRAIN_EPOCHS")]
    pub epochs: usize,
    /// Interactions per batch (and in-batch candidates).
    #[arg(long, default_value_t = 8192, env = "RECSYS_TRAIN_BATCH_SIZE")]
    pub batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 0.1, env = "RECSYS_TRAIN_LR")]
    pub lr: f64,
    /// Embedding dimensions.
    #[arg(long, default_value_t = 32, env = "RECSYS_TRAIN_DIM")]
    pub dim: usize,
    /// Seeds the split, the initial weights and the batch order.
    #[arg(long, default_value_t = 42, env = "RECSYS_TRAIN_SEED")]
    pub seed: u64,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adagrad, env = "RECSYS_TRAIN_OPTIMIZER")]
    pub optimizer: OptimizerArg,
    /// What identifies an item: the title (TFRS's tutorial) or the MovieLens id.
    #[arg(long, value_enum, default_value_t = ItemKey::Title, env = "RECSYS_TRAIN_ITEM_KEY")]
    pub item_key: ItemKey,
    /// Add user features and title tokens, genres and year to the towers.
    #[arg(long, env = "RECSYS_TRAIN_FEATURES")]
    pub features: bool,
    /// Softmax temperature.
    #[arg(long, env = "RECSYS_TRAIN_TEMPERATURE")]
    pub temperature: Option<f32>,
    /// Correct logits by each candidate's training frequency (log-Q).
    #[arg(long, env = "RECSYS_TRAIN_LOG_Q")]
    pub log_q: bool,
    /// Mask in-batch negatives that are the positive item.
    #[arg(long, env = "RECSYS_TRAIN_REMOVE_ACCIDENTAL_HITS")]
    pub remove_accidental_hits: bool,
    /// Draw a new batch order every epoch (TFRS's tutorial keeps one).
    #[arg(long, env = "RECSYS_TRAIN_RESHUFFLE")]
    pub reshuffle: bool,
    /// Share of interactions used for training.
    #[arg(long, default_value_t = 0.8, env = "RECSYS_TRAIN_FRACTION")]
    pub train_fraction: f64,
    /// Write the trained model here (config.json, weights.safetensors, features.safetensors, vocab/).
    #[arg(long, env = "RECSYS_TRAIN_OUT")]
    pub out: Option<PathBuf>,
    /// What to train: the retrieval model or the DCN-V2 ranker.
    #[arg(long, value_enum, default_value_t = Task::Retrieval, env = "RECSYS_TRAIN_TASK")]
    pub task: Task,
    /// The ranker's flags (`--task ranking`).
    #[command(flatten)]
    pub ranking: crate::train_ranking::RankingArgs,
}

/// What `recsys train` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Task {
    /// The two-tower retrieval model.
    Retrieval,
    /// The DCN-V2 ranker on ratings (crate::train_ranking).
    Ranking,
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

/// Loads, splits, trains, evaluates, prints.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    if args.task == Task::Ranking {
        return crate::train_ranking::run(&args, &args.ranking);
    }
    let started = Instant::now();
    let data = load(&args)?;
    let split = random_split(&data.interactions, args.train_fraction, args.seed)?;
    let features = if args.features {
        FeatureChoice::ALL
    } else {
        FeatureChoice::IDS_ONLY
    };
    let model = TwoTower::new(
        TwoTowerConfig {
            dim: args.dim,
            features,
        },
        &data,
        args.seed,
    )?;
    println!(
        "{} interactions ({} train, {} test), {} users, {} items, loaded in {:.2?}",
        data.interactions.len(),
        split.train.len(),
        split.test.len(),
        model.vocabularies().user_id.values().len(),
        model.catalog_len(),
        started.elapsed()
    );

    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        seed: args.seed,
        optimizer: match args.optimizer {
            OptimizerArg::Adagrad => OptimizerChoice::Adagrad {
                learning_rate: args.lr,
            },
            OptimizerArg::Adam => OptimizerChoice::Adam {
                learning_rate: args.lr,
            },
        },
        loss: LossOptions {
            temperature: args.temperature,
            remove_accidental_hits: args.remove_accidental_hits,
        },
        log_q_correction: args.log_q,
        reshuffle_each_epoch: args.reshuffle,
    };
    let training = Instant::now();
    let mut progress = Progress::new(args.epochs);
    recsys_trainer::train(&model, &split.train, &config, &mut |e| progress.on(e))?;
    let training = training.elapsed();

    let evaluation = Instant::now();
    let train_acc = factorized_top_k(&model, &split.train, &TFRS_KS, 4096)?;
    let test_acc = factorized_top_k(&model, &split.test, &TFRS_KS, 4096)?;
    let evaluation = evaluation.elapsed();
    print_table(&[("train", &train_acc), ("test", &test_acc)]);

    if let Some(out) = &args.out {
        model
            .save(out)
            .with_context(|| format!("saving the model to {}", out.display()))?;
        println!("model written to {}", out.display());
    }
    println!(
        "training {:.2}s, evaluation {:.2}s, total {:.2}s",
        training.as_secs_f64(),
        evaluation.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn load(args: &TrainArgs) -> anyhow::Result<Dataset> {
    let data = match args.format {
        Format::Ml100k => recsys_trainer::load_movielens_100k(&args.data),
        Format::Ml1m => recsys_trainer::load_movielens_1m(&args.data),
    }
    .with_context(|| format!("loading {}", args.data.display()))?;
    Ok(match args.item_key {
        ItemKey::Title => data.keyed_by_title(),
        ItemKey::Id => data,
    })
}

/// One bar per epoch: batches done, the running mean loss, time.
struct Progress {
    epochs: usize,
    bar: Option<ProgressBar>,
    losses: (f64, usize),
}

impl Progress {
    fn new(epochs: usize) -> Self {
        Self {
            epochs,
            bar: None,
            losses: (0.0, 0),
        }
    }

    fn on(&mut self, event: TrainEvent) {
        match event {
            TrainEvent::EpochStarted { epoch, steps } => {
                let bar = ProgressBar::new(steps as u64);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix} [{bar:30}] {pos}/{len} batches {msg} ({elapsed_precise})",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_prefix(format!("epoch {}/{}", epoch + 1, self.epochs));
                self.bar = Some(bar);
                self.losses = (0.0, 0);
            }
            TrainEvent::Step { loss } => {
                self.losses.0 += f64::from(loss);
                self.losses.1 += 1;
                if let Some(bar) = &self.bar {
                    bar.set_message(format!("loss {:.1}", self.losses.0 / self.losses.1 as f64));
                    bar.inc(1);
                }
            }
            TrainEvent::EpochFinished(report) => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                println!(
                    "epoch {}/{}: loss {:.1}, {}",
                    report.epoch + 1,
                    self.epochs,
                    report.mean_batch_loss,
                    seconds(report.elapsed)
                );
            }
        }
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn print_table(rows: &[(&str, &TopKAccuracy)]) {
    print!("{:<16}", "factorized top-k");
    for k in TFRS_KS {
        print!("{:>9}", format!("top-{k}"));
    }
    println!();
    for (name, acc) in rows {
        print!("{:<16}", format!("{name} ({})", acc.count));
        for a in &acc.accuracy {
            print!("{a:>9.4}");
        }
        println!();
    }
}
