//! The detectors against the labelled corpus in `tests/data/pii/`, and the
//! properties of sanitising and restoring: nothing is lost, whatever the text and
//! however a streamed answer is cut into chunks.

use std::collections::BTreeMap;

use proptest::prelude::*;
use ragway::sanitize::{
    Action, Detectors, Kind, PiiSanitizer, Policy, Sanitizer, StreamRestorer, Vault,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    group: String,
    text: String,
    expect: Vec<Expected>,
}

#[derive(Deserialize, PartialEq, Debug)]
struct Expected {
    kind: String,
    value: String,
}

#[derive(Default, Debug)]
struct Score {
    found: u32,
    missed: u32,
    wrong: u32,
}

impl Score {
    fn recall(&self) -> f64 {
        f64::from(self.found) / f64::from((self.found + self.missed).max(1))
    }

    fn precision(&self) -> f64 {
        f64::from(self.found) / f64::from((self.found + self.wrong).max(1))
    }
}

fn corpus() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/pii/corpus.jsonl");
    std::fs::read_to_string(path)
        .expect("corpus present")
        .lines()
        .map(|line| serde_json::from_str(line).expect("corpus line is a case"))
        .collect()
}

#[test]
fn the_corpus_scores_meet_the_goal() {
    let detectors = Detectors::new();
    let cases = corpus();
    assert!(cases.len() >= 300, "{} cases", cases.len());
    let mut scores: BTreeMap<String, Score> = BTreeMap::new();
    let (mut negatives, mut clean_negatives) = (0, 0);
    let mut mistakes = Vec::new();
    for case in &cases {
        let found: Vec<Expected> = detectors
            .find(&case.text)
            .into_iter()
            .filter(|f| f.kind != Kind::Literal)
            .map(|f| Expected {
                kind: f.kind.name().to_owned(),
                value: case.text[f.start..f.end].to_owned(),
            })
            .collect();
        if case.group.starts_with("negative") {
            negatives += 1;
            clean_negatives += u32::from(found.is_empty());
        }
        let mut expected: Vec<&Expected> = case.expect.iter().collect();
        for f in &found {
            let score = scores.entry(f.kind.clone()).or_default();
            match expected.iter().position(|e| *e == f) {
                Some(at) => {
                    expected.remove(at);
                    score.found += 1;
                }
                None => {
                    score.wrong += 1;
                    mistakes.push(format!("wrong {f:?} in {:?}", case.text));
                }
            }
        }
        for e in expected {
            scores.entry(e.kind.clone()).or_default().missed += 1;
            mistakes.push(format!("missed {e:?} in {:?}", case.text));
        }
    }
    println!(
        "{:<14} {:>6} {:>6} {:>6} {:>8} {:>9}",
        "kind", "found", "missed", "wrong", "recall", "precision"
    );
    for (kind, s) in &scores {
        println!(
            "{kind:<14} {:>6} {:>6} {:>6} {:>7.1}% {:>8.1}%",
            s.found,
            s.missed,
            s.wrong,
            100.0 * s.recall(),
            100.0 * s.precision()
        );
    }
    let negative_precision = f64::from(clean_negatives) / f64::from(negatives);
    println!("hard negatives left untouched: {clean_negatives}/{negatives}");
    for m in &mistakes {
        println!("{m}");
    }
    for kind in Kind::PII {
        assert!(
            scores.contains_key(kind.name()),
            "no case of {}",
            kind.name()
        );
    }
    for kind in ["id_card", "bank_card", "credit_code", "mobile", "email"] {
        assert_eq!(
            scores[kind].recall(),
            1.0,
            "recall of {kind}: {mistakes:#?}"
        );
    }
    assert!(negatives >= 100, "{negatives} hard negatives");
    assert!(negative_precision >= 0.99, "hard negatives: {mistakes:#?}");
}

fn sanitizer() -> PiiSanitizer {
    PiiSanitizer::new(Policy::default(), b"test key".to_vec())
}

/// Text made of pieces that stress the detectors and the placeholder syntax.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z ，。]{0,12}",
        "1[3-9][0-9]{9}",
        "1[3-9][0-9] [0-9]{4} [0-9]{4}",
        "(\\+86|0086)?[ -]?1[3-9][0-9]{9}",
        "[a-z]{1,8}@[a-z]{1,8}\\.(com|cn)",
        "<[A-Z_]{1,10}_[0-9]{1,3}>",
        "<(PHONE|EMAIL|ID_CARD|LITERAL)_[0-9]>",
        "[<>0-9 +_-]{0,12}",
        Just("11010519491231002X".to_owned()),
        Just("6222021234567890128".to_owned()),
        Just("91330100716105852F".to_owned()),
        Just("postgres://u:pw@h/db".to_owned()),
        // Written against letters, in full width, split by invisible characters.
        "[a-zA-Z]{1,6}",
        "(tel|ID|card|ab|x)?1[3-9][0-9]{9}(end|de)?",
        "[０-９]{1,12}",
        "[0-9０-９\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}\u{AD}\u{3000}＋－Ｘ +-]{0,16}",
        "[\u{200B}\u{200C}\u{200D}\u{2060}\u{FEFF}\u{AD}]",
        Just("tel13912348765".to_owned()),
        Just("id110105199003071239".to_owned()),
        Just("card6222021234567890128".to_owned()),
        Just("１３９１２３４８７６５".to_owned()),
        Just("139\u{200B}1234\u{200B}8765".to_owned()),
        Just("<PHONE_\u{200B}1>".to_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn restoring_undoes_sanitising(parts in prop::collection::vec(fragment(), 0..10)) {
        let text = parts.concat();
        let mut vault = Vault::new();
        let clean = sanitizer().sanitize_text(&text, &mut vault).unwrap();
        prop_assert_eq!(vault.restore(&clean), text);
    }

    #[test]
    fn a_streamed_answer_restores_the_same_however_it_is_cut(
        parts in prop::collection::vec(fragment(), 1..6),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let text = parts.concat();
        let mut vault = Vault::new();
        let answer = sanitizer().sanitize_text(&text, &mut vault).unwrap();
        let vault = std::sync::Arc::new(vault);
        let boundaries: Vec<usize> = (0..=answer.len()).filter(|&i| answer.is_char_boundary(i)).collect();
        let mut points: Vec<usize> = cuts.iter().map(|c| boundaries[c.index(boundaries.len())]).collect();
        points.sort_unstable();
        check_stream(&vault, &answer, &points, &text)?;
    }
}

/// The sanitised text of `text` under the default policy.
fn sanitised(text: &str) -> String {
    let mut vault = Vault::new();
    let clean = sanitizer().sanitize_text(text, &mut vault).unwrap();
    assert_eq!(vault.restore(&clean), text);
    clean
}

#[test]
fn values_written_against_letters_are_replaced() {
    for (text, expected) in [
        ("tel13912348765", "tel<PHONE_1>"),
        ("id110105199003071239", "id<ID_CARD_1>"),
        ("card6222021234567890128", "card<BANK_CARD_1>"),
        ("tel13912348765end", "tel<PHONE_1>end"),
        ("call13912348765or13812345678", "call<PHONE_1>or<PHONE_2>"),
        ("fax010-62345678", "fax<LANDLINE_1>"),
        // Hashes and order numbers stay as they are.
        ("a3f5b9c13912348765d0e1f2", "a3f5b9c13912348765d0e1f2"),
        ("deadbeef13912348765", "deadbeef13912348765"),
        (
            "ORD20231124000123 SO1234567890123456",
            "ORD20231124000123 SO1234567890123456",
        ),
    ] {
        assert_eq!(sanitised(text), expected, "{text}");
    }
}

#[test]
fn full_width_and_invisible_characters_are_replaced_with_the_value() {
    for (text, expected) in [
        ("手机１３９１２３４８７６５。", "手机<PHONE_1>。"),
        ("139\u{200B}1234\u{200B}8765", "<PHONE_1>"),
        ("\u{200B}13912348765\u{FEFF}", "\u{200B}<PHONE_1>\u{FEFF}"),
        ("＋８６　１３９　１２３４　８７６５", "<PHONE_1>"),
        (
            "身份证１１０１０５１９４９１２３１００２Ｘ",
            "身份证<ID_CARD_1>",
        ),
        (
            "6222\u{AD}0212\u{AD}3456\u{AD}7890\u{AD}128",
            "<BANK_CARD_1>",
        ),
        ("tel１３９\u{2060}１２３４８７６５", "tel<PHONE_1>"),
        ("<PHONE_\u{200B}1>", "<LITERAL_1>"),
    ] {
        assert_eq!(sanitised(text), expected, "{text}");
    }
}

#[test]
fn masks_and_hashes_read_full_width_digits_as_digits() {
    let mut policy = Policy::default();
    policy.set(Kind::Mobile, Action::Mask);
    policy.set(Kind::IdCard, Action::Hash);
    let sanitizer = PiiSanitizer::new(policy, b"k".to_vec());
    let mut vault = Vault::new();
    let mut clean = |text: &str| sanitizer.sanitize_text(text, &mut vault).unwrap();
    assert_eq!(clean("手机１３９１２３４８７６５"), "手机139****8765");
    assert_eq!(clean("手机139\u{200B}1234\u{200B}8765"), "手机139****8765");
    assert_eq!(
        clean("１１０１０５１９４９１２３１００２Ｘ"),
        clean("11010519491231002X")
    );
}

/// Every way of cutting one answer in two (and in one-character pieces).
#[test]
fn every_split_of_a_streamed_answer_restores_it() {
    let text = "卡号6222021234567890128，手机 13812345678；<PHONE_1> 字面 a<b 13812345678@x.cn";
    let mut vault = Vault::new();
    let answer = sanitizer().sanitize_text(text, &mut vault).unwrap();
    assert!(
        answer.contains("<PHONE_1>") && answer.contains("<BANK_CARD_1>"),
        "{answer}"
    );
    let vault = std::sync::Arc::new(vault);
    let boundaries: Vec<usize> = (0..=answer.len())
        .filter(|&i| answer.is_char_boundary(i))
        .collect();
    for &cut in &boundaries {
        check_stream(&vault, &answer, &[cut], text).unwrap();
    }
    check_stream(&vault, &answer, &boundaries, text).unwrap();
}

/// Streams `answer` cut at `points`; the client's text must equal `expected`, and
/// after every piece, what is held back must be no more than a placeholder's start.
fn check_stream(
    vault: &std::sync::Arc<Vault>,
    answer: &str,
    points: &[usize],
    expected: &str,
) -> Result<(), TestCaseError> {
    let mut stream = StreamRestorer::new(vault.clone());
    let mut sent = String::new();
    let mut at = 0;
    for &point in points.iter().chain([answer.len()].iter()) {
        if point < at {
            continue;
        }
        sent.push_str(&stream.push(&answer[at..point]));
        at = point;
        let whole_so_far = vault.restore(&answer[..at]);
        prop_assert!(
            whole_so_far.starts_with(&sent),
            "sent {sent:?} of {whole_so_far:?}"
        );
        let held = &whole_so_far[sent.len()..];
        prop_assert!(
            held.is_empty()
                || vault
                    .placeholders()
                    .any(|p| p.len() > held.len() && p.starts_with(held)),
            "held back {held:?}, which is not the start of a placeholder"
        );
    }
    sent.push_str(&stream.finish());
    prop_assert_eq!(sent, expected);
    Ok(())
}

mod guard {
    use std::sync::Arc;

    use proptest::prelude::*;
    use ragway::sanitize::guard::{GuardAction, GuardList, Verdict};

    const LIST: &str = "机密\nforbidden\nkb\nre:ab[0-9]{3}\n";

    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9 ]{0,8}",
            Just("机密".to_owned()),
            Just("FORBIDDEN".to_owned()),
            Just("forbid".to_owned()),
            Just("\u{212A}".to_owned()),
            Just("Ω İ ſ".to_owned()),
            Just("ab12".to_owned()),
            Just("3".to_owned()),
        ]
    }

    /// The text a stream sends, cut at `cuts`, and whether the guard ended it.
    fn streamed(list: &Arc<GuardList>, text: &str, cuts: &[prop::sample::Index]) -> (String, bool) {
        let boundaries: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|c| boundaries[c.index(boundaries.len())])
            .collect();
        points.sort_unstable();
        points.push(text.len());
        let mut stream = list.stream();
        let (mut sent, mut at) = (String::new(), 0);
        for point in points {
            let (out, cut) = stream.push(&text[at..point]);
            sent.push_str(&out);
            at = point;
            if cut {
                return (sent, true);
            }
        }
        let (rest, cut) = stream.finish();
        sent.push_str(&rest);
        (sent, cut)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn a_streamed_answer_is_guarded_as_the_whole_would_be(
            pieces in prop::collection::vec(piece(), 1..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let text = pieces.concat();
            let block = Arc::new(GuardList::parse(LIST, GuardAction::Block).unwrap());
            let expected = match block.check(&text) {
                Verdict::Blocked(before) => (before, true),
                _ => (text.clone(), false),
            };
            prop_assert_eq!(streamed(&block, &text, &cuts), expected);

            let mask = Arc::new(GuardList::parse(LIST, GuardAction::Mask).unwrap());
            let expected = match mask.check(&text) {
                Verdict::Masked(masked) => masked,
                _ => text.clone(),
            };
            prop_assert_eq!(streamed(&mask, &text, &cuts), (expected, false));
        }
    }
}
