//! `recsys-bench filtered`: attribute-filtered search on GloVe-50 (issue 19).
//!
//! The 390k GloVe items get synthetic attributes of known selectivity: one
//! boolean column per share asked for, true for the rows whose seeded hash
//! falls below the share (independent of where the vector lies, so the
//! matching items are spread over the graph as a real category's would not
//! be: the hard case for a filtered graph search). Each selectivity is
//! measured against the exact filtered top-100 (brute force over the
//! matching items), block-alternated in one pass with the unfiltered search
//! (the peer of the QPS ratio) and the exact scan of the matching items with
//! their ids already listed (the peer at low selectivities), and with the
//! graph route forced, so the switch between the two can be read off.

use std::fmt::Write as _;

use clap::Args;
use recsys_bundle::attributes::ItemAttributes;
use recsys_bundle::filter::Filter;
use recsys_bundle::{IndexParams, Quantization};
use recsys_index::{
    AttributeFilter, LiveShard, POST_FILTER_SHARE, Route, SCAN_FACTOR, ShardAttributes,
};
use recsys_retrieval_node::{LoadMode, ShardIndex};

use crate::glove::Pass;
use crate::glove_split::{GloveSplit, K, glove_bundle, ground_truth_among};

/// Options of `recsys-bench filtered`.
#[derive(Debug, Clone, Args)]
pub struct FilteredArgs {
    #[command(flatten)]
    pub split: GloveSplit,
    /// Shares of the items that match, one filter each.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.1,0.01,0.001")]
    pub selectivity: Vec<f64>,
    /// Search beams to measure.
    #[arg(long, value_delimiter = ',', default_value = "128")]
    pub ef: Vec<usize>,
    /// Build no vector blocks (every scan reads the graph's copies).
    #[arg(long)]
    pub no_blocks: bool,
}

/// A seeded hash of a row in [0, 1): which shares it falls in.
fn unit_hash(row: u64, salt: u64) -> f64 {
    let mixed = xxhash_rust::xxh3::xxh3_64_with_seed(&row.to_le_bytes(), salt);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

/// The synthetic attributes: `s0` for the first share, `s1` for the next...
fn attributes(items: usize, shares: &[f64]) -> anyhow::Result<ItemAttributes> {
    let mut text = String::from("id");
    for column in 0..shares.len() {
        write!(text, "\ts{column}:boolean")?;
    }
    text.push('\n');
    for row in 0..items as u64 {
        write!(text, "{row}")?;
        for (column, share) in shares.iter().enumerate() {
            write!(text, "\t{}", unit_hash(row, column as u64) < *share)?;
        }
        text.push('\n');
    }
    Ok(ItemAttributes::parse(
        &text,
        std::path::Path::new("synthetic attributes"),
    )?)
}

/// Runs the measurement and prints one JSON line per selectivity and ef.
pub fn run(args: FilteredArgs) -> anyhow::Result<()> {
    let split = args.split.open()?;
    let (dim, items, queries) = (split.dim, split.items(), split.queries());
    for share in &args.selectivity {
        anyhow::ensure!(
            *share > 0.0 && *share <= 1.0,
            "--selectivity {share} is not in (0, 1]"
        );
    }
    let defaults = IndexParams::default();
    let (bundle, _) = glove_bundle(
        &args.split.work,
        items,
        dim,
        Quantization::F32,
        (defaults.connectivity, defaults.expansion_add),
        1,
        false,
    )?;
    let live = LiveShard::new(ShardIndex::open_with(&bundle, 0, LoadMode::Packed)?, 0)?;
    eprintln!("simd: {}", live.base().hardware_acceleration());
    let started = std::time::Instant::now();
    let shard_attributes = if args.no_blocks {
        ShardAttributes::without_blocks(attributes(args.split.items, &args.selectivity)?)
    } else {
        ShardAttributes::new(
            attributes(args.split.items, &args.selectivity)?,
            live.base(),
        )?
    };
    println!(
        "{}",
        serde_json::json!({"event": "attributes", "blocks": shard_attributes.blocks().len(),
            "block_items": shard_attributes.blocks().items(),
            "build_s": started.elapsed().as_secs_f64()})
    );
    // The unfiltered search's truth is the exact top-100 of every item (the
    // split's own, kept in the work directory).
    let every: Vec<u64> = (0..args.split.items as u64).collect();
    let truth_all = &split.truth;
    for (column, share) in args.selectivity.iter().enumerate() {
        let filter = Filter::parse(&format!("s{column} = true"))?;
        let filter = AttributeFilter::new(&shard_attributes, &filter)?;
        let matching: Vec<u64> = every
            .iter()
            .copied()
            .filter(|id| filter.matches(*id))
            .collect();
        let truth = ground_truth_among(items, queries, dim, &matching);
        let pass = Pass {
            queries,
            dim,
            truth: &truth,
        };
        for &ef in &args.ef {
            live.base().set_expansion_search(ef);
            live.set_expansion_search(ef);
            let (live, filter) = (&live, &filter);
            let route = |route: Route| {
                move |q: &[f32]| {
                    live.search_filtered_by(q, K, &[], route, filter)
                        .map(|a| a.hits)
                }
            };
            let chosen_route = live
                .search_filtered_by(&queries[..dim], K, &[], Route::Choose, filter)?
                .route;
            let unfiltered = |q: &[f32]| live.search(q, K, &[], false);
            let chosen = route(Route::Choose);
            let listed_scan = |q: &[f32]| live.search_among(q, K, &matching);
            // The unfiltered search, the route chosen and the listed scan, in
            // one rotation; the other routes alone, where they are not
            // hopeless (the graph at a thousandth walks the whole graph).
            let measured = pass.measure_rotating(&[&unfiltered, &chosen, &listed_scan])?;
            let [(_, plain), (recall, per_cpu), (_, scan_cpu)] =
                [measured[0], measured[1], measured[2]];
            let mut others = serde_json::Map::new();
            for other in [Route::PostFilter, Route::Graph, Route::Scan] {
                let hopeless = match other {
                    Route::PostFilter => *share < POST_FILTER_SHARE / 3.0,
                    Route::Graph => *share < 0.05,
                    _ => *share > 0.3,
                };
                if other == chosen_route || hopeless {
                    continue;
                }
                let search = route(other);
                let (other_recall, other_cpu) = pass.measure_rotating(&[&search])?[0];
                others.insert(
                    other.as_str().into(),
                    serde_json::json!({"recall_at_100": other_recall, "qps_per_cpu_second": other_cpu}),
                );
            }
            let unfiltered_recall = Pass {
                queries,
                dim,
                truth: truth_all,
            }
            .measure_rotating(&[&unfiltered])?[0]
                .0;
            println!(
                "{}",
                serde_json::json!({
                    "selectivity": share, "matching": matching.len(),
                    "estimated": filter.estimated_matches(), "ef": ef,
                    "route": chosen_route.as_str(), "scan_factor": SCAN_FACTOR,
                    "recall_at_100": recall, "qps_per_cpu_second": per_cpu,
                    "unfiltered_qps_per_cpu_second": plain,
                    "unfiltered_recall_at_100": unfiltered_recall,
                    "ratio_to_unfiltered": per_cpu / plain,
                    "listed_scan_qps_per_cpu_second": scan_cpu,
                    "ratio_to_listed_scan": per_cpu / scan_cpu,
                    "other_routes": others,
                })
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_synthetic_shares_are_close_to_the_ones_asked_for() {
        let attributes = super::attributes(20_000, &[0.5, 0.01]).unwrap();
        for (column, share) in [(0, 0.5), (1, 0.01)] {
            let filter =
                recsys_bundle::filter::Filter::parse(&format!("s{column} = true")).unwrap();
            let matches = attributes.estimate(&attributes.compile(&filter).unwrap());
            let measured = matches / 20_000.0;
            assert!(
                (measured - share).abs() < share * 0.2,
                "{share}: {measured}"
            );
        }
    }
}
