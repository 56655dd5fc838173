//! Checks that the binaries' tests share, built with the `testing` feature.

use std::any::TypeId;

use clap::Parser;
use figment::value::{Dict, Value};
use serde::Serialize;

use crate::SettingRange;

/// Returns the largest value of the unsigned integer type that `parser` produces, or `None` for
/// a parser of another type.
fn whole_number_max(parser: &clap::builder::ValueParser) -> Option<u64> {
    let type_id = parser.type_id();
    [
        (TypeId::of::<u8>(), u64::from(u8::MAX)),
        (TypeId::of::<u16>(), u64::from(u16::MAX)),
        (TypeId::of::<u32>(), u64::from(u32::MAX)),
        (TypeId::of::<u64>(), u64::MAX),
        (
            TypeId::of::<usize>(),
            u64::try_from(usize::MAX).unwrap_or(u64::MAX),
        ),
    ]
    .into_iter()
    .find(|(id, _)| type_id == *id)
    .map(|(_, max)| max)
}

fn dict(value: &impl Serialize) -> Dict {
    Value::serialize(value)
        .expect("serializes")
        .into_dict()
        .expect("a table")
}

/// Checks every flag of `C`, the command line of `program`, against the whole-number settings
/// among `defaults` and their `ranges`. A flag must take a whole number exactly when its
/// setting is one, and take both ends of the setting's range as `--flag=value`. It must reject
/// -1, a word and the values just outside the range, as `--flag=value` and as `--flag value`,
/// with an error that names the flag and the range. Returns the settings checked, in flag
/// order.
///
/// # Panics
///
/// On the first flag that does not pass.
pub fn check_whole_number_flags<C: Parser + Serialize + std::fmt::Debug>(
    program: &str,
    defaults: &impl Serialize,
    ranges: &[SettingRange],
) -> Vec<String> {
    let parse = |args: &[String]| {
        C::try_parse_from(std::iter::once(program.to_owned()).chain(args.iter().cloned()))
    };
    let defaults = dict(defaults);
    let command = C::command();
    let mut checked = Vec::new();
    for arg in command.get_arguments() {
        let setting = arg.get_id().as_str();
        let is_whole_number_setting = defaults
            .get(setting)
            .is_some_and(|value| value.to_u128().is_some());
        let Some(type_max) = whole_number_max(arg.get_value_parser()) else {
            assert!(!is_whole_number_setting, "{setting} takes no whole number");
            continue;
        };
        assert!(
            is_whole_number_setting,
            "{setting} is no whole-number setting"
        );
        let flag = format!("--{}", arg.get_long().expect("a long flag"));
        let range = ranges.iter().find(|range| range.setting == setting);
        let min = range.map_or(0, |range| range.min);
        let max = range.and_then(|range| range.max).unwrap_or(type_max);
        let expected = if max == u64::MAX {
            format!("a whole number, {min} or more")
        } else {
            format!("a whole number from {min} to {max}")
        };

        for value in [min, max] {
            let cli = parse(&[format!("{flag}={value}")]).expect("a value in range");
            assert_eq!(
                dict(&cli).get(setting).and_then(Value::to_u128),
                Some(u128::from(value)),
                "{flag}={value}"
            );
        }
        let mut rejected = vec!["-1".to_owned(), "many".to_owned()];
        rejected.extend(min.checked_sub(1).map(|below| below.to_string()));
        rejected.extend((max < u64::MAX).then(|| (max + 1).to_string()));
        for value in rejected {
            for args in [
                vec![format!("{flag}={value}")],
                vec![flag.clone(), value.clone()],
            ] {
                let text = parse(&args).expect_err(&value).to_string();
                assert!(text.contains(&flag), "{args:?}: {text}");
                assert!(text.contains(&expected), "{args:?}: {text}");
            }
        }
        checked.push(setting.to_owned());
    }
    checked
}
