#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use recsys_proto::v1::{SessionMode, SessionRequest};

use super::*;

const SECRET_A: &str = "00112233445566778899aabbccddeeff";
const SECRET_B: &str = "ffeeddccbbaa99887766554433221100";

fn keyring(text: &str) -> SessionKeyring {
    SessionKeyring::new(
        Arc::new(ArcSwap::from_pointee(SessionKeys::parse(text).unwrap())),
        Duration::from_secs(600),
    )
}

fn request(user: &str, token: Vec<u8>, mode: SessionMode) -> RecommendRequest {
    RecommendRequest {
        query: Some(Query::UserId(user.into())),
        k: 3,
        session: Some(SessionRequest {
            token,
            mode: mode.into(),
        }),
        ..Default::default()
    }
}

/// A token for `user` from `answer` on bundle "v1".
fn token(ring: &SessionKeyring, user: &str, answer: &[(u64, f32)]) -> Vec<u8> {
    let plan = SessionPlan::open(&request(user, Vec::new(), SessionMode::Merge), ring, "v1")
        .unwrap()
        .unwrap();
    let (_, token, note) = plan.finish(answer, true, answer.len(), |_| false);
    assert_eq!(note, "a new session");
    token
}

/// TFRS's `Streaming` reduce over every batch at once: the k best of the
/// concatenation, each id at its best score (ties by the smaller id).
fn reference(batches: &[Vec<(u64, f32)>], k: usize) -> Vec<(u64, f32)> {
    let mut best: std::collections::BTreeMap<u64, f32> = Default::default();
    for (id, score) in batches.iter().flatten() {
        let entry = best.entry(*id).or_insert(*score);
        *entry = entry.max(*score);
    }
    let mut all: Vec<(u64, f32)> = best.into_iter().collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(k);
    all
}

proptest! {
    /// Merging batch after batch into the running top-k gives the top-k of
    /// all of them, as TFRS's streaming reduce does.
    #[test]
    fn streaming_merges_equal_the_top_k_of_everything(
        batches in prop::collection::vec(
            prop::collection::vec((0u64..60, -100i32..100), 0..30), 1..8),
        k in 1usize..20,
    ) {
        let batches: Vec<Vec<(u64, f32)>> = batches
            .into_iter()
            .map(|batch| batch.into_iter().map(|(id, s)| (id, s as f32 / 8.0)).collect())
            .collect();
        let mut state: Vec<(u64, f32)> = Vec::new();
        for batch in &batches {
            state = merge_top_k(&state, batch, k)
                .into_iter()
                .map(|(id, score, _)| (id, score))
                .collect();
        }
        prop_assert_eq!(state, reference(&batches, k));
    }

    /// Any bytes are refused or accepted without a panic, and nothing but a
    /// token this keyring signed is accepted.
    #[test]
    fn random_tokens_are_refused(bytes in prop::collection::vec(any::<u8>(), 1..200)) {
        let ring = keyring(&format!("1 {SECRET_A}"));
        let opened = SessionPlan::open(&request("u", bytes, SessionMode::Merge), &ring, "v1");
        prop_assert!(opened.is_err());
    }
}

#[test]
fn a_shown_item_is_replaced_only_by_a_better_one() {
    let ring = keyring(&format!("1 {SECRET_A}"));
    let first = token(&ring, "u", &[(1, 0.9), (2, 0.8), (3, 0.7)]);
    let plan = SessionPlan::open(&request("u", first, SessionMode::Merge), &ring, "v1")
        .unwrap()
        .unwrap();
    assert_eq!(plan.shown.as_ref().unwrap().items.len(), 3);
    // A new answer with one better item, one worse, and item 2 scored again.
    let (items, next, note) = plan.finish(&[(4, 0.85), (2, 0.8), (5, 0.1)], true, 3, |_| false);
    assert_eq!(note, "");
    assert_eq!(
        items,
        vec![(1, 0.9, true), (4, 0.85, false), (2, 0.8, false)]
    );
    // The next token remembers what was shown now.
    let plan = SessionPlan::open(&request("u", next, SessionMode::Merge), &ring, "v1")
        .unwrap()
        .unwrap();
    assert_eq!(
        plan.shown.unwrap().items,
        vec![(1, 0.9), (4, 0.85), (2, 0.8)]
    );
}

#[test]
fn a_next_page_excludes_and_remembers_every_page() {
    let ring = keyring(&format!("1 {SECRET_A}"));
    let first = token(&ring, "u", &[(1, 0.9), (2, 0.8)]);
    let plan = SessionPlan::open(&request("u", first, SessionMode::NextPage), &ring, "v1")
        .unwrap()
        .unwrap();
    let excluded: Vec<u64> = plan.excluded_ids().iter().map(|(id, _)| *id).collect();
    assert_eq!(excluded, vec![1, 2]);
    let (items, next, _) = plan.finish(&[(3, 0.5), (4, 0.4)], true, 2, |_| false);
    assert_eq!(items, vec![(3, 0.5, false), (4, 0.4, false)]);
    let plan = SessionPlan::open(&request("u", next, SessionMode::NextPage), &ring, "v1")
        .unwrap()
        .unwrap();
    let excluded: Vec<u64> = plan.excluded_ids().iter().map(|(id, _)| *id).collect();
    assert_eq!(excluded, vec![1, 2, 3, 4]);
}

#[test]
fn deleted_and_excluded_items_are_not_kept_from_the_session() {
    let ring = keyring(&format!("1 {SECRET_A}"));
    let first = token(&ring, "u", &[(1, 0.9), (2, 0.8), (3, 0.7)]);
    let mut later = request("u", first, SessionMode::Merge);
    later.exclude_item_ids = vec![2];
    let plan = SessionPlan::open(&later, &ring, "v1").unwrap().unwrap();
    let (items, _, _) = plan.finish(&[(9, 0.1)], true, 3, |id| id == 1);
    assert_eq!(items, vec![(3, 0.7, true), (9, 0.1, false)]);
}

#[test]
fn forged_cut_foreign_and_misplaced_tokens_are_refused_by_name() {
    let ring = keyring(&format!("1 {SECRET_A}"));
    let good = token(&ring, "u", &[(1, 0.9), (2, 0.8)]);
    let refused = |bytes: Vec<u8>, user: &str, version: &str| {
        SessionPlan::open(&request(user, bytes, SessionMode::Merge), &ring, version)
            .unwrap_err()
            .to_string()
    };
    let mut flipped = good.clone();
    flipped[12] ^= 1;
    assert!(refused(flipped, "u", "v1").contains("bad signature"));
    let cut = good[..good.len() - 1].to_vec();
    assert!(refused(cut, "u", "v1").contains("bad signature"));
    assert!(refused(good[..10].to_vec(), "u", "v1").contains("cut short"));
    let oversized = vec![FORMAT; MAX_SESSION_TOKEN_BYTES + 1];
    let error = refused(oversized, "u", "v1");
    assert!(
        error.contains(&format!("the limit is {MAX_SESSION_TOKEN_BYTES}")),
        "{error}"
    );
    let other_key = token(&keyring(&format!("1 {SECRET_B}")), "u", &[(1, 0.9)]);
    assert!(refused(other_key, "u", "v1").contains("bad signature"));
    let unknown_key = token(&keyring(&format!("7 {SECRET_B}")), "u", &[(1, 0.9)]);
    assert!(refused(unknown_key, "u", "v1").contains("key 7"));
    let error = refused(good.clone(), "u", "v2");
    assert!(
        error.contains("session.token") && error.contains("\"v1\""),
        "{error}"
    );
    assert!(refused(good, "someone else", "v1").contains("another query"));
}

#[test]
fn an_expired_token_starts_a_new_session_with_a_note() {
    let short = SessionKeyring::new(
        Arc::new(ArcSwap::from_pointee(
            SessionKeys::parse(&format!("1 {SECRET_A}")).unwrap(),
        )),
        Duration::ZERO,
    );
    let mut old = Token {
        key_id: 1,
        issued_at: now_secs() - 5,
        query: query_fingerprint(&request("u", Vec::new(), SessionMode::Merge)),
        bundle_version: "v1".into(),
        shown: Shown {
            items: vec![(1, 0.5)],
            ranked: true,
        },
    };
    let key = short.keys.load().signing.1.clone();
    let bytes = old.encode(&key);
    let plan = SessionPlan::open(&request("u", bytes, SessionMode::Merge), &short, "v1")
        .unwrap()
        .unwrap();
    assert!(plan.shown.is_none());
    assert!(plan.note.contains("expired"), "{}", plan.note);
    // Within the time it is taken.
    old.issued_at = now_secs();
    let ring = keyring(&format!("1 {SECRET_A}"));
    let plan = SessionPlan::open(
        &request("u", old.encode(&key), SessionMode::Merge),
        &ring,
        "v1",
    )
    .unwrap()
    .unwrap();
    assert!(plan.shown.is_some());
}

#[test]
fn keys_rotate_new_first_old_kept_until_removed() {
    let old = keyring(&format!("1 {SECRET_A}"));
    let issued = token(&old, "u", &[(1, 0.9)]);
    // The new key signs; the old one still verifies.
    let rotating = keyring(&format!("# new first\n2 {SECRET_B}\n1 {SECRET_A}\n"));
    let plan = SessionPlan::open(
        &request("u", issued.clone(), SessionMode::Merge),
        &rotating,
        "v1",
    )
    .unwrap()
    .unwrap();
    let (_, next, _) = plan.finish(&[(1, 0.9)], true, 1, |_| false);
    assert_eq!(u32::from_le_bytes([next[1], next[2], next[3], next[4]]), 2);
    // With the old key gone, its tokens are refused; the new ones are not.
    let rotated = keyring(&format!("2 {SECRET_B}"));
    assert!(
        SessionPlan::open(&request("u", issued, SessionMode::Merge), &rotated, "v1")
            .unwrap_err()
            .to_string()
            .contains("key 1")
    );
    assert!(SessionPlan::open(&request("u", next, SessionMode::Merge), &rotated, "v1").is_ok());
}

#[test]
fn key_files_are_checked_by_line() {
    for (text, words) in [
        ("", "no key"),
        ("1", "expected"),
        ("x 00112233445566778899aabbccddeeff", "not a number"),
        ("1 0011", "at least 16"),
        ("1 zz112233445566778899aabbccddeeff", "hexadecimal"),
        (
            "1 00112233445566778899aabbccddeeff\n1 00112233445566778899aabbccddeeff",
            "twice",
        ),
    ] {
        let error = SessionKeys::parse(text).unwrap_err();
        assert!(error.contains(words), "{text:?}: {error}");
    }
}

/// The size the issue bounds: a token of 100 items stays under 2 KiB, with
/// MovieLens' small ids and with ids that take all 64 bits.
#[test]
fn a_token_of_a_hundred_items_is_under_two_kib() {
    let ring = keyring(&format!("1 {SECRET_A}"));
    let small: Vec<(u64, f32)> = (0..100)
        .map(|i| (1 + i * 16, 1.0 - i as f32 / 100.0))
        .collect();
    let large: Vec<(u64, f32)> = (0..100)
        .map(|i| (u64::MAX - 1 - i, 1.0 - i as f32 / 100.0))
        .collect();
    let small_token = token(&ring, "u", &small);
    let large_token = token(&ring, "u", &large);
    assert!(small_token.len() < 1024, "{}", small_token.len());
    assert!(large_token.len() <= 2048, "{}", large_token.len());
}
