//! Session tokens through real gateways (issue 19, part 4): a session started
//! at one gateway goes on at another that holds the same key file; a merge
//! keeps what is still among the best, a next page never repeats an item,
//! and forged, foreign and cross-version tokens are refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use recsys_gateway::GatewayConfig;
use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_proto::v1::{RecommendRequest, RecommendResponse, SessionMode, SessionRequest};
use recsys_tests::static_gateway::{gateway_config, serve_static_gateway};
use recsys_tests::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sessions");
        shared_bundle(&root, 5_000, 2, 41)
    })
}

fn with_session(user: &str, k: u32, token: &[u8], mode: SessionMode) -> RecommendRequest {
    RecommendRequest {
        session: Some(SessionRequest {
            token: token.to_vec(),
            mode: mode.into(),
        }),
        ..ranked(user, k, 0)
    }
}

async fn ask(
    addr: std::net::SocketAddr,
    request: RecommendRequest,
) -> Result<RecommendResponse, tonic::Status> {
    let mut client = gateway_client(addr).await;
    recommend(&mut client, request, Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_goes_on_at_any_gateway_with_the_key() {
    let bundle = bundle();
    let cluster = LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap();
    let shards: Vec<Vec<_>> = (0..2)
        .map(|shard| vec![cluster.node_addr(shard, 0).unwrap()])
        .collect();
    let ranking = vec![cluster.ranking_addr(0).unwrap()];
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "1 00112233445566778899aabbccddeeff\n").unwrap();
    let token = CancellationToken::new();
    let config = || GatewayConfig {
        security: recsys_gateway::GatewaySecurity {
            session_keys: Some(keys.path().to_path_buf()),
            ..Default::default()
        },
        ..gateway_config(bundle.path())
    };
    let one = serve_static_gateway(config(), &shards, &ranking, &token).await;
    let two = serve_static_gateway(config(), &shards, &ranking, &token).await;
    let user = bundle.catalog.users.ids()[0].clone();

    // Page one at the first gateway.
    let first = ask(one, with_session(&user, 10, &[], SessionMode::Merge))
        .await
        .unwrap();
    assert!(first.ranked);
    assert_eq!(first.session_note, "a new session");
    assert!(!first.session_token.is_empty());
    let shown: Vec<u64> = ids(&first);

    // The same query merged at the second gateway: nothing better came, so
    // the same items in the same order.
    let merged = ask(
        two,
        with_session(&user, 10, &first.session_token, SessionMode::Merge),
    )
    .await
    .unwrap();
    assert_eq!(ids(&merged), shown, "{}", merged.session_note);
    assert_eq!(merged.session_note, "");

    // Next pages never repeat an item, and stay ranked.
    let mut seen: HashSet<u64> = shown.iter().copied().collect();
    let mut token_bytes = merged.session_token;
    for page in 2..=4 {
        let next = ask(
            if page % 2 == 0 { one } else { two },
            with_session(&user, 10, &token_bytes, SessionMode::NextPage),
        )
        .await
        .unwrap();
        assert_eq!(next.items.len(), 10);
        assert!(next.ranked);
        for id in ids(&next) {
            assert!(seen.insert(id), "page {page} repeats {id}");
        }
        token_bytes = next.session_token;
    }

    // A token of 100 items, as the issue measures it.
    let hundred = ask(one, with_session(&user, 100, &[], SessionMode::Merge))
        .await
        .unwrap();
    assert!(
        hundred.session_token.len() <= 2048,
        "{} bytes",
        hundred.session_token.len()
    );

    // Forged, another user's, and from another gateway key: refused by name.
    let mut forged = first.session_token.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x40;
    let other = bundle.catalog.users.ids()[1].clone();
    for (request, words) in [
        (
            with_session(&user, 10, &forged, SessionMode::Merge),
            "bad signature",
        ),
        (
            with_session(&other, 10, &first.session_token, SessionMode::Merge),
            "another query",
        ),
    ] {
        let status = ask(two, request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("session.token") && status.message().contains(words),
            "{}",
            status.message()
        );
    }
    // The cluster's own gateway signs with a random key of its own.
    let status = ask(
        cluster.gateway_addr,
        with_session(&user, 10, &first.session_token, SessionMode::Merge),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("key 1"), "{}", status.message());
    token.cancel();
    cluster.shutdown().await.unwrap();
}
