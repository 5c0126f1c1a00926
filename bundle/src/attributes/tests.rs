use super::*;
use crate::filter::Filter;

const TSV: &str = "id\tgenre:keyword_list\tyear:integer\trating:float\tin_stock:boolean\tlanguage:keyword\n\
    42\tComedy|Romance\t1994\t4.5\ttrue\ten\n\
    43\t\t1990\t\tfalse\tfr\n\
    44\tDrama\t2001\t3.0\t\ten\n";

fn path() -> &'static Path {
    Path::new("attributes.tsv")
}

#[test]
fn the_file_reads_into_typed_columns_and_back() {
    let attributes = ItemAttributes::parse(TSV, path()).unwrap();
    assert_eq!(attributes.len(), 3);
    assert_eq!(attributes.type_of("year"), Some(AttributeType::Integer));
    assert_eq!(attributes.type_of("colour"), None);
    assert_eq!(
        attributes.value(42, "genre"),
        Some(AttributeValue::KeywordList(&[
            "Comedy".to_string(),
            "Romance".to_string()
        ]))
    );
    assert_eq!(attributes.value(43, "genre"), None);
    assert_eq!(attributes.value(43, "rating"), None);
    assert_eq!(attributes.value(44, "in_stock"), None);
    assert_eq!(
        attributes.value(43, "language"),
        Some(AttributeValue::Keyword("fr"))
    );
    let counts = attributes.keyword_counts("language").unwrap();
    assert_eq!((counts["en"], counts["fr"]), (2, 1));
    assert!(attributes.keyword_counts("year").is_none());
    let again = ItemAttributes::parse(&attributes.to_tsv(), path()).unwrap();
    assert_eq!(again.to_tsv(), attributes.to_tsv());
    assert_eq!(again.value(44, "rating"), Some(AttributeValue::Float(3.0)));
}

#[test]
fn a_filter_checks_and_matches_against_the_items() {
    let attributes = ItemAttributes::parse(TSV, path()).unwrap();
    let filter = Filter::parse(r#"genre in ["Comedy","Drama"] and year >= 1990"#).unwrap();
    filter.check(&|name| attributes.type_of(name)).unwrap();
    let matching: Vec<u64> = [42, 43, 44, 45]
        .into_iter()
        .filter(|id| filter.matches(&|name| attributes.value(*id, name)))
        .collect();
    assert_eq!(matching, vec![42, 44]);
}

proptest::proptest! {
    /// Any text under a valid header reads or is refused, never a panic.
    #[test]
    fn any_rows_read_or_are_refused(rows in "[0-9a-z|.\t\n-]{0,200}") {
        let text = format!("id\tg:keyword_list\ty:integer\tr:float\tb:boolean\tk:keyword\n{rows}");
        if let Ok(attributes) = ItemAttributes::parse(&text, path()) {
            let again = ItemAttributes::parse(&attributes.to_tsv(), path()).unwrap();
            proptest::prop_assert_eq!(again.to_tsv(), attributes.to_tsv());
        }
    }
}

#[test]
fn bad_files_are_refused_by_line() {
    for (text, words) in [
        ("", "no header"),
        ("item\tyear:integer\n", "must be \"id\""),
        ("id\tyear\n", "NAME:TYPE"),
        ("id\tyear:date\n", "types are"),
        ("id\tyear:integer\tyear:float\n", "repeated"),
        ("id\tyear:integer\nx\t1\n", "line 2: id \"x\""),
        ("id\tyear:integer\n1\t1\t2\n", "2 values for 1 attributes"),
        ("id\tyear:integer\n1\t1\n1\t2\n", "listed twice"),
        (
            "id\tyear:integer\n1\tnineteen\n",
            "\"year\": \"nineteen\" is not an integer",
        ),
        ("id\trating:float\n1\tinf\n", "finite"),
        ("id\tok:boolean\n1\tyes\n", "true or false"),
    ] {
        let error = ItemAttributes::parse(text, path()).unwrap_err().to_string();
        assert!(error.contains(words), "{text:?}: {error}");
        assert!(error.contains("attributes.tsv"), "{error}");
    }
}
