//! Retrieval on GloVe-50 through [`ShardIndex::search`], the node's own search path.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use recsys_bundle::{IndexParams, Quantization};
use recsys_index::{Hit, ItemChange, LiveShard, SearchError};
use recsys_retrieval_node::{LoadMode, ShardIndex};

use crate::glove_split::{GloveSplit, K, glove_bundle, write_u32};

/// Options of `recsys-bench retrieval`.
#[derive(Debug, Clone, Args)]
pub struct RetrievalArgs {
    #[command(flatten)]
    pub split: GloveSplit,
    /// HNSW graph degree (default: the bundle builder's).
    #[arg(long, default_value_t = IndexParams::default().connectivity)]
    pub connectivity: usize,
    /// HNSW construction beam (default: the bundle builder's).
    #[arg(long, default_value_t = IndexParams::default().expansion_add)]
    pub expansion_add: usize,
    /// Stored scalar type.
    #[arg(long, default_value = "f32")]
    pub quantization: String,
    /// Search beams to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,128,144,160,200,256,320"
    )]
    pub ef: Vec<usize>,
    /// How the node opens the index (the node's default: packed).
    #[arg(long, value_enum, default_value_t = LoadMode::default())]
    pub mode: LoadMode,
    /// Measurement passes per ef (the first also warms the page cache).
    #[arg(long, default_value_t = 1)]
    pub passes: usize,
    /// Rebuild the index even if one with the same parameters exists.
    #[arg(long)]
    pub rebuild: bool,
    /// Also write the builder's locality order of the items (u32 rows, little
    /// endian) here, for giving hnswlib the same insertion order
    /// (`bench/hnswlib_glove.py --order`).
    #[arg(long)]
    pub write_order: Option<PathBuf>,
    /// After setting up, print `{"event":"ready"}` and measure one pass per ef
    /// read from stdin (one per line) until it closes, instead of `--ef`:
    /// `bench/interleave.py` alternates engines pass by pass this way.
    #[arg(long)]
    pub stdin: bool,
    /// Also measure a live shard (the retrieval node's base index plus a mutable
    /// part) in which this share of the items was upserted after the bundle was
    /// built (the same vectors, so the ground truth holds): each pass measures
    /// the packed-only shard and the live one alternately, block by block.
    #[arg(long)]
    pub live_fraction: Option<f64>,
    /// The live shard's state when measured: `folded` (the default), what a
    /// node serves once the change log has been quiet for a second (base and
    /// mutable part folded into one graph); `packed`, right after the log
    /// pauses (the mutable part packed beside the base); `changing`, changes
    /// that came after a fold (a tenth of them, in its tail); `unpacked`, what
    /// searches cost while changes keep coming and no fold was made.
    #[arg(long, value_enum, default_value_t = LiveState::Folded, requires = "live_fraction")]
    pub live_state: LiveState,
}

/// How far a live shard's upkeep got before it is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LiveState {
    /// The mutable part as the changes left it.
    Unpacked,
    /// The mutable part packed (`LiveShard::pack_delta`).
    Packed,
    /// Packed, then folded into a copy of the base (`LiveShard::fold`).
    Folded,
    /// Folded after nine tenths of the changes; the last tenth came after the
    /// fold (searched from its tail): what searches cost while changes keep
    /// coming once a node has folded.
    Changing,
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (nanoseconds on the
/// CPU first). On a machine shared with other jobs wall time mostly measures the
/// scheduler's share; queries per CPU-second is the per-core figure the issue asks for.
pub(crate) fn thread_cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat")?;
    let nanos = crate::stats::schedstat_nanos(&stat).context("schedstat is not a number")?;
    Ok(nanos as f64 * 1e-9)
}

/// Runs the benchmark and prints one JSON line per ef.
pub fn run(args: RetrievalArgs) -> anyhow::Result<()> {
    let split = args.split.open()?;
    let (dim, items, queries, truth) = (split.dim, split.items(), split.queries(), &split.truth);

    if let Some(path) = &args.write_order {
        let rows: Vec<usize> = (0..args.split.items).collect();
        let order = recsys_bundle_builder::locality::insertion_order(items, dim, &rows);
        write_u32(path, order.into_iter().map(|row| row as u32))?;
    }
    let quantization = Quantization::parse(&args.quantization)?;
    let (bundle, build_seconds) = glove_bundle(
        &args.split.work,
        items,
        dim,
        quantization,
        (args.connectivity, args.expansion_add),
        1,
        args.rebuild,
    )?;

    let started = Instant::now();
    let index = ShardIndex::open_with(&bundle, 0, args.mode)?;
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    let engine = if index.coded() {
        "recsys-coded"
    } else {
        "recsys-usearch"
    };
    eprintln!("simd: {}", index.hardware_acceleration());
    println!(
        "{}",
        serde_json::json!({"engine": engine, "event": "index", "items": args.split.items,
            "connectivity": args.connectivity, "expansion_add": args.expansion_add,
            "quantization": quantization.as_str(), "build_s": build_seconds, "open_ms": open_ms,
            "coded_bytes": index.coded_bytes()})
    );
    let efs: Box<dyn Iterator<Item = anyhow::Result<usize>>> = if args.stdin {
        println!(
            "{}",
            serde_json::json!({"engine": engine, "event": "ready"})
        );
        Box::new(std::io::stdin().lines().map(|line| {
            let line = line.context("reading an ef from stdin")?;
            line.trim()
                .parse()
                .with_context(|| format!("ef {line:?} is not a number"))
        }))
    } else {
        Box::new(
            args.ef
                .iter()
                .flat_map(|&ef| std::iter::repeat_n(ef, args.passes.max(1)))
                .map(Ok),
        )
    };
    let live = match args.live_fraction {
        Some(fraction) => Some(live_shard(
            &bundle,
            args.mode,
            items,
            dim,
            fraction,
            args.live_state,
        )?),
        None => None,
    };
    for ef in efs {
        let ef = ef?;
        index.set_expansion_search(ef);
        let pass = Pass {
            queries,
            dim,
            truth,
        };
        let Some(live) = &live else {
            let (recall, qps, per_cpu) =
                pass.measure(|query| index.search(query, K, &[], false))?;
            println!(
                "{}",
                serde_json::json!({"engine": engine, "ef": ef, "mode": format!("{:?}", args.mode),
                    "recall_at_100": recall, "qps_one_thread": qps, "qps_per_cpu_second": per_cpu})
            );
            continue;
        };
        live.base().set_expansion_search(ef);
        live.set_expansion_search(ef);
        let [(recall, per_cpu), (live_recall, live_per_cpu)] = pass.measure_alternating(
            |query| index.search(query, K, &[], false),
            |query| live.search(query, K, &[], false),
        )?;
        println!(
            "{}",
            serde_json::json!({"engine": "recsys-usearch", "ef": ef, "mode": format!("{:?}", args.mode),
                "recall_at_100": recall, "qps_per_cpu_second": per_cpu})
        );
        println!(
            "{}",
            serde_json::json!({"engine": "recsys-live", "ef": ef, "mode": format!("{:?}", args.mode),
                "live_fraction": args.live_fraction, "recall_at_100": live_recall,
                "qps_per_cpu_second": live_per_cpu,
                "qps_ratio_to_packed_only": live_per_cpu / per_cpu})
        );
        // Where a live search's time goes: each half on its own, then both
        // per query as the live search runs them but without the merge
        // (what alternating between the two indexes costs).
        for (half, halves) in [
            ("base without hidden", &[true][..]),
            ("mutable part", &[false]),
            ("both halves per query", &[true, false]),
        ] {
            let started = thread_cpu_seconds()?;
            for query in queries.chunks_exact(dim) {
                for &base in halves {
                    live.search_halves(query, K, base)?;
                }
            }
            let cpu = thread_cpu_seconds()? - started;
            println!(
                "{}",
                serde_json::json!({"engine": "recsys-live", "ef": ef, "half": half,
                    "qps_per_cpu_second": queries.len() as f64 / dim as f64 / cpu})
            );
        }
    }
    Ok(())
}

/// One search of a pass, as [`Pass::measure_alternating`] holds two.
pub(crate) type Search<'a> = dyn Fn(&[f32]) -> Result<Vec<Hit>, SearchError> + 'a;

/// Queries searched before a measurement starts, so that page faults of the
/// memory-mapped file are not timed.
const WARM_UP: usize = 200;

/// Queries per block of [`Pass::measure_alternating`]: about 20 ms of searching.
const BLOCK: usize = 50;

/// How many of `answers` are among the exact top-100 in `truth`, summed over queries.
fn recalled(answers: &[Vec<Hit>], truth: &[Vec<u32>]) -> usize {
    answers
        .iter()
        .zip(truth)
        .map(|(hits, truth)| {
            hits.iter()
                .filter(|(id, _)| truth.contains(&(*id as u32)))
                .count()
        })
        .sum()
}

/// One measurement pass over the held-out queries.
pub(crate) struct Pass<'a> {
    pub(crate) queries: &'a [f32],
    pub(crate) dim: usize,
    pub(crate) truth: &'a [Vec<u32>],
}

impl Pass<'_> {
    /// Recall@100 and queries per CPU-second of two searches over the same
    /// queries, alternated in blocks of [`BLOCK`] queries (which goes first swaps
    /// every block), with the CPU time of each block charged to its search.
    ///
    /// Why: a pass of one search after a pass of the other swung by ±25 % on a
    /// shared 2-vCPU VM within minutes (docs/benchmarks-history.md, "Live shard"), so the
    /// ratio of two whole passes was mostly the drift between them; blocks a few
    /// milliseconds long see the same machine.
    pub(crate) fn measure_alternating(
        &self,
        first: impl Fn(&[f32]) -> Result<Vec<Hit>, SearchError>,
        second: impl Fn(&[f32]) -> Result<Vec<Hit>, SearchError>,
    ) -> anyhow::Result<[(f64, f64); 2]> {
        let measured = self.measure_rotating(&[&first, &second])?;
        Ok([measured[0], measured[1]])
    }

    /// [`Self::measure_alternating`] of any number of searches: each block of
    /// queries runs every search, the first one rotating block by block.
    pub(crate) fn measure_rotating(
        &self,
        searches: &[&Search<'_>],
    ) -> anyhow::Result<Vec<(f64, f64)>> {
        for query in self.queries.chunks_exact(self.dim).take(WARM_UP) {
            for search in searches {
                search(query)?;
            }
        }
        let n = searches.len();
        let mut cpu = vec![0.0f64; n];
        let mut found = vec![0usize; n];
        let blocks = self
            .queries
            .chunks(BLOCK * self.dim)
            .zip(self.truth.chunks(BLOCK));
        for (block, (queries, truth)) in blocks.enumerate() {
            for turn in 0..n {
                let which = (block + turn) % n;
                let started = thread_cpu_seconds()?;
                let answers = queries
                    .chunks_exact(self.dim)
                    .map(searches[which])
                    .collect::<Result<Vec<_>, _>>()?;
                cpu[which] += thread_cpu_seconds()? - started;
                found[which] += recalled(&answers, truth);
            }
        }
        let count = self.truth.len() as f64;
        Ok((0..n)
            .map(|which| (found[which] as f64 / (count * K as f64), count / cpu[which]))
            .collect())
    }

    /// Recall@100, queries per second and queries per CPU-second of `search`.
    fn measure(
        &self,
        search: impl Fn(&[f32]) -> Result<Vec<Hit>, SearchError>,
    ) -> anyhow::Result<(f64, f64, f64)> {
        for query in self.queries.chunks_exact(self.dim).take(WARM_UP) {
            search(query)?;
        }
        let cpu_started = thread_cpu_seconds()?;
        let started = Instant::now();
        let answers = self
            .queries
            .chunks_exact(self.dim)
            .map(&search)
            .collect::<Result<Vec<_>, _>>()?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu_seconds = thread_cpu_seconds()? - cpu_started;
        let found = recalled(&answers, self.truth);
        let count = answers.len() as f64;
        Ok((
            found as f64 / (self.truth.len() * K) as f64,
            count / seconds,
            count / cpu_seconds,
        ))
    }
}

/// Opens the bundle's shard again as a live shard and upserts every item whose
/// row falls in the first `fraction` of a seeded shuffle, in batches of 1,000 (one
/// log entry each), reporting the rate; then packs and folds the mutable part
/// as `state` says, reporting how long each took.
fn live_shard(
    bundle: &Path,
    mode: LoadMode,
    items: &[f32],
    dim: usize,
    fraction: f64,
    state: LiveState,
) -> anyhow::Result<LiveShard> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    anyhow::ensure!(
        (0.0..=1.0).contains(&fraction),
        "--live-fraction {fraction} is not between 0 and 1"
    );
    let live = LiveShard::new(ShardIndex::open_with(bundle, 0, mode)?, 0)?;
    let mut rows: Vec<usize> = (0..items.len() / dim).collect();
    rows.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(17));
    rows.truncate((rows.len() as f64 * fraction).round() as usize);
    // `changing`: the last tenth of the changes comes after the fold.
    let after_fold = match state {
        LiveState::Changing => rows.len() / 10,
        _ => 0,
    };
    let (before, after) = rows.split_at(rows.len() - after_fold);
    let mut revision = 0u64;
    let mut upsert = |rows: &[usize]| -> anyhow::Result<f64> {
        let started = Instant::now();
        for batch in rows.chunks(1_000) {
            let changes: Vec<ItemChange> = batch
                .iter()
                .map(|&row| ItemChange::Upsert {
                    id: row as u64,
                    vector: items[row * dim..(row + 1) * dim].to_vec(),
                })
                .collect();
            revision += 1;
            live.apply(revision, &changes)?;
        }
        Ok(started.elapsed().as_secs_f64())
    };
    let seconds = upsert(before)?;
    // What a retrieval node does once the change log pauses, and once it has
    // been quiet for a second.
    let started = Instant::now();
    let packed = state != LiveState::Unpacked && live.pack_delta()?;
    let pack_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let folded = matches!(state, LiveState::Folded | LiveState::Changing) && live.fold(0)?;
    let fold_ms = started.elapsed().as_secs_f64() * 1e3;
    let tail_seconds = upsert(after)?;
    let stats = live.stats();
    println!(
        "{}",
        serde_json::json!({"engine": "recsys-live", "event": "upserted", "items": rows.len(),
            "seconds": seconds, "items_per_second": before.len() as f64 / seconds,
            "delta": stats.delta, "hidden": stats.hidden, "delta_packed": live.delta_packed(),
            "pack_ms": packed.then_some(pack_ms), "folded": live.folded(),
            "fold_ms": folded.then_some(fold_ms), "after_fold": after.len(),
            "after_fold_items_per_second": (!after.is_empty()).then(|| after.len() as f64 / tail_seconds)})
    );
    Ok(live)
}
