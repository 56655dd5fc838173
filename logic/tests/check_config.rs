//! `im-logic --check-config`: checks the settings and exits without binding or connecting.

use std::process::{Command, Output};

/// Runs `im-logic --check-config` with an empty settings file and, of the settings
/// variables, only `vars`.
fn check(vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_im-logic"));
    command.args(["--check-config", "--config", "/dev/null"]);
    // Settings of the environment the tests run in would be checked too.
    for (name, _) in std::env::vars_os() {
        let upper = name.to_string_lossy().to_ascii_uppercase();
        if upper.starts_with("IM_ENGINE_") || upper.starts_with("IM_LOGIC_") {
            command.env_remove(&name);
        }
    }
    for (name, value) in vars {
        command.env(name, value);
    }
    command.output().expect("im-logic runs")
}

#[test]
fn valid_settings_exit_zero() {
    let output = check(&[]);

    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn misspelt_variable_exits_two_with_a_guess() {
    let output = check(&[("IM_LOGIC_DB_POOL", "2")]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("did you mean IM_LOGIC_DB_POOL_SIZE?"),
        "{text}"
    );
}
