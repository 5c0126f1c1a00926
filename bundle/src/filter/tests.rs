use proptest::prelude::*;

use super::*;

fn eq(attribute: &str, value: Literal) -> Filter {
    Filter::Eq {
        attribute: attribute.into(),
        value,
    }
}

fn text(value: &str) -> Literal {
    Literal::String(value.into())
}

#[test]
fn the_issues_example_parses_into_the_structure() {
    let filter = Filter::parse(r#"genre in ["Comedy","Drama"] and year >= 1990"#).unwrap();
    assert_eq!(
        filter,
        Filter::And(vec![
            Filter::AnyOf {
                attribute: "genre".into(),
                values: vec![text("Comedy"), text("Drama")],
            },
            Filter::Range {
                attribute: "year".into(),
                min: Some(Bound {
                    value: Literal::Integer(1990),
                    inclusive: true,
                }),
                max: None,
            },
        ])
    );
}

#[test]
fn and_binds_tighter_than_or_and_not_tighter_than_both() {
    let filter = Filter::parse("a = 1 or not b == 2 and c != true").unwrap();
    assert_eq!(
        filter,
        Filter::Or(vec![
            eq("a", Literal::Integer(1)),
            Filter::And(vec![
                Filter::Not(Box::new(eq("b", Literal::Integer(2)))),
                Filter::Not(Box::new(eq("c", Literal::Boolean(true)))),
            ]),
        ])
    );
    let grouped = Filter::parse(r#"(a = 1 or b < 2.5) and s = "x \"y\" \\""#).unwrap();
    assert_eq!(
        grouped,
        Filter::And(vec![
            Filter::Or(vec![
                eq("a", Literal::Integer(1)),
                Filter::Range {
                    attribute: "b".into(),
                    min: None,
                    max: Some(Bound {
                        value: Literal::Float(2.5),
                        inclusive: false,
                    }),
                },
            ]),
            eq("s", text(r#"x "y" \"#)),
        ])
    );
}

#[test]
fn errors_point_at_the_column() {
    for (text, column, words) in [
        ("year >= ", 9, "ends where a value"),
        (r#"genre in "Comedy""#, 10, "expected \"[\""),
        ("year # 3", 6, "unexpected '#'"),
        (r#"name = "open"#, 8, "never closed"),
        ("a ! 1", 3, "followed by \"=\""),
        ("a = 1 b = 2", 7, "after a complete filter"),
        ("(a = 1", 7, "ends where \")\""),
        ("= 1", 1, "expected an attribute name"),
        ("a = 1x", 5, "not a number"),
        ("a in [1 2]", 9, "expected \",\" or \"]\""),
        (r#"s = "a\n""#, 7, "escapes"),
    ] {
        let error = Filter::parse(text).unwrap_err();
        assert_eq!(error.column, Some(column), "{text:?}: {error}");
        assert!(error.to_string().contains(words), "{text:?}: {error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("at column {column}: ")),
            "{error}"
        );
    }
}

#[test]
fn sizes_are_bounded() {
    let deep = format!("{}a = 1{}", "(".repeat(40), ")".repeat(40));
    assert!(
        Filter::parse(&deep)
            .unwrap_err()
            .to_string()
            .contains("nests deeper")
    );
    let wide = vec!["a = 1"; 300].join(" or ");
    assert!(
        Filter::parse(&wide)
            .unwrap_err()
            .to_string()
            .contains("more than 256")
    );
    let long = format!("a = \"{}\"", "x".repeat(MAX_FILTER_BYTES));
    assert!(
        Filter::parse(&long)
            .unwrap_err()
            .to_string()
            .contains("bytes")
    );
}

fn schema(name: &str) -> Option<AttributeType> {
    match name {
        "genre" => Some(AttributeType::KeywordList),
        "language" => Some(AttributeType::Keyword),
        "year" => Some(AttributeType::Integer),
        "rating" => Some(AttributeType::Float),
        "in_stock" => Some(AttributeType::Boolean),
        _ => None,
    }
}

#[test]
fn the_schema_check_names_the_attribute_and_the_mismatch() {
    let ok = r#"genre = "Comedy" and year < 2000.5 and rating >= 4 and in_stock = true and language in ["en", "fr"]"#;
    Filter::parse(ok).unwrap().check(&schema).unwrap();
    for (text, words) in [
        ("colour = \"red\"", "unknown attribute \"colour\""),
        (
            "year = \"1990\"",
            "\"year\" is an integer, compared with a string",
        ),
        (
            "in_stock = 1",
            "\"in_stock\" is a boolean, compared with an integer",
        ),
        (
            "genre > \"A\"",
            "\"genre\" is a keyword list: only numbers have ranges",
        ),
        (
            "not (language in [\"en\", 3])",
            "\"language\" is a keyword, compared with an integer",
        ),
    ] {
        let error = Filter::parse(text).unwrap().check(&schema).unwrap_err();
        assert!(error.to_string().contains(words), "{text}: {error}");
    }
}

#[test]
fn matching_reads_each_type() {
    let genres = vec!["Comedy".to_string(), "Romance".to_string()];
    let item = |name: &str| match name {
        "genre" => Some(AttributeValue::KeywordList(&genres)),
        "language" => Some(AttributeValue::Keyword("en")),
        "year" => Some(AttributeValue::Integer(1994)),
        "rating" => Some(AttributeValue::Float(4.5)),
        "in_stock" => Some(AttributeValue::Boolean(false)),
        _ => None,
    };
    for (text, expected) in [
        (r#"genre in ["Comedy","Drama"] and year >= 1990"#, true),
        (r#"genre = "Drama""#, false),
        ("year > 1994", false),
        ("year >= 1994 and year <= 1994", true),
        ("year = 1994.0", true),
        ("rating < 4.5", false),
        ("rating = 4.5 and not in_stock = true", true),
        (r#"language != "en""#, false),
        // A missing attribute matches no comparison (and so its negation).
        (r#"colour = "red""#, false),
        (r#"not colour = "red""#, true),
    ] {
        let filter = Filter::parse(text).unwrap();
        assert_eq!(filter.matches(&item), expected, "{text}");
    }
}

fn name() -> impl Strategy<Value = String> {
    "[a-z_][a-z0-9_]{0,6}".prop_filter("not a keyword", |name| {
        !["and", "or", "not", "in", "true", "false"].contains(&name.as_str())
    })
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        "[ -~é\"\\\\]{0,8}".prop_map(Literal::String),
        any::<i64>().prop_map(Literal::Integer),
        (-1e30f64..1e30).prop_map(Literal::Float),
        any::<bool>().prop_map(Literal::Boolean),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    let leaf = prop_oneof![
        (name(), literal()).prop_map(|(attribute, value)| Filter::Eq { attribute, value }),
        (name(), prop::collection::vec(literal(), 1..4))
            .prop_map(|(attribute, values)| Filter::AnyOf { attribute, values }),
        (name(), literal(), any::<bool>(), any::<bool>()).prop_map(
            |(attribute, value, inclusive, below)| {
                let bound = Some(Bound { value, inclusive });
                let (min, max) = if below { (None, bound) } else { (bound, None) };
                Filter::Range {
                    attribute,
                    min,
                    max,
                }
            }
        ),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|f| Filter::Not(Box::new(f))),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Filter::And),
            prop::collection::vec(inner, 2..4).prop_map(Filter::Or),
        ]
    })
}

proptest! {
    /// The text form reads back to the same filter.
    #[test]
    fn the_text_form_round_trips(filter in filter()) {
        let text = filter.to_string();
        prop_assert_eq!(Filter::parse(&text), Ok(filter), "{}", text);
    }

    /// Any text parses or is refused with a column inside it (or just past
    /// it), never a panic.
    #[test]
    fn any_text_parses_or_is_refused_in_place(text in "[ -~é]{0,60}") {
        if let Err(error) = Filter::parse(&text) {
            let column = error.column.unwrap_or(1);
            prop_assert!(column >= 1 && column <= text.chars().count() + 1, "{}: {}", text, error);
        }
    }
}
