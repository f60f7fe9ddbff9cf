//! Pipeline files as a person could get them wrong: the parser never
//! panics, and every error it gives can be shown.

use std::collections::HashMap;

use proptest::prelude::*;

use super::{LoadedPipeline, Registry};

/// Pipelines shipped with Flumen, to damage.
const EXAMPLES: &[&str] = &[
    include_str!("../../examples/quickstart.yaml"),
    include_str!("../../examples/dead_letters.yaml"),
    include_str!("../../examples/checkpointed_bids.yaml"),
    include_str!("../../examples/coffee_orders.yaml"),
    include_str!("../../examples/patterns/load_leveling/ingest.yaml"),
    include_str!("../../examples/operators/top_items.yaml"),
    include_str!("../../examples/nexmark/q5_hot_items.yaml"),
];

/// One edit of a pipeline's text.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, char),
    Delete(usize),
    Replace(usize, char),
    /// Swap two lines.
    Swap(usize, usize),
    /// Repeat a line.
    Repeat(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let char = prop_oneof![
        prop::sample::select(vec![
            ' ', '\t', ':', '-', '[', ']', '{', '}', '"', '\'', '#', '$', '&', '*', '!', '|', '>',
            '\n', '0', 'é', '\u{0}'
        ]),
        any::<char>(),
    ];
    prop_oneof![
        (any::<usize>(), char.clone()).prop_map(|(at, c)| Edit::Insert(at, c)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), char).prop_map(|(at, c)| Edit::Replace(at, c)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        any::<usize>().prop_map(Edit::Repeat),
    ]
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let mut lines: Vec<&str> = text.lines().collect();
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match *edit {
        Edit::Insert(i, c) => chars.insert(at(i, chars.len() + 1), c),
        Edit::Delete(i) if !chars.is_empty() => {
            let i = at(i, chars.len());
            chars.remove(i);
        }
        Edit::Replace(i, c) if !chars.is_empty() => {
            let i = at(i, chars.len());
            chars[i] = c;
        }
        Edit::Swap(a, b) if !lines.is_empty() => {
            let (a, b) = (at(a, lines.len()), at(b, lines.len()));
            lines.swap(a, b);
            return lines.join("\n");
        }
        Edit::Repeat(i) if !lines.is_empty() => {
            let i = at(i, lines.len());
            lines.insert(i, lines[i]);
            return lines.join("\n");
        }
        _ => {}
    }
    chars.into_iter().collect()
}

fn parse(text: &str) {
    let env: HashMap<String, String> = HashMap::new();
    if let Err(error) = LoadedPipeline::parse("pipeline.yaml", text, &env, &Registry::builtin()) {
        // Rendering points into the text: it must not panic either.
        let shown = error.to_string();
        assert!(!shown.is_empty());
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: flumen_core::testing::fuzz_cases(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn fuzz_damaged_pipelines(example in 0..EXAMPLES.len(), edits in prop::collection::vec(edit(), 1..4)) {
        let mut text = EXAMPLES[example].to_string();
        for edit in &edits {
            text = apply(&text, edit);
        }
        parse(&text);
    }

    #[test]
    fn fuzz_any_text(text in "(?s).{0,200}") {
        parse(&text);
    }

    #[test]
    fn fuzz_yaml_shaped_text(text in "([a-z_]{1,8}:( [a-z0-9\\[\\]{}$\"'&*!|>,-]{0,10})?\n( {2,4}|- )?){0,12}") {
        parse(&text);
    }
}
