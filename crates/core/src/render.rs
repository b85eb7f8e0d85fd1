//! Plain text for terminals: the one table layout of every table waymark
//! prints (the status table of the CLI and the demo, the runner's report
//! and plan), and one-line shortening.

use std::fmt;
use std::time::Duration;

use crate::Migration;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// A plain-text table: a header, a rule under it, then rows, in columns
/// separated by two spaces and padded to their widest cell (counted in
/// characters). The one layout of every table waymark prints.
///
/// ```
/// use waymark_core::render::{Align, TextTable};
///
/// let mut table = TextTable::new(&[("id", Align::Right), ("name", Align::Left)]);
/// table.row(vec!["7".into(), "fill_pace".into()]);
/// assert_eq!(table.to_string(), "id  name\n--  ---------\n 7  fill_pace\n");
/// ```
#[derive(Debug, Clone)]
pub struct TextTable {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl TextTable {
    /// A table with these column titles and alignments, and no rows yet.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            columns: columns
                .iter()
                .map(|(title, align)| ((*title).to_owned(), *align))
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty, extra cells are ignored.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn widths(&self) -> Vec<usize> {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, (title, _))| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(i))
                    .map(|cell| cell.chars().count())
                    .chain([title.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect()
    }
}

impl fmt::Display for TextTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths = self.widths();
        let titles: Vec<String> = self.columns.iter().map(|(t, _)| t.clone()).collect();
        let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        for row in [&titles, &rules].into_iter().chain(&self.rows) {
            let mut line = String::new();
            for (i, ((_, align), width)) in self.columns.iter().zip(&widths).enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                let pad = width - cell.chars().count().min(*width);
                if i > 0 {
                    line.push_str("  ");
                }
                let right = *align == Align::Right;
                if right {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                line.push_str(cell);
                if !right {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Lays out `rows` under `headers` in left-aligned columns: a
/// [`TextTable`] of text columns, as a string.
///
/// ```
/// let text = waymark_core::render::render_table(&["id", "name"], &[vec!["1".into(), "fill_pace".into()]]);
/// assert_eq!(text, "id  name\n--  ---------\n1   fill_pace\n");
/// ```
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns: Vec<(&str, Align)> = headers.iter().map(|h| (*h, Align::Left)).collect();
    let mut table = TextTable::new(&columns);
    for row in rows {
        table.row(row.clone());
    }
    table.to_string()
}

/// Shortens `text` to at most `max` characters on one line, marking a cut with `…`.
pub fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// The status of tracked migrations as a table: id, name, state, when
/// executed, attempts, and the last error.
///
/// ```
/// use waymark_core::render::StatusTable;
/// use waymark_core::{Migration, MigrationDef};
///
/// let row = Migration::registered(&MigrationDef::new(1, "fill_pace", "")?);
/// let text = StatusTable(&[row]).to_string();
/// assert!(text.contains("fill_pace") && text.contains("pending"));
/// # Ok::<(), waymark_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct StatusTable<'a>(pub &'a [Migration]);

impl fmt::Display for StatusTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<Vec<String>> = self
            .0
            .iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    one_line(&m.name, 60),
                    m.state().to_string(),
                    m.executed_at
                        .and_then(|at| {
                            at.format(&time::format_description::well_known::Rfc3339)
                                .ok()
                        })
                        .unwrap_or_default(),
                    m.attempts.to_string(),
                    m.last_error
                        .as_deref()
                        .map(|e| one_line(e, 80))
                        .unwrap_or_default(),
                ]
            })
            .collect();
        f.write_str(&render_table(
            &[
                "id",
                "name",
                "state",
                "executed_at",
                "attempts",
                "last_error",
            ],
            &rows,
        ))
    }
}

/// A duration as people read it: `850µs`, `12ms`, `1.25s`, `3m07s`, `2h05m`.
pub fn human_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros < 1_000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        format!("{}ms", micros / 1_000)
    } else if duration.as_secs() < 60 {
        format!("{:.2}s", duration.as_secs_f64())
    } else if duration.as_secs() < 3_600 {
        format!(
            "{}m{:02}s",
            duration.as_secs() / 60,
            duration.as_secs() % 60
        )
    } else {
        format!(
            "{}h{:02}m",
            duration.as_secs() / 3_600,
            duration.as_secs() % 3_600 / 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_micros(850)), "850µs");
        assert_eq!(human_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(human_duration(Duration::from_millis(1250)), "1.25s");
        assert_eq!(human_duration(Duration::from_secs(187)), "3m07s");
        assert_eq!(human_duration(Duration::from_secs(7_500)), "2h05m");
    }

    #[test]
    fn columns_align_on_characters() {
        let text = render_table(
            &["a", "b"],
            &[
                vec!["é".into(), "x".into()],
                vec!["long".into(), "y".into()],
            ],
        );
        assert_eq!(text, "a     b\n----  -\né     x\nlong  y\n");
    }

    #[test]
    fn right_aligned_columns_pad_on_the_left() {
        let mut table = TextTable::new(&[("n", Align::Right), ("name", Align::Left)]);
        table.row(vec!["10".into(), "a".into()]);
        table.row(vec!["7".into()]);
        assert_eq!(table.to_string(), " n  name\n--  ----\n10  a\n 7\n");
    }

    #[test]
    fn one_line_flattens_and_cuts() {
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}
