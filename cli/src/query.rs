//! `recsys query`: asks a gateway and prints a table.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use recsys_proto::v1::{
    Diversity, QueryEmbedding, RecommendOptions, RecommendRequest, RecommendResponse, SessionMode,
    SessionRequest, gateway_service_client::GatewayServiceClient, recommend_request::Query,
};

/// Options of `recsys query`.
#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pub gateway: crate::gateway_client::GatewayFlags,
    /// Recommend for this user (known to the bundle's query model).
    #[arg(long, conflicts_with = "vector")]
    pub user_id: Option<String>,
    /// Recommend for this query embedding: comma-separated floats.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "similar_to")]
    pub vector: Option<String>,
    /// Items like this one (its own vector is the query; it is left out). With
    /// --user-id, ranked for that user; alone, in retrieval order.
    #[arg(long)]
    pub similar_to: Option<u64>,
    /// Items to return.
    #[arg(long, short, default_value_t = 10)]
    pub k: u32,
    /// Candidates to retrieve before ranking (0: the gateway's default, 100
    /// unless it was started with --default-retrieve-k, when the answer is
    /// ranked; k when it is not).
    #[arg(long, default_value_t = 0)]
    pub retrieve_k: u32,
    /// Item ids never to return, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<u64>,
    /// Brute-force search instead of HNSW.
    #[arg(long)]
    pub exact: bool,
    /// The recall@k each shard's HNSW search aims for, in (0, 1] (default:
    /// the gateway's, 0.95): higher searches deeper and slower.
    #[arg(long)]
    pub recall_target: Option<f32>,
    /// Also return items the user already has (by default the gateway leaves
    /// out the user's interactions recorded in the bundle).
    #[arg(long)]
    pub include_seen: bool,
    /// Start a session: the answer carries a token (printed in hex) to pass
    /// to --session-token next time.
    #[arg(long)]
    pub session: bool,
    /// Continue a session with the token (hex) the last answer printed: its
    /// items and the new candidates compete in one top-k.
    #[arg(long, value_parser = parse_hex)]
    pub session_token: Option<Vec<u8>>,
    /// With --session-token: the next page instead (no shown item again).
    #[arg(long, requires = "session_token")]
    pub next_page: bool,
    /// At most N items of one value of an item attribute, as ATTRIBUTE=N
    /// (e.g. genre=2), picked in ranking order from more candidates.
    #[arg(long, value_parser = parse_cap)]
    pub max_per_value: Option<(String, u32)>,
    /// Only items whose attributes match, e.g.
    /// 'genre in ["Comedy", "Drama"] and year >= 1990' (operators `=`, `!=`,
    /// `<`, `<=`, `>`, `>=`, `in [...]`, not, and, or, parentheses). Applied
    /// inside each shard's search, so a selective filter still returns k items.
    #[arg(long)]
    pub filter: Option<String>,
    /// Maximal marginal relevance with this λ (0 to 1) on the item vectors:
    /// 1 is the ranking order, lower spreads the answer over unlike items.
    #[arg(long)]
    pub mmr_lambda: Option<f32>,
    /// Deadline in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// Runs the query and prints the answer.
pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let query = match (&args.user_id, &args.vector) {
        (Some(user), None) => Some(Query::UserId(user.clone())),
        (None, Some(vector)) => Some(Query::QueryEmbedding(QueryEmbedding {
            values: vector
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .context("--vector takes comma-separated numbers")?,
        })),
        (None, None) if args.similar_to.is_some() => None,
        _ => anyhow::bail!(
            "say who to recommend for: --user-id ID, --vector 0.1,0.2,... or --similar-to ITEM"
        ),
    };
    let request = RecommendRequest {
        query,
        similar_to_item_id: args.similar_to,
        k: args.k,
        retrieve_k: args.retrieve_k,
        exclude_item_ids: args.exclude.clone(),
        options: Some(RecommendOptions {
            exact: args.exact,
            include_seen: args.include_seen,
            recall_target: args.recall_target.unwrap_or(0.0),
            ..Default::default()
        }),
        filter_expression: args.filter.clone().unwrap_or_default(),
        diversity: (args.max_per_value.is_some() || args.mmr_lambda.is_some()).then(|| {
            let (attribute, max_per_value) = args.max_per_value.clone().unwrap_or_default();
            Diversity {
                attribute,
                max_per_value,
                mmr_lambda: args.mmr_lambda,
            }
        }),
        session: (args.session || args.session_token.is_some()).then(|| SessionRequest {
            token: args.session_token.clone().unwrap_or_default(),
            mode: if args.next_page {
                SessionMode::NextPage
            } else {
                SessionMode::Merge
            }
            .into(),
        }),
        ..Default::default()
    };
    let mut client = GatewayServiceClient::new(args.gateway.connect().await?);
    let mut grpc_request = args.gateway.request(request)?;
    grpc_request.set_timeout(Duration::from_millis(args.timeout_ms));
    let response = client
        .recommend(grpc_request)
        .await
        .map_err(crate::gateway_client::refused)?
        .into_inner();
    print_response(&response);
    Ok(())
}

/// `ATTRIBUTE=N` for --max-per-value.
fn parse_cap(text: &str) -> Result<(String, u32), String> {
    let (attribute, max) = text
        .split_once('=')
        .ok_or_else(|| "expected ATTRIBUTE=N, e.g. genre=2".to_string())?;
    let max = max.parse().map_err(|_| format!("{max:?} is not a count"))?;
    Ok((attribute.to_string(), max))
}

/// A session token as `recsys query` prints it.
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    recsys_gateway::hex::decode(text.trim()).ok_or_else(|| {
        "not a session token: expected an even number of hexadecimal digits".to_string()
    })
}

/// Prints items as a table, then coverage and timings.
pub fn print_response(response: &RecommendResponse) {
    println!(
        "{:>4}  {:>10}  {:>9}  {:>9}  {:>8}  name",
        "rank", "item_id", "ranking", "retrieval", "ret.rank"
    );
    for (rank, item) in response.items.iter().enumerate() {
        let ranking = item
            .ranking_score
            .map_or_else(|| "-".to_string(), |s| format!("{s:.4}"));
        let retrieval_rank = if item.from_session {
            "session".to_string()
        } else {
            (item.retrieval_rank + 1).to_string()
        };
        println!(
            "{:>4}  {:>10}  {:>9}  {:>9.4}  {:>8}  {}",
            rank + 1,
            item.item_id,
            ranking,
            item.retrieval_score,
            retrieval_rank,
            item.name
        );
    }
    if let Some(coverage) = &response.coverage {
        print!(
            "coverage: {}/{} shards, {} of {} items searched",
            coverage.shards_answered,
            coverage.shards_asked,
            coverage.items_searched,
            coverage.items_total
        );
        if coverage.degraded {
            print!(" (degraded:");
            for reason in &coverage.reasons {
                let stage = reason.stage_kind().name();
                print!(
                    " [{stage} shard {}: {}]",
                    reason.shard.unwrap_or_default(),
                    reason.reason
                );
            }
            print!(")");
        }
        if response.seen_excluded > 0 {
            print!(
                "; {} items the user already has left out (--include-seen to keep them)",
                response.seen_excluded
            );
        }
        println!();
    }
    if let Some(t) = &response.timings {
        println!(
            "timings: encode {} us, retrieval {} us, ranking {} us, total {} us; bundle {}, ranker {}",
            t.encode_us,
            t.retrieval_us,
            t.ranking_us,
            t.total_us,
            response.bundle_version,
            if response.ranked {
                response.model_version.as_str()
            } else {
                "none (retrieval order)"
            }
        );
    }
    if !response.diversity_note.is_empty() {
        println!("diversity: {}", response.diversity_note);
    }
    if !response.session_token.is_empty() {
        let hex = recsys_gateway::hex::encode(&response.session_token);
        println!(
            "session ({}; token {} bytes): --session-token {hex}",
            if response.session_note.is_empty() {
                "merged"
            } else {
                response.session_note.as_str()
            },
            response.session_token.len()
        );
    }
}
