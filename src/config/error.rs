//! Config errors that point at the exact place in the file.
//!
//! Every problem renders as `FILE:LINE:COL: KEY.PATH: what is wrong`, the format compilers use,
//! so editors and terminals can jump to it.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use toml::de::{DeTable, DeValue};

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid config; every problem found is listed.
    #[error("{}", ProblemList(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid(problems) => problems,
        }
    }
}

struct ProblemList<'a>(&'a [Problem]);

impl fmt::Display for ProblemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// One thing wrong with a config file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path such as `pools.app.backends[1]`; empty for a syntax error outside any key.
    pub key: String,
    /// What is wrong, in plain words.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Turns byte offsets in one source text into [`Problem`]s.
pub(crate) struct Locator<'a> {
    file: &'a str,
    source: &'a str,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(file: &'a str, source: &'a str) -> Self {
        Self { file, source }
    }

    /// The file name used in messages.
    pub(crate) fn file(&self) -> &str {
        self.file
    }

    /// A problem at byte `offset` of the source.
    pub(crate) fn problem(
        &self,
        offset: usize,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Problem {
        let (line, column) = line_column(self.source, offset);
        Problem {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }

    /// A problem for a TOML syntax or type error, with the key path recovered from its span.
    pub(crate) fn toml_problem(
        &self,
        err: &toml::de::Error,
        root: Option<&DeTable<'_>>,
    ) -> Problem {
        let offset = err.span().map_or(0, |span| span.start);
        let key = root
            .map(|root| key_path_at(root, offset))
            .unwrap_or_default();
        self.problem(offset, key, err.message().trim_end())
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The dotted key path of the innermost key or value whose span contains `offset`.
pub(crate) fn key_path_at(root: &DeTable<'_>, offset: usize) -> String {
    let mut path = String::new();
    walk_table(root, offset, &mut path);
    path
}

fn contains(span: Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn walk_table(table: &DeTable<'_>, offset: usize, path: &mut String) {
    for (key, value) in table {
        let in_key = contains(key.span(), offset);
        let in_value = contains(value.span(), offset);
        if in_key || in_value {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(key.get_ref());
            if in_value {
                walk_value(value.get_ref(), offset, path);
            }
            return;
        }
    }
    // Headers such as `[pools.app]` put the table's own span on the header, not on the keys
    // inside; fall back to the nearest key that starts before the offset.
    let nearest = table
        .iter()
        .filter(|(key, _)| key.span().start <= offset)
        .max_by_key(|(key, _)| key.span().start);
    if let Some((key, value)) = nearest {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key.get_ref());
        walk_value(value.get_ref(), offset, path);
    }
}

fn walk_value(value: &DeValue<'_>, offset: usize, path: &mut String) {
    match value {
        DeValue::Table(table) => walk_table(table, offset, path),
        DeValue::Array(array) => {
            let items: Vec<_> = array.iter().collect();
            let hit = items
                .iter()
                .position(|item| contains(item.span(), offset))
                .or_else(|| {
                    // Arrays of tables (`[[listeners]]`): pick the last entry starting before.
                    items.iter().rposition(|item| item.span().start <= offset)
                });
            if let Some(index) = hit {
                path.push_str(&format!("[{index}]"));
                walk_value(items[index].get_ref(), offset, path);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 6), (2, 1));
        assert_eq!(line_column(src, 11), (2, 6));
    }

    #[test]
    fn key_path_finds_array_elements_and_nested_tables() {
        let src = "[pools.app]\nbackends = [\"a:1\", \"b:2\"]\nretries = 2\n";
        let root = DeTable::parse(src).expect("valid toml");
        let offset = src.find("\"b:2\"").expect("present");
        assert_eq!(key_path_at(root.get_ref(), offset), "pools.app.backends[1]");
        let offset = src.find("retries").expect("present");
        assert_eq!(key_path_at(root.get_ref(), offset), "pools.app.retries");
    }

    #[test]
    fn key_path_finds_array_of_tables_entries() {
        let src = "[[listeners]]\nname = \"a\"\n\n[[listeners]]\nname = \"b\"\nbogus = 1\n";
        let root = DeTable::parse(src).expect("valid toml");
        let offset = src.find("bogus").expect("present");
        assert_eq!(key_path_at(root.get_ref(), offset), "listeners[1].bogus");
    }
}
