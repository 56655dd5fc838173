//! The group cache: the id of each bench group by name, so that reruns reuse a group instead
//! of creating another. The file is tab-separated, `name  group_id`, one group a line; lines
//! starting with `#` are comments.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

const HEADER: &str = "# name\tgroup_id";

/// Group ids by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct GroupCache {
    pub(crate) groups: BTreeMap<String, u64>,
}

impl GroupCache {
    /// Parses the file's text, skipping malformed lines: a group missing from the cache is
    /// looked up by name or created again.
    pub(crate) fn parse(text: &str) -> GroupCache {
        let groups = text
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .filter_map(|line| {
                let (name, id) = line.split_once('\t')?;
                let id = id.trim_end().parse().ok()?;
                (!name.is_empty()).then(|| (name.to_owned(), id))
            })
            .collect();
        GroupCache { groups }
    }

    /// Formats the cache as file text, sorted by name.
    pub(crate) fn to_text(&self) -> String {
        let mut text = String::from(HEADER);
        text.push('\n');
        for (name, id) in &self.groups {
            text.push_str(&format!("{name}\t{id}\n"));
        }
        text
    }

    /// Reads the cache at `path`. A missing file is an empty cache.
    pub(crate) fn load(path: &Path) -> std::io::Result<GroupCache> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(GroupCache::parse(&text)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(GroupCache::default()),
            Err(error) => Err(error),
        }
    }

    /// Writes the cache to `path` through a temporary file and a rename, creating the parent
    /// directory.
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.tmp", std::process::id()));
        let temporary = path.with_file_name(name);
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(self.to_text().as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    }
}

/// Returns the group cache file of the users named `<prefix>-...` in `dir`.
pub(crate) fn group_cache_path(dir: &Path, prefix: &str) -> PathBuf {
    dir.join(format!("{prefix}-groups.tsv"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_groups_and_skips_bad_lines() {
        let text = "# name\tgroup_id\nbench-group-500\t42\nbad line\nbench-group-3\tx\n\t7\nbench-group-10\t9\r\n";

        let cache = GroupCache::parse(text);

        assert_eq!(cache.groups.len(), 2);
        assert_eq!(cache.groups["bench-group-500"], 42);
        assert_eq!(cache.groups["bench-group-10"], 9);
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = std::env::temp_dir().join(format!("im-bench-groups-{}", std::process::id()));
        let path = group_cache_path(&dir, "bench");
        let mut cache = GroupCache::default();
        cache.groups.insert("bench-group-500".into(), 42);

        cache.save(&path).expect("save");
        let loaded = GroupCache::load(&path).expect("load");
        std::fs::remove_dir_all(&dir).expect("clean up");

        assert_eq!(loaded, cache);
    }

    #[test]
    fn missing_file_is_empty() {
        let path = std::env::temp_dir().join("im-bench-no-such-dir/bench-groups.tsv");

        let cache = GroupCache::load(&path).expect("load");

        assert!(cache.groups.is_empty());
    }
}
