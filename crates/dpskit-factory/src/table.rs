//! Plain-text tables for terminal summaries: each column padded to its widest cell, the last
//! one left ragged so a long reason does not widen every row.

/// Renders `headers` and `rows` (each row as many cells as there are headers).
pub fn render<R: AsRef<[String]>>(headers: &[&str], rows: &[R]) -> String {
    let last = headers.len().saturating_sub(1);
    let mut width: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.as_ref().iter().enumerate().take(last) {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.enumerate() {
            if i < last {
                s.push_str(&format!("{cell:<w$}  ", w = width[i]));
            } else {
                s.push_str(cell);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out += &line(&mut row.as_ref().iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pads_all_but_the_last_column() {
        let rows = vec![
            vec!["a".to_string(), "long cell".into(), "x".into()],
            vec!["bbb".to_string(), "c".into(), "a long reason".into()],
        ];
        assert_eq!(
            super::render(&["H1", "H2", "WHY"], &rows),
            "H1   H2         WHY\na    long cell  x\nbbb  c          a long reason\n"
        );
    }
}
