//! Aligned columns for a terminal.

/// Columns padded to their widest cell; numbers (cells starting with a digit) right
/// aligned.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>, numeric: &dyn Fn(usize, &str) -> bool| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let last = i + 1 == cells.len();
            if numeric(i, c) {
                out.push_str(&format!("{c:>w$}"));
            } else if last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}"));
            }
            if !last {
                out.push_str("  ");
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec(), &|_, _| false);
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect(), &|i, c| {
            i > 0
                && c.starts_with(|ch: char| ch.is_ascii_digit())
                && !c.contains('.')
                && !c.contains(':')
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up() {
        let t = super::render(
            &["SOURCE", "BAD"],
            &[
                vec!["206.81.85.0/24".into(), "7".into()],
                vec!["1.2.3.4".into(), "120".into()],
            ],
        );
        assert_eq!(
            t,
            "SOURCE          BAD\n206.81.85.0/24    7\n1.2.3.4         120\n"
        );
    }
}
