//! `--check-config` of both binaries: the settings are loaded and validated, and the process
//! exits without binding or connecting.

mod procs;

use std::process::{Command, Output};

use procs::binary;

/// Runs `name --check-config` with an empty settings file and, of the settings variables,
/// only `vars`.
fn check(name: &str, vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary(name));
    command.args(["--check-config", "--config", "/dev/null"]);
    // Settings of the environment the tests run in would be checked too.
    for (variable, _) in std::env::vars_os() {
        let upper = variable.to_string_lossy().to_ascii_uppercase();
        if upper.starts_with("IM_ENGINE_") || upper.starts_with("IM_LOGIC_") {
            command.env_remove(&variable);
        }
    }
    for (variable, value) in vars {
        command.env(variable, value);
    }
    command.output().expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn valid_settings_exit_zero() {
    for name in ["im-engine", "im-logic"] {
        let output = check(name, &[]);

        assert_eq!(output.status.code(), Some(0), "{name}: {}", text(&output));
    }
}

#[test]
fn misspelt_variable_exits_two_with_a_guess() {
    for (name, misspelt, meant) in [
        ("im-engine", "IM_ENGINE_SHARDZ", "IM_ENGINE_SHARDS"),
        ("im-logic", "IM_LOGIC_DB_POOL", "IM_LOGIC_DB_POOL_SIZE"),
    ] {
        let output = check(name, &[(misspelt, "2")]);
        let text = text(&output);

        assert_eq!(output.status.code(), Some(2), "{name}: {text}");
        assert!(
            text.contains(&format!("did you mean {meant}?")),
            "{name}: {text}"
        );
    }
}

#[test]
fn logs_go_to_stderr() {
    for (name, line) in [
        ("im-engine", "engine configuration is valid"),
        ("im-logic", "logic configuration is valid"),
    ] {
        let output = check(name, &[]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);

        assert!(stdout.is_empty(), "{name} wrote to stdout: {stdout}");
        assert!(stderr.contains(line), "{name}: {stderr}");
    }
}
