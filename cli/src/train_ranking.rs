//! `recsys train ranking`: trains the DCN-V2 ranker on MovieLens ratings from a
//! preset (`--preset recsys`, the default; `tfrs-dcn`; `tfrs-basic-ranking`),
//! prints per-epoch and final RMSE, and with `--out` writes the ranker layout
//! that `recsys bundle --ranker DIR` puts into a bundle. `--objective click`
//! trains it on clicks instead (`recsys_trainer::click`): AUC, log loss and
//! calibration beside the popularity baseline, a probability served.
//!
//! The other flags override single settings of the preset; the data, format,
//! seed and split fraction are the flags both models share
//! ([`crate::train::DataArgs`]). The variables keep their `RECSYS_TRAIN_RANKER_`
//! prefix: unlike flags, they have no subcommand to tell the two models apart.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use recsys_trainer::click::{self, Objective};
use recsys_trainer::{
    RankingEvent, RankingFeature, RankingModel, RankingOptimizer, RankingPreset, TrainedHead,
    predict_interactions, random_split, ranking_metric, train_ranking,
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
    /// What the ranker predicts: `rating` (MSE, RMSE) or `click` (every rating
    /// a click, `--negatives` unrated movies per click as non-clicks; binary
    /// cross-entropy; AUC, log loss and calibration against popularity; the
    /// served score is the click probability). Both, `rating,click`: one
    /// network with a head each, trained on the weighted sum of their losses
    /// (`--loss-weights`), served ordered by the weighted sum of their scores
    /// (`--head-weights`), each head evaluated as its own model would be.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "rating",
        env = "RECSYS_TRAIN_RANKER_OBJECTIVE"
    )]
    pub objective: Vec<ObjectiveArg>,
    /// With several objectives: each one's loss weight, in `--objective`
    /// order (default 1 for rating, 3 for click: the single models' validation
    /// MSE is about three times their log loss, and equal weights let the
    /// rating loss steer the shared network; docs/quality.md).
    #[arg(long, value_delimiter = ',', env = "RECSYS_TRAIN_RANKER_LOSS_WEIGHTS")]
    pub loss_weights: Option<Vec<f64>>,
    /// With several objectives: each head's weight in the served combined
    /// score, in `--objective` order (default 0.2 for rating, which puts 5
    /// stars at 1, and 1 for click); requests may override them.
    #[arg(long, value_delimiter = ',', env = "RECSYS_TRAIN_RANKER_HEAD_WEIGHTS")]
    pub head_weights: Option<Vec<f64>>,
    /// With `--objective click`: non-clicks sampled per click, seeded (0: the
    /// data's own labels, which must be 0 or 1, e.g. a CSV's label column).
    #[arg(long, default_value_t = 4, env = "RECSYS_TRAIN_RANKER_NEGATIVES")]
    pub negatives: usize,
    /// With `--objective click`: learn from what the cluster showed instead of
    /// sampled negatives: the gateway's impression log (`--impression-log`
    /// directory) joined with `--events`, every item shown a click when the
    /// user clicked it afterwards, else a non-click. `--data` still gives the
    /// users' and items' features.
    #[arg(long, requires = "events", env = "RECSYS_TRAIN_RANKER_IMPRESSIONS")]
    pub impressions: Option<PathBuf>,
    /// With `--impressions`: a CSV of `user,item,time,event` (time in seconds
    /// since the epoch) of what users did after they were shown items.
    #[arg(long, requires = "impressions", env = "RECSYS_TRAIN_RANKER_EVENTS")]
    pub events: Option<PathBuf>,
    /// With `--impressions`: the events that count as a click, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "click",
        env = "RECSYS_TRAIN_RANKER_CLICK_EVENTS"
    )]
    pub click_events: Vec<String>,
    /// With `--impressions`: how long after an impression a click still
    /// counts, in hours.
    #[arg(
        long,
        default_value_t = 24.0,
        env = "RECSYS_TRAIN_RANKER_CLICK_WINDOW_H"
    )]
    pub click_window_h: f64,
    /// With `--objective click`: also train the preset as a rating model on
    /// the rated training split and report the AUC of its predicted ratings
    /// used as click scores (a second training run).
    #[arg(long, env = "RECSYS_TRAIN_RANKER_RATING_BASELINE")]
    pub rating_baseline: bool,
}

/// `--objective`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObjectiveArg {
    /// Star ratings.
    Rating,
    /// Clicks (implicit feedback).
    Click,
}

impl ObjectiveArg {
    fn objective(self) -> Objective {
        match self {
            Self::Rating => Objective::Rating,
            Self::Click => Objective::Click,
        }
    }
}

/// The heads of `--objective a,b` with their weights; none for one objective.
fn heads(r: &RankingArgs) -> anyhow::Result<Vec<TrainedHead>> {
    if r.objective.len() < 2 {
        anyhow::ensure!(
            r.loss_weights.is_none() && r.head_weights.is_none(),
            "--loss-weights and --head-weights need several objectives (--objective rating,click)"
        );
        return Ok(Vec::new());
    }
    let n = r.objective.len();
    let loss_weights = r.loss_weights.clone().unwrap_or_else(|| {
        r.objective
            .iter()
            .map(|o| match o {
                ObjectiveArg::Rating => 1.0,
                ObjectiveArg::Click => 3.0,
            })
            .collect()
    });
    let head_weights = r.head_weights.clone().unwrap_or_else(|| {
        r.objective
            .iter()
            .map(|o| match o {
                ObjectiveArg::Rating => 0.2,
                ObjectiveArg::Click => 1.0,
            })
            .collect()
    });
    anyhow::ensure!(
        loss_weights.len() == n && head_weights.len() == n,
        "--loss-weights and --head-weights take one weight per objective ({n})"
    );
    Ok(r.objective
        .iter()
        .zip(loss_weights.into_iter().zip(head_weights))
        .map(|(o, (loss_weight, weight))| TrainedHead {
            objective: o.objective(),
            loss_weight,
            weight,
        })
        .collect())
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
    m.heads = heads(r)?;
    m.objective = r
        .objective
        .first()
        .map_or(Objective::Rating, |o| o.objective());
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
    let mut data = load_raw(&r.data)?;
    if let (Some(log), Some(events)) = (&r.impressions, &r.events) {
        data.interactions = labelled_impressions(r, log, events)?;
    }
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
    let objective = preset.model.objective;
    let multi = !preset.model.heads.is_empty();
    let rated_train =
        (objective == Objective::Click && r.rating_baseline).then(|| split.train.clone());
    let (train, test) = match objective {
        _ if multi => multi_objective_examples(&data, split.train, split.test, r.negatives, seed)?,
        Objective::Rating => (split.train, split.test),
        // The log's impressions are labelled already: no sampled negatives.
        Objective::Click if r.impressions.is_some() => (split.train, split.test),
        Objective::Click => click_examples(&data, split.train, split.test, r.negatives, seed)?,
    };
    let training = Instant::now();
    let mut progress = Progress::new(preset.train.epochs, &model);
    let report = train_ranking(&model, &train, &preset.train, &mut |e| progress.on(e))?;
    let training = training.elapsed();
    if report.validated_on > 0 {
        println!(
            "kept epoch {} of {} (best validation {} on {} held-out training examples)",
            report.best_epoch + 1,
            report.epochs.len(),
            model.metric_name(),
            report.validated_on
        );
    }
    let evaluation = Instant::now();
    match objective {
        _ if multi => crate::train_heads::print_evaluation(&model, &train, &test)?,
        Objective::Rating => {
            let train_rmse = ranking_metric(&model, &train, 8192)?;
            let test_rmse = ranking_metric(&model, &test, 8192)?;
            println!("RMSE train {train_rmse:.4} test {test_rmse:.4}");
        }
        Objective::Click => print_click_evaluation(&model, &train, &test)?,
    }
    let evaluation = evaluation.elapsed();
    if let Some(rated) = rated_train {
        rating_baseline(&preset, &data, &rated, &test, seed)?;
    }
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

/// Training and test examples.
type Examples = (
    Vec<recsys_trainer::Interaction>,
    Vec<recsys_trainer::Interaction>,
);

/// Click examples: every rating of each split a click, with `negatives`
/// sampled non-clicks per click (distinct seeded streams for the two splits,
/// never an item the user rated anywhere); with 0, the data's own 0/1 labels.
fn click_examples(
    data: &recsys_trainer::Dataset,
    train: Vec<recsys_trainer::Interaction>,
    test: Vec<recsys_trainer::Interaction>,
    negatives: usize,
    seed: u64,
) -> anyhow::Result<Examples> {
    if negatives == 0 {
        click::labels(&train).context("--negatives 0 takes the data's labels")?;
        click::labels(&test).context("--negatives 0 takes the data's labels")?;
        return Ok((train, test));
    }
    let (seen, catalog) = seen_and_catalog(data);
    let train = click::with_sampled_negatives(&train, &seen, &catalog, negatives, seed, 10)?;
    let test = click::with_sampled_negatives(&test, &seen, &catalog, negatives, seed, 11)?;
    println!(
        "click examples: {} train, {} test ({negatives} sampled non-clicks per click)",
        train.len(),
        test.len()
    );
    Ok((train, test))
}

/// The impressions in the log directory `log`, labelled by the clicks in
/// `events` (`recsys_trainer::impressions`).
fn labelled_impressions(
    r: &RankingArgs,
    log: &std::path::Path,
    events: &std::path::Path,
) -> anyhow::Result<Vec<recsys_trainer::Interaction>> {
    use recsys_trainer::impressions::{label_impressions, read_events, read_impressions};
    anyhow::ensure!(
        r.objective.len() == 1 && r.objective[0] == ObjectiveArg::Click,
        "--impressions trains a click ranker: use it with --objective click"
    );
    anyhow::ensure!(
        r.click_window_h.is_finite() && r.click_window_h > 0.0,
        "--click-window-h must be a positive number of hours"
    );
    let shown = read_impressions(log)?;
    let events = read_events(events)?;
    let window_ms = (r.click_window_h * 3_600_000.0) as u64;
    let labelled = label_impressions(&shown, &events, &r.click_events, window_ms);
    let clicks = labelled.iter().filter(|i| i.rating == Some(1.0)).count();
    println!(
        "impressions: {} items shown, {clicks} clicked ({:.1} %), from {}",
        labelled.len(),
        100.0 * clicks as f64 / labelled.len().max(1) as f64,
        log.display()
    );
    Ok(labelled)
}

/// Multi-objective examples: every rating of each split a click that keeps
/// its stars, with `negatives` sampled unrated non-clicks per click (the
/// very ones [`click_examples`] draws, so the heads meet the single-objective
/// models on the same test set).
fn multi_objective_examples(
    data: &recsys_trainer::Dataset,
    train: Vec<recsys_trainer::Interaction>,
    test: Vec<recsys_trainer::Interaction>,
    negatives: usize,
    seed: u64,
) -> anyhow::Result<Examples> {
    anyhow::ensure!(
        negatives > 0,
        "several objectives learn clicks from sampled non-clicks: --negatives must be at least 1"
    );
    let (seen, catalog) = seen_and_catalog(data);
    let with_negatives = |split: Vec<recsys_trainer::Interaction>, stream| {
        let drawn = click::sampled_negatives(&split, &seen, &catalog, negatives, seed, stream)?;
        anyhow::ensure!(
            split.iter().all(|i| i.rating.is_some()),
            "several objectives need a rating for every interaction of the data"
        );
        Ok::<_, anyhow::Error>(split.into_iter().chain(drawn).collect::<Vec<_>>())
    };
    let train = with_negatives(train, 10)?;
    let test = with_negatives(test, 11)?;
    println!(
        "rated clicks and non-clicks: {} train, {} test ({negatives} sampled non-clicks per click)",
        train.len(),
        test.len()
    );
    Ok((train, test))
}

/// Who rated what, and the items to draw non-clicks from (the catalog, or
/// every rated item when the data has no item list).
fn seen_and_catalog(
    data: &recsys_trainer::Dataset,
) -> (
    std::collections::HashMap<String, std::collections::HashSet<String>>,
    Vec<String>,
) {
    let seen = click::seen_by_user(&data.interactions);
    let mut catalog: Vec<String> = data.items.iter().map(|item| item.id.clone()).collect();
    if catalog.is_empty() {
        catalog = seen.values().flatten().cloned().collect();
        catalog.sort_unstable();
        catalog.dedup();
    }
    (seen, catalog)
}

/// AUC, log loss and calibration on the test split, the model beside the
/// popularity baseline (each item's smoothed click rate in training).
fn print_click_evaluation(
    model: &RankingModel,
    train: &[recsys_trainer::Interaction],
    test: &[recsys_trainer::Interaction],
) -> anyhow::Result<()> {
    let labels = click::labels(test)?;
    let model_metrics = click::click_metrics(&predict_interactions(model, test, 8192)?, &labels)?;
    let popularity = click::click_metrics(&click::popularity_probabilities(train, test), &labels)?;
    for (name, m) in [("model", &model_metrics), ("popularity", &popularity)] {
        println!(
            "{name:>10}: test AUC {:.4}, log loss {:.4}, mean predicted {:.4} against an observed click rate of {:.4}",
            m.auc, m.log_loss, m.mean_predicted, m.observed_rate
        );
    }
    let buckets: Vec<String> = model_metrics
        .calibration
        .iter()
        .map(|(predicted, observed, _)| format!("{predicted:.3}/{observed:.3}"))
        .collect();
    println!(
        "calibration (predicted/observed by decile of the model's score): {}",
        buckets.join(" ")
    );
    Ok(())
}

/// The same preset trained on the rated training split as a rating model, its
/// predicted ratings used as click scores on the click test set: the AUC a
/// team gets by reusing the rating ranker for clicks.
fn rating_baseline(
    preset: &RankingPreset,
    data: &recsys_trainer::Dataset,
    rated: &[recsys_trainer::Interaction],
    test: &[recsys_trainer::Interaction],
    seed: u64,
) -> anyhow::Result<()> {
    let mut config = preset.model.clone();
    config.objective = Objective::Rating;
    let model = RankingModel::new(config, data, seed)?;
    let started = Instant::now();
    println!("training the rating model for the baseline");
    let mut progress = Progress::new(preset.train.epochs, &model);
    train_ranking(&model, rated, &preset.train, &mut |e| progress.on(e))?;
    let scores = predict_interactions(&model, test, 8192)?;
    let m = click::click_metrics(&scores, &click::labels(test)?)?;
    println!(
        "rating model as click score: test AUC {:.4} (trained in {:.1}s)",
        m.auc,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The ranker's progress: the running loss and metric per batch, then a line per epoch.
struct Progress<'a>(EpochBar, &'a RankingModel);

impl<'a> Progress<'a> {
    fn new(epochs: usize, model: &'a RankingModel) -> Self {
        Self(EpochBar::new(epochs), model)
    }

    fn on(&mut self, event: RankingEvent) {
        let model = self.1;
        let name = model.metric_name();
        match event {
            RankingEvent::EpochStarted { epoch, steps } => self.0.start(epoch, steps),
            RankingEvent::Step { loss } => self.0.step(loss, |mean| {
                format!("loss {mean:.4} {name} {:.4}", model.metric_of_loss(mean))
            }),
            RankingEvent::EpochFinished(report) => {
                self.0.finish();
                let validation = report
                    .validation_metric
                    .map(|v| format!(", validation {name} {v:.4}"))
                    .unwrap_or_default();
                println!(
                    "epoch {}/{}: train {name} {:.4}{validation}, {}",
                    report.epoch + 1,
                    self.0.epochs(),
                    report.train_metric,
                    seconds(report.elapsed)
                );
            }
        }
    }
}
