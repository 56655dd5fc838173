//! The check that a settings file is TOML with only the `[engine]` and `[logic]` tables.

use std::path::{Path, PathBuf};

/// Tables allowed at the top level of a settings file.
pub const TABLES: [&str; 2] = ["engine", "logic"];

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file is missing, unreadable or not TOML.
    #[error("cannot read the settings file {}: {reason}", .path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The reason, such as the I/O or TOML error.
        reason: String,
    },
    /// A decimal integer that does not fit the 64-bit signed integer of TOML, which the TOML
    /// parser rejects before any setting's own range is checked.
    #[error(
        "the settings file {}, line {line}: {key} = {value}{} is out of range: a TOML integer \
         must be from -9223372036854775808 to 9223372036854775807",
        .path.display(),
        .table.as_ref().map(|table| format!(" in {table}")).unwrap_or_default()
    )]
    IntegerOutOfRange {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// The key as written before `=`.
        key: String,
        /// The integer as written.
        value: String,
        /// The last table header before the line, such as `[engine]`, if any.
        table: Option<String>,
    },
    /// A known table name is given a value that is not a single table, such as `[[engine]]` or
    /// `engine = 5`, whose settings would otherwise be skipped.
    #[error(
        "the settings file {} gives `{key}` a value that is not a table: write its settings \
         under one [{key}] header, not [[{key}]] or `{key} = ...`",
        .path.display()
    )]
    NotATable {
        /// The file.
        path: PathBuf,
        /// The top-level key.
        key: String,
    },
    /// A top-level key other than the known tables, such as a misspelt table name.
    #[error(
        "the settings file {} holds `{key}`, which is neither [engine] nor [logic]: \
         check its spelling, and put every setting inside one of those tables",
        .path.display()
    )]
    UnknownTable {
        /// The file.
        path: PathBuf,
        /// The top-level key.
        key: String,
    },
}

/// Checks that `path` is a TOML file whose top level contains only [`TABLES`], each of them a
/// table, so that a misspelt table or an array of tables is reported instead of being skipped
/// with all its settings.
///
/// # Errors
///
/// [`FileError`] naming the file and, for an unknown key, that key. A TOML syntax error is
/// reported with its line and column, and an integer beyond 64 bits with its key.
pub fn check_tables(path: &Path) -> Result<(), FileError> {
    let unreadable = |reason: String| FileError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    // Not `is_file`: /dev/null, an empty file that is no regular file, must pass.
    if !path.exists() {
        return Err(unreadable(
            "no such file: pass an existing file with --config or IM_CONFIG, or set neither to \
             use im.toml in the working directory if there is one, else the defaults"
                .to_owned(),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|err| unreadable(err.to_string()))?;
    let top: toml::Table =
        toml::from_str(&text).map_err(|err| describe_syntax_error(path, &text, &err))?;
    for (key, value) in top {
        if !TABLES.contains(&key.as_str()) {
            return Err(FileError::UnknownTable {
                path: path.to_path_buf(),
                key,
            });
        }
        if !value.is_table() {
            return Err(FileError::NotATable {
                path: path.to_path_buf(),
                key,
            });
        }
    }
    Ok(())
}

/// Turns a TOML parse error into one line: [`FileError::IntegerOutOfRange`] when the line of
/// the error reads `key = <decimal integer beyond i64>`, else the parser's message with its line
/// and column, without the parser's multi-line excerpt of the file.
fn describe_syntax_error(path: &Path, text: &str, err: &toml::de::Error) -> FileError {
    let message = err.message().trim().replace('\n', " ");
    let Some(offset) = err.span().map(|span| span.start) else {
        return FileError::Unreadable {
            path: path.to_path_buf(),
            reason: message,
        };
    };
    let line_start = text[..offset].rfind('\n').map_or(0, |newline| newline + 1);
    let line_number = text[..line_start].matches('\n').count() + 1;
    let line_end = text[offset..]
        .find('\n')
        .map_or(text.len(), |end| offset + end);
    let line = &text[line_start..line_end];
    if let Some((key, value)) = integer_beyond_i64(line) {
        return FileError::IntegerOutOfRange {
            path: path.to_path_buf(),
            line: line_number,
            key: key.to_owned(),
            value: value.to_owned(),
            table: last_table_header(&text[..line_start]),
        };
    }
    let column = text[line_start..offset].chars().count() + 1;
    FileError::Unreadable {
        path: path.to_path_buf(),
        reason: format!("line {line_number}, column {column}: {message}"),
    }
}

/// Returns the key and value of a `key = value` line whose value is a decimal integer that
/// does not fit in an `i64`, such as `shards = 99999999999999999999999 # comment`.
fn integer_beyond_i64(line: &str) -> Option<(&str, &str)> {
    let (key, rest) = line.split_once('=')?;
    let value = rest.split('#').next()?.trim();
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    let is_decimal = digits.starts_with(|c: char| c.is_ascii_digit())
        && digits.chars().all(|c| c.is_ascii_digit() || c == '_');
    if !is_decimal || value.replace('_', "").parse::<i64>().is_ok() {
        return None;
    }
    Some((key.trim(), value))
}

/// Returns the last table header, such as `[engine]`, in `text`.
// NOTE: a line inside a multi-line string that looks like a header is taken as one.
fn last_table_header(text: &str) -> Option<String> {
    text.lines().rev().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default().trim();
        let name = line.strip_prefix('[')?.strip_suffix(']')?;
        let is_key = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.[] \"'".contains(c));
        is_key.then(|| line.to_owned())
    })
}
