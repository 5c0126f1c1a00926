use std::path::Path;

use proptest::prelude::*;

use crate::attributes::ItemAttributes;
use crate::filter::{Bound, Filter, Literal};

const HEADER: &str = "id\tgenre:keyword_list\tlang:keyword\tyear:integer\trating:float\tok:boolean";
const WORDS: [&str; 4] = ["a", "b", "c", "d"];

/// One item's genres, language, year, rating (in quarters) and flag, as
/// indexes into [`WORDS`] and plain values.
type Row = (
    Vec<usize>,
    Option<usize>,
    Option<i64>,
    Option<i8>,
    Option<bool>,
);

fn attributes(rows: &[Row]) -> ItemAttributes {
    let mut text = format!("{HEADER}\n");
    for (id, (genres, lang, year, rating, ok)) in rows.iter().enumerate() {
        let genres: Vec<&str> = genres.iter().map(|g| WORDS[*g]).collect();
        let cell = |v: Option<String>| v.unwrap_or_default();
        text.push_str(&format!(
            "{id}\t{}\t{}\t{}\t{}\t{}\n",
            genres.join("|"),
            cell(lang.map(|l| WORDS[l].to_string())),
            cell(year.map(|y| y.to_string())),
            cell(rating.map(|r| (f64::from(r) / 4.0).to_string())),
            cell(ok.map(|b| b.to_string())),
        ));
    }
    ItemAttributes::parse(&text, Path::new("attributes.tsv")).unwrap()
}

fn row() -> impl Strategy<Value = Row> {
    (
        prop::collection::vec(0..4usize, 0..3),
        prop::option::of(0..4usize),
        prop::option::of(1990..1996i64),
        prop::option::of(-8..8i8),
        prop::option::of(any::<bool>()),
    )
}

/// Filters over the schema above, values of the right type (and a few
/// keywords and numbers no item has).
fn filter() -> impl Strategy<Value = Filter> {
    let word = prop::sample::select(vec!["a", "b", "c", "d", "e"])
        .prop_map(|w| Literal::String(w.to_string()));
    let number = prop_oneof![
        (1989..1997i64).prop_map(Literal::Integer),
        (-9..9i8).prop_map(|r| Literal::Float(f64::from(r) / 4.0)),
    ];
    let keyword_attr = prop::sample::select(vec!["genre", "lang"]).prop_map(str::to_string);
    let number_attr = prop::sample::select(vec!["year", "rating"]).prop_map(str::to_string);
    let bound =
        (number.clone(), any::<bool>()).prop_map(|(value, inclusive)| Bound { value, inclusive });
    let leaf = prop_oneof![
        (keyword_attr.clone(), word.clone())
            .prop_map(|(attribute, value)| Filter::Eq { attribute, value }),
        (keyword_attr, prop::collection::vec(word, 1..4))
            .prop_map(|(attribute, values)| Filter::AnyOf { attribute, values }),
        (number_attr.clone(), number.clone())
            .prop_map(|(attribute, value)| Filter::Eq { attribute, value }),
        (number_attr.clone(), prop::collection::vec(number, 1..3))
            .prop_map(|(attribute, values)| Filter::AnyOf { attribute, values }),
        (
            number_attr,
            prop::option::of(bound.clone()),
            prop::option::of(bound)
        )
            .prop_map(|(attribute, min, max)| Filter::Range {
                attribute,
                min,
                max
            }),
        any::<bool>().prop_map(|b| Filter::Eq {
            attribute: "ok".into(),
            value: Literal::Boolean(b)
        }),
    ];
    leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
            prop::collection::vec(inner.clone(), 1..4).prop_map(Filter::And),
            prop::collection::vec(inner, 1..4).prop_map(Filter::Or),
        ]
    })
}

proptest! {
    /// The compiled filter means what the filter means, on every item (and on
    /// ids without attributes), and lists exactly the matching items.
    #[test]
    fn the_compiled_filter_matches_what_the_filter_matches(
        rows in prop::collection::vec(row(), 0..40),
        filter in filter(),
    ) {
        let attributes = attributes(&rows);
        let compiled = attributes.compile(&filter).unwrap();
        let mut expected = Vec::new();
        for id in 0..rows.len() as u64 + 3 {
            let wanted = filter.matches(&|name| attributes.value(id, name));
            prop_assert_eq!(attributes.matches_id(&compiled, id), wanted, "item {}", id);
            if wanted && (id as usize) < rows.len() {
                expected.push(id);
            }
        }
        prop_assert_eq!(attributes.matching_ids(&compiled), expected);
        let estimate = attributes.estimate(&compiled);
        prop_assert!((0.0..=rows.len() as f64 + 1e-9).contains(&estimate), "{}", estimate);
    }
}

#[test]
fn one_comparison_is_estimated_exactly() {
    let rows: Vec<_> = (0..100)
        .map(|i| {
            (
                vec![i % 4, (i + 1) % 4],
                Some(i % 3),
                Some(1990 + (i % 10) as i64),
                None,
                Some(i % 5 == 0),
            )
        })
        .collect();
    let attributes = attributes(&rows);
    for (text, expected) in [
        (r#"genre = "a""#, 50.0),
        (r#"genre in ["a", "z"]"#, 50.0),
        (r#"lang = "b""#, 33.0),
        (r#"lang = "z""#, 0.0),
        ("year >= 1995", 50.0),
        ("year = 1990", 10.0),
        ("ok = true", 20.0),
        (r#"not (lang = "a")"#, 66.0),
    ] {
        let compiled = attributes.compile(&Filter::parse(text).unwrap()).unwrap();
        assert_eq!(attributes.estimate(&compiled), expected, "{text}");
        assert_eq!(
            attributes.matching_ids(&compiled).len() as f64,
            expected,
            "{text}"
        );
    }
}

#[test]
fn unknown_attributes_and_mismatched_types_are_refused_by_name() {
    let attributes = attributes(&[(vec![0], Some(1), Some(1990), Some(2), Some(true))]);
    for (text, words) in [
        ("colour = \"red\"", "unknown attribute \"colour\""),
        ("year = \"old\"", "\"year\" is an integer"),
        ("lang > 3", "\"lang\" is a keyword"),
    ] {
        let error = attributes
            .compile(&Filter::parse(text).unwrap())
            .unwrap_err()
            .to_string();
        assert!(error.contains(words), "{text}: {error}");
    }
}

#[test]
fn a_shard_keeps_its_own_rows_but_checks_every_row() {
    let text = format!("{HEADER}\n1\ta\ta\t1990\t1.0\ttrue\n2\tb\tb\t1991\t\tfalse\n");
    let odd =
        ItemAttributes::parse_where(&text, Path::new("attributes.tsv"), |id| id % 2 == 1).unwrap();
    assert_eq!(odd.ids(), &[1]);
    assert!(odd.value(2, "lang").is_none());
    let bad = format!("{HEADER}\n1\ta\ta\t1990\t1.0\ttrue\n2\tb\tb\tnever\t\tfalse\n");
    let error = ItemAttributes::parse_where(&bad, Path::new("attributes.tsv"), |id| id % 2 == 1)
        .unwrap_err()
        .to_string();
    assert!(error.contains("line 3"), "{error}");
}
