//! The loaders on small files written here, good and malformed: every error must
//! name the file, the line and the field.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use recsys_trainer::{load_interactions_csv, load_movielens_1m, load_movielens_100k};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

const GENRES_NONE: &str = "0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0";

fn ml100k(u_data: &[u8], u_user: &[u8], u_item: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "u.data", u_data);
    write(dir.path(), "u.user", u_user);
    write(dir.path(), "u.item", u_item);
    dir
}

fn good_items() -> Vec<u8> {
    let mut items =
        b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
            .to_vec();
    // Latin-1 0xE9 is "é".
    items.extend_from_slice(b"2|Mis\xe9rables, Les (1995)|01-Jan-1995||http://y|");
    items.extend_from_slice(GENRES_NONE.as_bytes());
    items.extend_from_slice(b"\n267|unknown||||1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0\n");
    items
}

const GOOD_USERS: &[u8] = b"1|24|M|technician|85711\n2|53|F|other|94043\n";

fn error_of(result: recsys_trainer::Result<recsys_trainer::Dataset>) -> String {
    result
        .expect_err("the loader accepted a malformed file")
        .to_string()
}

#[test]
fn movielens_100k_reads_ratings_users_and_items() {
    let dir = ml100k(
        b"1\t2\t5\t881250949\r\n2\t1\t3\t891717742\n\n",
        GOOD_USERS,
        &good_items(),
    );
    let data = load_movielens_100k(dir.path()).unwrap();
    assert_eq!(data.interactions.len(), 2);
    assert_eq!(data.interactions[0].item, "2");
    assert_eq!(data.interactions[0].rating, Some(5.0));
    assert_eq!(data.interactions[1].timestamp, Some(891_717_742));
    assert_eq!(
        data.items[1].title.as_deref(),
        Some("Misérables, Les (1995)")
    );
    assert_eq!(data.items[0].genres, ["Animation", "Children's", "Comedy"]);
    assert_eq!(data.items[0].year, Some(1995));
    assert_eq!(data.items[2].year, None);
    assert_eq!(data.users[1].features["occupation"], "other");
    assert_eq!(data.users[0].features["age"], "24");
    let by_title = data.keyed_by_title();
    assert_eq!(by_title.interactions[0].item, "Misérables, Les (1995)");
}

/// u.data, u.user and u.item bytes, and what the error must say.
type Case<'a> = (&'a [u8], &'a [u8], Vec<u8>, &'a str);

#[test]
fn movielens_100k_errors_name_file_line_and_field() {
    let cases: [Case<'_>; 7] = [
        (
            b"1\t2\t5\t1\n1\t1\tfive\t2\n",
            GOOD_USERS,
            good_items(),
            "u.data line 2 field rating: cannot parse \"five\"",
        ),
        (
            b"1\t2\t5\n",
            GOOD_USERS,
            good_items(),
            "u.data line 1 field timestamp: missing",
        ),
        (
            b"1\t2\t5\t1\n1\t99\t5\t1\n",
            GOOD_USERS,
            good_items(),
            "u.data line 2 field item id: item 99 is not in the item file",
        ),
        (
            b"7\t2\t5\t1\n",
            GOOD_USERS,
            good_items(),
            "u.data line 1 field user id: user 7 is not in the user file",
        ),
        (
            b"1\t2\t5\t1\n",
            b"1|24|M|technician|85711\n1|30|F|other|1\n",
            good_items(),
            "u.user line 2 field user id: duplicate 1 (first on line 1)",
        ),
        (
            b"1\t2\t5\t1\n",
            b"1|old|M|technician|85711\n",
            good_items(),
            "u.user line 1 field age",
        ),
        (
            b"1\t2\t5\t1\n",
            GOOD_USERS,
            b"1|Toy Story (1995)|01-Jan-1995||http://x|0|2|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
                .to_vec(),
            "u.item line 1 field genre Action: \"2\" is not 0 or 1",
        ),
    ];
    for (u_data, u_user, u_item, want) in cases {
        let dir = ml100k(u_data, u_user, &u_item);
        let err = error_of(load_movielens_100k(dir.path()));
        assert!(err.contains(want), "{err:?} should contain {want:?}");
        assert!(
            err.contains(&dir.path().display().to_string()),
            "{err} names no path"
        );
    }
}

#[test]
fn movielens_100k_short_item_line_names_the_missing_field() {
    let dir = ml100k(
        b"1\t1\t5\t1\n",
        GOOD_USERS,
        b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0\n",
    );
    let err = error_of(load_movielens_100k(dir.path()));
    assert!(
        err.contains("u.item line 1 field genre Adventure: missing (7 fields, expected 24)"),
        "{err}"
    );
}

#[test]
fn movielens_100k_missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = error_of(load_movielens_100k(dir.path()));
    assert!(err.contains("u.item"), "{err}");
}

fn ml1m(ratings: &[u8], users: &[u8], movies: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "ratings.dat", ratings);
    write(dir.path(), "users.dat", users);
    write(dir.path(), "movies.dat", movies);
    dir
}

const ML1M_USERS: &[u8] = b"1::F::1::10::48067\n2::M::56::16::70072\n";
const ML1M_MOVIES: &[u8] =
    b"1::Toy Story (1995)::Animation|Children's|Comedy\n2::Caf\xe9 au lait (1993)::Comedy\n";

#[test]
fn movielens_1m_reads_double_colon_files() {
    let dir = ml1m(
        b"1::1::5::978300760\n2::2::3::978302109\n",
        ML1M_USERS,
        ML1M_MOVIES,
    );
    let data = load_movielens_1m(dir.path()).unwrap();
    assert_eq!(data.interactions.len(), 2);
    assert_eq!(data.items[0].genres, ["Animation", "Children's", "Comedy"]);
    assert_eq!(data.items[1].title.as_deref(), Some("Café au lait (1993)"));
    assert_eq!(data.items[1].year, Some(1993));
    assert_eq!(data.users[1].features["age"], "56");
    assert_eq!(data.users[1].features["gender"], "M");
}

#[test]
fn movielens_1m_errors_name_file_line_and_field() {
    let dir = ml1m(
        b"1::1::5::978300760\n2::2::3::soon\n",
        ML1M_USERS,
        ML1M_MOVIES,
    );
    let err = error_of(load_movielens_1m(dir.path()));
    assert!(
        err.contains("ratings.dat line 2 field timestamp: cannot parse \"soon\""),
        "{err}"
    );

    let dir = ml1m(b"1::1::5::1\n", ML1M_USERS, b"1::Toy Story (1995)\n");
    let err = error_of(load_movielens_1m(dir.path()));
    assert!(
        err.contains("movies.dat line 1 field genres: missing"),
        "{err}"
    );

    let dir = ml1m(b"1::1::5::1\n", b"1::F::one::10::48067\n", ML1M_MOVIES);
    let err = error_of(load_movielens_1m(dir.path()));
    assert!(err.contains("users.dat line 1 field age"), "{err}");
}

#[test]
fn csv_reads_interactions_items_and_users() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "i.csv",
        b"timestamp,item,user,rating,extra\n10,a,u1,4.5,x\n11,\"b, the sequel\",u2,,y\n",
    );
    write(
        dir.path(),
        "items.csv",
        b"item,title,genres\na,Alpha (2001),Drama|Comedy\n\"b, the sequel\",Beta,\n",
    );
    write(
        dir.path(),
        "users.csv",
        b"user,country,plan\nu1,fr,free\nu2,,paid\n",
    );
    let data = load_interactions_csv(
        &dir.path().join("i.csv"),
        Some(&dir.path().join("items.csv")),
        Some(&dir.path().join("users.csv")),
    )
    .unwrap();
    assert_eq!(data.interactions.len(), 2);
    assert_eq!(data.interactions[0].rating, Some(4.5));
    assert_eq!(data.interactions[1].rating, None);
    assert_eq!(data.interactions[1].item, "b, the sequel");
    assert_eq!(data.interactions[1].timestamp, Some(11));
    assert_eq!(data.items[0].genres, ["Drama", "Comedy"]);
    assert_eq!(data.items[0].year, Some(2001));
    assert_eq!(data.users[0].features["plan"], "free");
    assert!(!data.users[1].features.contains_key("country"));
}

#[test]
fn csv_errors_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.csv");
    let cases: [(&[u8], &str); 5] = [
        (
            b"user,rating\nu1,4\n",
            "i.csv line 1 field item: no such column in the header",
        ),
        (
            b"user,item,rating\nu1,a,4\nu2,b,lots\n",
            "i.csv line 3 field rating: cannot parse \"lots\"",
        ),
        (
            b"user,item,timestamp\nu1,a,4\nu2,b\n",
            "i.csv line 3 field timestamp: missing",
        ),
        (b"user,item\nu1,a\n,b\n", "i.csv line 3 field user: empty"),
        (
            b"user,item\nu1,\"a\n",
            "i.csv line 2 field line: unterminated quote",
        ),
    ];
    for (text, want) in cases {
        std::fs::write(&path, text).unwrap();
        let err = error_of(load_interactions_csv(&path, None, None));
        assert!(err.contains(want), "{err:?} should contain {want:?}");
    }
    std::fs::write(&path, b"user,item\nu1,a\n").unwrap();
    let items = dir.path().join("items.csv");
    std::fs::write(&items, b"item,year\na,1999\nb,later\n").unwrap();
    let err = error_of(load_interactions_csv(&path, Some(&items), None));
    assert!(
        err.contains("items.csv line 3 field year: cannot parse \"later\""),
        "{err}"
    );
    std::fs::write(&items, b"item\na\nb\na\n").unwrap();
    let err = error_of(load_interactions_csv(&path, Some(&items), None));
    assert!(
        err.contains("items.csv line 4 field item: duplicate a (first on line 2)"),
        "{err}"
    );
}
