//! Reading the settings file: once, within a size limit, checked to be TOML with only the
//! `[engine]` and `[logic]` tables.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map};
use figment::{Metadata, Profile, Provider};

use crate::ranges::{self, SettingRange};
use crate::text::{escape_control, is_secret, shown_name};
use crate::{ENGINE_FIELDS, LOGIC_FIELDS};

/// Tables allowed at the top level of a settings file.
pub const TABLES: [&str; 2] = ["engine", "logic"];

/// Largest settings file read, in bytes (1 MiB). The example im.toml is about 13 KiB, and the
/// limit stops a path such as /dev/zero from being read without end.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file named by `--config` or `IM_CONFIG` does not exist.
    #[error(
        "settings file {} not found: pass an existing file with --config or IM_CONFIG, or set \
         neither to use im.toml in the working directory if there is one, else the defaults",
        shown_path(.path)
    )]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The file cannot be read, or is a kind of file that is never read, such as a FIFO.
    #[error("cannot read the settings file {}: {reason}", shown_path(.path))]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The reason, such as the I/O error.
        reason: String,
    },
    /// The file is not valid TOML, such as a key given twice or a value missing after `=`.
    #[error(
        "parse error in the settings file {}{}: {reason}",
        shown_path(.path),
        location_text(*.location)
    )]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Line and column of the error, both from 1, when the parser gives them.
        location: Option<(usize, usize)>,
        /// The parser's message in one line, with a fix where the message lacks one.
        reason: String,
    },
    /// A decimal integer that does not fit the 64-bit signed integer of TOML, which the TOML
    /// parser rejects before any setting's own range is checked. The error gives the setting's
    /// range from [`crate::ENGINE_RANGES`] or [`crate::LOGIC_RANGES`] when it has one, else
    /// TOML's bound.
    #[error(
        "the settings file {}, line {line}: {key}{}{} is out of range{}",
        shown_path(.path),
        .value.as_ref().map(|value| format!(" = {value}")).unwrap_or_default(),
        .table.as_ref().map(|table| format!(" in {table}")).unwrap_or_default(),
        out_of_range_reason(*.range)
    )]
    IntegerOutOfRange {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// The key as written before `=`.
        key: String,
        /// The integer as written, or `None` when the key names a secret or no setting, whose
        /// value no error repeats.
        value: Option<String>,
        /// The last table header before the line, such as `[engine]`, if any.
        table: Option<String>,
        /// The range of the setting that the key names, or `None` when it names no setting
        /// with a range.
        range: Option<&'static SettingRange>,
    },
    /// A known table name is given a value that is not a single table, such as `[[engine]]` or
    /// `engine = 5`, whose settings would otherwise be skipped.
    #[error(
        "the settings file {} gives `{key}` a value that is not a table: write its settings \
         under one [{key}] header, not [[{key}]] or `{key} = ...`",
        shown_path(.path)
    )]
    NotATable {
        /// The file.
        path: PathBuf,
        /// The top-level key.
        key: String,
    },
    /// A known table name written in capitals, such as `[ENGINE]`: TOML names are
    /// case-sensitive, so its settings would otherwise be rejected as an unknown table.
    #[error(
        "the settings file {} holds `{key}`: table names are lower case, write [{lower}]",
        shown_path(.path)
    )]
    CapitalisedTable {
        /// The file.
        path: PathBuf,
        /// The top-level key as written.
        key: String,
        /// The table it names.
        lower: &'static str,
    },
    /// A top-level key other than the known tables, such as a misspelt table name.
    #[error(
        "the settings file {} holds `{key}`, which is neither [engine] nor [logic]: \
         check its spelling, and put every setting inside one of those tables",
        shown_path(.path)
    )]
    UnknownTable {
        /// The file.
        path: PathBuf,
        /// The top-level key.
        key: String,
    },
}

/// A settings file as [`read_file`] read it: figment parses this text instead of reading the
/// file again, so the checks and the size limit apply to what it loads. Errors about its
/// settings name the file, as for figment's own file provider.
#[derive(Debug, Clone)]
pub struct SettingsFile {
    path: PathBuf,
    text: String,
}

impl Provider for SettingsFile {
    fn metadata(&self) -> Metadata {
        Metadata::from("TOML file", self.path.as_path())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Toml::string(&self.text).data()
    }
}

/// Returns the settings file to read: `explicit` (from `--config` or `IM_CONFIG`) when given,
/// else `im.toml` when it exists in the working directory, else none. An explicit file that
/// does not exist is returned too, so that [`read_file`] reports it as not found.
pub fn settings_file_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    let local = Path::new("im.toml");
    // Not `is_file`: a directory or a FIFO of that name is reported rather than skipped.
    local.exists().then(|| local.to_path_buf())
}

/// Reads `path` once and checks that it is a TOML file whose top level holds only
/// [`TABLES`], each of them a table. A misspelt table or an array of tables is then reported
/// instead of being skipped with all its settings.
///
/// # Errors
///
/// [`FileError`] naming the file and, for an unknown key, that key. A TOML syntax error is
/// reported with its line and column, and an integer beyond 64 bits with its key. A directory,
/// a FIFO, a socket, a device other than /dev/null and a file of /proc, /sys or another kernel
/// file system are rejected unread. A file whose read would wait for input fails at once, and a
/// file larger than [`MAX_FILE_BYTES`] fails once one byte past the limit has been read.
pub fn read_file(path: &Path) -> Result<SettingsFile, FileError> {
    let text = read_settings_file(path)?;
    check_tables(path, &text)?;
    Ok(SettingsFile {
        path: path.to_path_buf(),
        text,
    })
}

fn check_tables(path: &Path, text: &str) -> Result<(), FileError> {
    let top: toml::Table =
        toml::from_str(text).map_err(|err| describe_syntax_error(path, text, &err))?;
    for (key, value) in top {
        if let Some(lower) = TABLES
            .iter()
            .find(|table| key != **table && key.eq_ignore_ascii_case(table))
        {
            return Err(FileError::CapitalisedTable {
                path: path.to_path_buf(),
                key: shown_name(&key),
                lower,
            });
        }
        if !TABLES.contains(&key.as_str()) {
            return Err(FileError::UnknownTable {
                path: path.to_path_buf(),
                key: shown_name(&key),
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

/// Reads `path` as UTF-8 text of at most [`MAX_FILE_BYTES`], without ever waiting for input.
/// Of the devices only /dev/null is allowed, and reads as an empty file. A directory, a FIFO, a
/// socket or another device is rejected before it is opened: opening a FIFO waits for a writer, a socket
/// cannot be opened as a file, and a device such as a terminal may wait for input forever. A
/// file of a kernel file system such as /proc is rejected before it is opened too (see
/// [`KERNEL_FILE_SYSTEMS`]). The file is opened with `O_NONBLOCK`, which changes nothing for a
/// regular file on disk, and both checks are repeated on the open file, so a path replaced in
/// between fails instead of blocking.
// NOTE: O_NONBLOCK has no effect on regular files, so a file on a network or FUSE file system
// that stops responding can still block the read.
fn read_settings_file(path: &Path) -> Result<String, FileError> {
    let unreadable = |reason: String| FileError::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    // Not `is_file`: /dev/null, an empty file that is no regular file, must pass.
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(FileError::NotFound {
                // Named absolute, so that a relative path shows the directory it was looked for in.
                path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            });
        }
        Err(err) => return Err(unreadable(err.to_string())),
    };
    check_file_type(&metadata).map_err(unreadable)?;
    check_file_system(path_file_system(path)).map_err(unreadable)?;

    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|err| unreadable(err.to_string()))?;
    let opened = file.metadata().map_err(|err| unreadable(err.to_string()))?;
    check_file_type(&opened).map_err(unreadable)?;
    check_file_system(open_file_system(&file)).map_err(unreadable)?;
    read_to_limit(file).map_err(unreadable)
}

/// Rejects a directory, a FIFO, a socket, and a device other than /dev/null, with the reason.
fn check_file_type(metadata: &std::fs::Metadata) -> Result<(), String> {
    let file_type = metadata.file_type();
    if file_type.is_dir() {
        return Err(
            "it is a directory, not a file: pass the path of a TOML file, such as im.toml"
                .to_owned(),
        );
    }
    if file_type.is_fifo() {
        let reason = "it is a FIFO (named pipe), which would block start-up until another \
                      process writes to it: pass a regular file";
        return Err(reason.to_owned());
    }
    if file_type.is_socket() {
        return Err("it is a socket, not a file: pass a regular file".to_owned());
    }
    let is_dev_null =
        || std::fs::metadata("/dev/null").is_ok_and(|null| null.rdev() == metadata.rdev());
    if file_type.is_block_device() || (file_type.is_char_device() && !is_dev_null()) {
        return Err(
            "it is a device, which may wait for input or never end: pass a regular file, or \
             /dev/null for no settings"
                .to_owned(),
        );
    }
    Ok(())
}

/// A file system whose files the kernel generates when they are read, or whose files are kernel
/// objects rather than stored data.
struct KernelFileSystem {
    /// The `f_type` that statfs(2) reports for it.
    magic: u32,
    /// The name that errors give.
    name: &'static str,
    /// Its type names in /proc/filesystems and /proc/self/mountinfo.
    // Read by the tests, which match these names against the mounts of the host.
    #[cfg_attr(not(test), allow(dead_code))]
    types: &'static [&'static str],
}

const fn kernel(
    magic: u32,
    name: &'static str,
    types: &'static [&'static str],
) -> KernelFileSystem {
    KernelFileSystem { magic, name, types }
}

/// File systems whose files are no settings file, with the `f_type` of each as Linux defines it
/// in include/uapi/linux/magic.h, or where a comment names another source file. Some of their
/// files look like empty regular files yet wait for input (/proc/kmsg, tracefs's trace_pipe),
/// and some change state when read (/proc/kmsg hands each kernel message to one reader only).
///
/// File systems that store what programs write are not listed, so their files pass: disk and
/// network file systems, FUSE, overlay, tmpfs (which devtmpfs is), ramfs and hugetlbfs. A
/// hugetlbfs file contains the huge pages a program has mapped, and reading it returns them
/// without waiting. Also unlisted are autofs, whose directories only trigger mounts of other
/// file systems, and bdev, dax and the like, which no path reaches.
const KERNEL_FILE_SYSTEMS: &[KernelFileSystem] = &[
    kernel(0x9fa0, "procfs (/proc)", &["proc"]),
    kernel(0x6265_6572, "sysfs (/sys)", &["sysfs"]),
    kernel(0x6462_6720, "debugfs", &["debugfs"]),
    kernel(0x7472_6163, "tracefs", &["tracefs"]),
    kernel(0x7363_6673, "securityfs", &["securityfs"]),
    // A cpuset mount is a cgroup v1 hierarchy of the cpuset controller.
    kernel(0x0027_e0eb, "cgroup", &["cgroup", "cpuset"]),
    kernel(0x6367_7270, "cgroup2", &["cgroup2"]),
    kernel(0xcafe_4a11, "bpf", &["bpf"]),
    kernel(0x6165_676c, "pstore", &["pstore"]),
    kernel(0xde5e_81e4, "efivarfs", &["efivarfs"]),
    // fs/configfs/mount.c.
    kernel(0x6265_6570, "configfs", &["configfs"]),
    // fs/fuse/control.c: the control files of FUSE connections, not a FUSE file system.
    kernel(0x6573_5543, "fusectl", &["fusectl"]),
    // ipc/mqueue.c.
    kernel(0x1980_0202, "mqueue", &["mqueue"]),
    kernel(0x1cd1, "devpts", &["devpts"]),
    kernel(0x4249_4e4d, "binfmt_misc", &["binfmt_misc"]),
    kernel(0xf97c_ff8c, "selinuxfs", &["selinuxfs"]),
    kernel(0x4341_5d53, "smackfs", &["smackfs"]),
    kernel(0x5a3c_69f0, "apparmorfs", &["apparmorfs"]),
    kernel(0x0765_5821, "resctrl", &["resctrl"]),
    kernel(0x6c6f_6f70, "binderfs", &["binder"]),
    kernel(0x9fa1, "openpromfs", &["openpromfs"]),
    kernel(0x9fa2, "usbfs", &["usbfs"]),
    kernel(0xabba_1974, "xenfs", &["xenfs"]),
    // fs/nfsd/nfsctl.c: the NFS server's control files.
    kernel(0x6e66_7364, "nfsd", &["nfsd"]),
    // net/sunrpc/rpc_pipe.c: pipes between the kernel and the NFS daemons.
    kernel(0x6759_6969, "rpc_pipefs", &["rpc_pipefs"]),
    // These are reached only through a link in /proc/<pid>/fd, such as /dev/stdin when the
    // standard input is an eventfd.
    kernel(0x5049_5045, "pipefs", &["pipefs"]),
    kernel(0x534f_434b, "sockfs", &["sockfs"]),
    kernel(0x0904_1934, "anon_inodefs", &["anon_inodefs"]),
    kernel(0x6e73_6673, "nsfs", &["nsfs"]),
    kernel(0x5049_4446, "pidfs", &["pidfs"]),
    kernel(0x444d_4142, "dmabuf", &["dmabuf"]),
    kernel(0x5345_434d, "secretmem", &["secretmem"]),
];

/// Rejects a file of one of the [`KERNEL_FILE_SYSTEMS`], given the `f_type` of its file system.
/// A file system that statfs(2) cannot identify is let through, and `O_NONBLOCK` still keeps a
/// pipe, a terminal or a kernel interface such as /proc/kmsg from blocking the read.
fn check_file_system(file_system: Option<u32>) -> Result<(), String> {
    let Some(file_system) = file_system else {
        return Ok(());
    };
    match KERNEL_FILE_SYSTEMS
        .iter()
        .find(|kernel| kernel.magic == file_system)
    {
        Some(kernel) => Err(format!(
            "it is a file of {}, which the kernel generates when it is read and which may \
             wait for input or change when read: pass a regular file",
            kernel.name
        )),
        None => Ok(()),
    }
}

/// Returns the low 32 bits of an `f_type`, in which Linux defines every magic number. The
/// type of `f_type` differs between architectures (a signed `long` on most, `unsigned int` on
/// s390x), and on a 32-bit `long` a magic such as 0xcafe4a11 reads as a negative number.
fn magic_number(f_type: i128) -> Option<u32> {
    u32::try_from(f_type & 0xffff_ffff).ok()
}

/// Returns the magic number of the file system that contains `path`, following symbolic links,
/// or `None` when statfs(2) fails.
fn path_file_system(path: &Path) -> Option<u32> {
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string, and `stat` is writable memory of the size of
    // the structure that statfs fills. It is read only when the call succeeds.
    let result = unsafe { libc::statfs(path.as_ptr(), stat.as_mut_ptr()) };
    if result != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled `stat`.
    magic_number(i128::from(unsafe { stat.assume_init() }.f_type))
}

/// Returns the magic number of the file system that contains the open `file`, or `None` when
/// fstatfs(2) fails.
fn open_file_system(file: &std::fs::File) -> Option<u32> {
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: the descriptor stays open while `file` is borrowed, and `stat` is writable memory
    // of the size of the structure that fstatfs fills. It is read only when the call succeeds.
    let result = unsafe { libc::fstatfs(file.as_raw_fd(), stat.as_mut_ptr()) };
    if result != 0 {
        return None;
    }
    // SAFETY: fstatfs returned 0, so it filled `stat`.
    magic_number(i128::from(unsafe { stat.assume_init() }.f_type))
}

/// Reads `file`, opened with `O_NONBLOCK`, as UTF-8 text of at most [`MAX_FILE_BYTES`]. A read
/// that would wait for input fails with `EAGAIN` instead, which becomes the error's reason.
fn read_to_limit(file: std::fs::File) -> Result<String, String> {
    let would_block = "reading it would wait for input, as from a terminal, a pipe or a kernel \
                       interface: pass a regular file";
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::WouldBlock => would_block.to_owned(),
            _ => err.to_string(),
        })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "it is larger than the maximum of {MAX_FILE_BYTES} bytes (1 MiB) for a settings file"
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| "it is not UTF-8 text, which TOML requires: save it as UTF-8".to_owned())
}

/// Returns " at line L, column C" for a syntax error's location, or nothing without one.
fn location_text(location: Option<(usize, usize)>) -> String {
    location
        .map(|(line, column)| format!(" at line {line}, column {column}"))
        .unwrap_or_default()
}

/// Returns `path` for an error message, with control characters escaped.
fn shown_path(path: &Path) -> String {
    escape_control(&path.display().to_string()).into_owned()
}

/// Turns a TOML parse error into one line: [`FileError::IntegerOutOfRange`] when the line of
/// the error reads `key = <decimal integer beyond i64>`, else the parser's message with its line
/// and column, without the parser's multi-line excerpt of the file.
fn describe_syntax_error(path: &Path, text: &str, err: &toml::de::Error) -> FileError {
    let message = with_fix(parser_message(err.message()));
    let Some(offset) = err.span().map(|span| span.start) else {
        return FileError::Syntax {
            path: path.to_path_buf(),
            location: None,
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
        let table = last_table_header(&text[..line_start]);
        return FileError::IntegerOutOfRange {
            path: path.to_path_buf(),
            line: line_number,
            key: shown_name(key),
            value: may_show_value(key).then(|| shown_name(value)),
            range: setting_range(table.as_deref(), key),
            table: table.map(|table| shown_name(&table)),
        };
    }
    let column = text[line_start..offset].chars().count() + 1;
    let reason = if is_value_missing(&text[line_start..offset], &text[offset..line_end]) {
        "a value is missing after `=`".to_owned()
    } else {
        message
    };
    FileError::Syntax {
        path: path.to_path_buf(),
        location: Some((line_number, column)),
        reason,
    }
}

/// Appends what to do to a parser message that does not say it, such as "duplicate key
/// `shards` in table `engine`".
fn with_fix(message: String) -> String {
    if message.starts_with("duplicate key") {
        return format!("{message}: keep one of them");
    }
    message
}

/// Joins the lines of the TOML parser's message into one, such as "invalid table header:
/// expected `.`, `]`". An empty message, which toml 0.8 gives for some errors at the end of
/// the file, becomes "invalid TOML".
fn parser_message(message: &str) -> String {
    let mut parts = message
        .lines()
        .map(str::trim)
        .filter(|part| !part.is_empty());
    let Some(first) = parts.next() else {
        return "invalid TOML".to_owned();
    };
    let rest = parts.collect::<Vec<_>>();
    let joined = if rest.is_empty() {
        first.to_owned()
    } else {
        format!("{first}: {}", rest.join("; "))
    };
    escape_control(&joined).into_owned()
}

/// True when an error at the boundary of `before` and `after`, the two parts of its line, comes
/// from a `key =` with nothing but blanks or a comment after the `=`.
fn is_value_missing(before: &str, after: &str) -> bool {
    let after = after.trim();
    before.trim_end().ends_with('=') && (after.is_empty() || after.starts_with('#'))
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

/// Returns the reason that [`FileError::IntegerOutOfRange`] gives after "is out of range".
fn out_of_range_reason(range: Option<&SettingRange>) -> String {
    match range {
        Some(range) => format!(", expected {}", ranges::describe_file_range(range)),
        None => {
            ": a TOML integer must be from -9223372036854775808 to 9223372036854775807".to_owned()
        }
    }
}

/// True when an error may repeat the value of `key`: it names a setting of either table, and
/// no secret one. A key that names no setting may be a misspelt secret.
fn may_show_value(key: &str) -> bool {
    let setting = key_parts(key).pop().unwrap_or_default();
    let known =
        ENGINE_FIELDS.contains(&setting.as_str()) || LOGIC_FIELDS.contains(&setting.as_str());
    known && !is_secret(key)
}

/// Returns the range in [`crate::ENGINE_RANGES`] or [`crate::LOGIC_RANGES`] of the setting
/// that `key` names under the header `table`, such as `max_friends_per_user` under `[logic]` or
/// `logic.max_friends_per_user` with no header. Returns `None` when the key names no setting
/// with a range.
fn setting_range(table: Option<&str>, key: &str) -> Option<&'static SettingRange> {
    let mut parts = table
        .map(|header| key_parts(header.trim_start_matches('[').trim_end_matches(']')))
        .unwrap_or_default();
    parts.extend(key_parts(key));
    let [table, setting] = parts.as_slice() else {
        return None;
    };
    ranges::ranges_for_table(table)
        .iter()
        .find(|range| range.setting == setting)
}

/// Splits a TOML key such as `logic."max_friends_per_user"` into its parts, without the spaces
/// and quotes around each.
// NOTE: a quoted part that contains a dot is split at that dot too.
fn key_parts(key: &str) -> Vec<String> {
    key.split('.')
        .map(|part| part.trim().trim_matches(['"', '\'']).trim().to_owned())
        .collect()
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::OpenOptionsExt;

    use super::*;

    /// Creates a FIFO at a fresh path under the temporary directory.
    fn make_fifo(name: &str) -> PathBuf {
        let fifo = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo runs");
        assert!(status.success(), "mkfifo {}", fifo.display());
        fifo
    }

    #[test]
    fn silent_fifo_read_fails_without_blocking() {
        let fifo = make_fifo("im-settings-silent-fifo");
        // A writer that never writes: a blocking read would wait for it forever. O_RDWR opens a
        // FIFO on Linux without waiting for the other end.
        let _writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .expect("open the writing end");
        let reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("open the reading end");

        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(read_to_limit(reader));
        });
        let result = receiver.recv_timeout(std::time::Duration::from_secs(10));
        let _ = std::fs::remove_file(&fifo);

        let reason = result
            .expect("the read ends within 10 s")
            .expect_err("no input");
        assert_eq!(
            reason,
            "reading it would wait for input, as from a terminal, a pipe or a kernel interface: \
             pass a regular file"
        );
    }

    #[test]
    fn kernel_file_systems_are_named() {
        let proc_fs = path_file_system(Path::new("/proc/self/status"));
        let proc_reason = check_file_system(proc_fs).expect_err("procfs");
        let tmp_fs = path_file_system(&std::env::temp_dir());

        assert_eq!(proc_fs, Some(0x9fa0));
        assert!(proc_reason.contains("procfs (/proc)"), "{proc_reason}");
        assert!(check_file_system(tmp_fs).is_ok(), "{tmp_fs:?}");
        assert!(check_file_system(None).is_ok());
    }

    /// File systems that /proc/filesystems may list as `nodev` whose files are stored data, so
    /// a settings file may be on them (see [`KERNEL_FILE_SYSTEMS`]).
    const DATA_FILE_SYSTEMS: &[&str] = &[
        "tmpfs",
        "devtmpfs",
        "ramfs",
        "hugetlbfs",
        "fuse",
        "overlay",
        "autofs",
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "9p",
        "virtiofs",
        "ceph",
        "afs",
    ];

    #[test]
    fn kernel_file_system_table_has_no_duplicates() {
        for (index, kernel) in KERNEL_FILE_SYSTEMS.iter().enumerate() {
            for other in &KERNEL_FILE_SYSTEMS[index + 1..] {
                assert_ne!(
                    kernel.magic, other.magic,
                    "{} and {}",
                    kernel.name, other.name
                );
                for name in kernel.types {
                    assert!(!other.types.contains(name), "{name} appears twice");
                }
            }
            for name in kernel.types {
                assert!(!DATA_FILE_SYSTEMS.contains(name), "{name} is in both lists");
            }
        }
    }

    /// Returns each file system type that this host's kernel registers, from /proc/filesystems,
    /// with whether it is `nodev`: one that needs no block device.
    fn registered_file_systems() -> Vec<(bool, String)> {
        let text = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (flag, name) = line.split_once('\t')?;
                Some((flag == "nodev", name.trim().to_owned()))
            })
            .collect()
    }

    /// Checks that every file system of this host without a device of its own is in one of
    /// the lists: generated by the kernel, or storing data. A file system new to the kernel
    /// fails here, so that it cannot pass as a settings file unnoticed. The result depends on
    /// the host's kernel, so the suite skips this test: run it on a new kernel with
    /// `cargo test -p im-settings -- --ignored`.
    #[test]
    #[ignore = "depends on the file systems of the host's kernel"]
    fn nodev_file_systems_of_host_are_sorted() {
        let kernel_types: Vec<&str> = KERNEL_FILE_SYSTEMS
            .iter()
            .flat_map(|kernel| kernel.types.iter().copied())
            .collect();
        for (nodev, name) in registered_file_systems() {
            if !nodev {
                continue;
            }
            assert!(
                kernel_types.contains(&name.as_str()) || DATA_FILE_SYSTEMS.contains(&name.as_str()),
                "{name} is neither in KERNEL_FILE_SYSTEMS nor in DATA_FILE_SYSTEMS"
            );
        }
    }

    /// Returns the type and mount point of each mount of this process, from
    /// /proc/self/mountinfo. A mount point with an escaped character, such as `\040` for a
    /// space, is left out.
    fn mounts() -> Vec<(String, PathBuf)> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let (mount, rest) = line.split_once(" - ")?;
                let file_system = rest.split_whitespace().next()?;
                let mount_point = mount.split_whitespace().nth(4)?;
                (!mount_point.contains('\\'))
                    .then(|| (file_system.to_owned(), PathBuf::from(mount_point)))
            })
            .collect()
    }

    /// Returns a regular file at most two levels below `directory`, found without reading any
    /// file: reading some kernel files waits for input or changes state.
    fn regular_file_below(directory: &Path) -> Option<PathBuf> {
        let mut directories = vec![directory.to_path_buf()];
        for _ in 0..2 {
            let mut next = Vec::new();
            for directory in directories {
                let Ok(entries) = std::fs::read_dir(&directory) else {
                    continue;
                };
                let mut entries: Vec<_> = entries.flatten().take(200).collect();
                entries.sort_by_key(std::fs::DirEntry::file_name);
                for entry in entries {
                    match entry.file_type() {
                        Ok(kind) if kind.is_file() => return Some(entry.path()),
                        Ok(kind) if kind.is_dir() => next.push(entry.path()),
                        _ => {}
                    }
                }
            }
            directories = next;
        }
        None
    }

    /// Each mount of a listed type on this host, such as a cgroup or cgroup2 hierarchy under
    /// /sys/fs/cgroup, reports the listed magic number, and a regular file in it is rejected as a
    /// settings file before it is opened.
    #[test]
    fn files_of_kernel_mounts_are_rejected_unread() {
        let mut checked = Vec::new();
        for (file_system, mount_point) in mounts() {
            let Some(kernel) = KERNEL_FILE_SYSTEMS
                .iter()
                .find(|kernel| kernel.types.contains(&file_system.as_str()))
            else {
                continue;
            };
            let magic = path_file_system(&mount_point);
            assert_eq!(
                magic,
                Some(kernel.magic),
                "{file_system} at {}",
                mount_point.display()
            );
            let Some(file) = regular_file_below(&mount_point) else {
                continue;
            };

            let result = read_settings_file(&file);

            let reason = match result {
                Ok(_) => panic!("{} was read as a settings file", file.display()),
                Err(err) => err.to_string(),
            };
            assert!(
                reason.contains(&format!("it is a file of {}", kernel.name)),
                "{}: {reason}",
                file.display()
            );
            checked.push(file);
        }
        eprintln!("rejected {} kernel files: {checked:?}", checked.len());
    }

    #[test]
    fn regular_file_is_read_through_nonblocking_open() {
        let path = std::env::temp_dir().join(format!("im-settings-plain-{}", std::process::id()));
        std::fs::write(&path, "[engine]\nshards = 2\n").expect("write");

        let text = read_settings_file(&path);
        let _ = std::fs::remove_file(&path);

        assert_eq!(text.expect("a regular file"), "[engine]\nshards = 2\n");
    }
}
