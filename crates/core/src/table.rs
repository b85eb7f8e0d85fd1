//! Plain-text tables for terminals: the migration status table shown by the
//! CLI and the demo, and the layout the runner's report uses.

use std::fmt;

use crate::Migration;

/// Lays out `rows` under `headers` in left-aligned columns separated by two
/// spaces, with a rule under the headers; widths count characters.
///
/// ```
/// let text = waymark_core::render_table(&["id", "name"], &[vec!["1".into(), "fill_pace".into()]]);
/// assert_eq!(text, "id  name\n--  ---------\n1   fill_pace\n");
/// ```
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut rules.iter().map(String::as_str));
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
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
/// use waymark_core::{Migration, MigrationDef, StatusTable};
///
/// let row = Migration::pending(&MigrationDef::new(1, "fill_pace", "")?);
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
                    state(m).to_owned(),
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

/// `executed`, `failed` (pending after a failed attempt), `resumable`
/// (pending with a checkpoint) or `pending`.
pub fn state(m: &Migration) -> &'static str {
    if m.executed {
        "executed"
    } else if m.last_error.is_some() {
        "failed"
    } else if m.checkpoint.is_some() {
        "resumable"
    } else {
        "pending"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn one_line_flattens_and_cuts() {
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}
