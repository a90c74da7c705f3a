//! Tables with aligned columns, the one table type of every report (the `replica`
//! command colours them; here they are plain text and markdown).

use std::fmt;

use crate::printable;

/// A table of text cells.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Column headers.
    pub headers: Vec<String>,
    /// Rows of cells, one per header.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row. Control characters in a cell (a newline in a key, a terminal
    /// escape) are written as escapes, so a row is one line.
    pub fn push(&mut self, row: Vec<String>) {
        self.rows
            .push(row.into_iter().map(|cell| printable(&cell).into_owned()).collect());
    }

    /// Whether each column holds numbers (and `-` for none): those are right-aligned.
    pub fn numeric_columns(&self) -> Vec<bool> {
        (0..self.headers.len())
            .map(|i| {
                let mut cells = self.rows.iter().filter_map(|row| row.get(i)).map(String::as_str);
                cells.clone().any(looks_numeric) && cells.all(|text| looks_numeric(text) || text == "-")
            })
            .collect()
    }

    /// Aligned columns, two spaces apart, headers then a rule then the rows; each
    /// padded cell goes through `paint(row, column, padded)`, where `row` is `None`
    /// for the header and the rule.
    pub fn text_with(&self, paint: impl Fn(Option<usize>, usize, &str) -> String) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let numeric = self.numeric_columns();
        let mut out = String::new();
        let mut line = |row: Option<usize>, cells: &[String]| {
            let mut text = String::new();
            for (i, width) in widths.iter().enumerate().take(columns) {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                if i > 0 {
                    text.push_str("  ");
                }
                // Padded by hand: `format!`'s width cannot exceed u16::MAX and a cell can.
                let fill = " ".repeat(width - cell.chars().count());
                let padded = if numeric[i] {
                    format!("{fill}{cell}")
                } else {
                    format!("{cell}{fill}")
                };
                // No trailing blanks after the last column.
                let padded = if i + 1 == columns { padded.trim_end() } else { &padded };
                text.push_str(&paint(row, i, padded));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(None, &self.headers);
        line(None, &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
        for (r, row) in self.rows.iter().enumerate() {
            line(Some(r), row);
        }
        out
    }

    /// A GitHub-flavoured markdown table.
    pub fn markdown(&self) -> String {
        let escape = |text: &str| text.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n|{}\n",
            self.headers.iter().map(|h| escape(h)).collect::<Vec<_>>().join(" | "),
            " --- |".repeat(self.headers.len())
        );
        for row in &self.rows {
            let cells: Vec<String> = row.iter().map(|c| escape(c)).collect();
            out.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        out
    }
}

/// Whether a cell is a number.
pub fn looks_numeric(cell: &str) -> bool {
    !cell.is_empty() && cell.parse::<f64>().is_ok()
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text_with(|_, _, padded| padded.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_numbers_right_and_cells_stay_on_one_line() {
        let mut table = Table::new(&["name", "value"]);
        table.push(vec!["a".into(), "1.5".into()]);
        table.push(vec!["long\nname".into(), "-".into()]);
        assert_eq!(
            table.to_string(),
            "name        value\n----------  -----\na             1.5\nlong\\nname      -\n"
        );
        assert_eq!(
            table.markdown(),
            "| name | value |\n| --- | --- |\n| a | 1.5 |\n| long\\nname | - |\n"
        );
    }

    #[test]
    fn a_cell_wider_than_any_format_width_is_padded() {
        let mut table = Table::new(&["k"]);
        table.push(vec!["x".repeat(70_000)]);
        assert_eq!(table.to_string().lines().count(), 3);
    }
}
