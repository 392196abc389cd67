//! How `sluice top` lays out a snapshot: the sort orders, the status line,
//! the columns cut to the terminal's width, as plain text (stdout not a TTY)
//! or as a ratatui frame. Pure apart from the frame it draws into.

use ratatui::{
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row as TuiRow, Table},
    Frame,
};

use super::table::{Row, Snapshot};
use crate::{detect::human_bytes, text::escape_control};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Rate,
    Total,
    Process,
}

impl Sort {
    pub fn next(self) -> Sort {
        match self {
            Sort::Rate => Sort::Total,
            Sort::Total => Sort::Process,
            Sort::Process => Sort::Rate,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sort::Rate => "rate",
            Sort::Total => "total",
            Sort::Process => "process",
        }
    }
}

pub fn sorted(rows: &[Row], sort: Sort) -> Vec<Row> {
    let mut v = rows.to_vec();
    match sort {
        Sort::Rate => v.sort_by(|a, b| b.rate.total_cmp(&a.rate).then(b.window_bytes.cmp(&a.window_bytes))),
        Sort::Total => v.sort_by(|a, b| b.window_bytes.cmp(&a.window_bytes)),
        Sort::Process => v.sort_by(|a, b| a.process.cmp(&b.process).then(a.pid.cmp(&b.pid))),
    }
    v
}

/// One status line: host, backend, tick and window, the drop counters (the
/// first always, the others when not zero: they share 80 columns).
pub fn status(s: &Snapshot, sort: Sort) -> String {
    let drops: Vec<String> =
        s.counters.iter().enumerate().filter(|(i, (_, v))| *i == 0 || *v != 0).map(|(_, (k, v))| format!("{k} {v}")).collect();
    format!("sluice top  {}  {}  tick {:.0}s/{:.0}s  sort {}  {}", s.host, s.backend, s.tick_s, s.window_s, sort.name(), drops.join(" "))
}

const HEADERS: [&str; 6] = ["PID", "PROCESS < JOB", "DESTINATION", "RATE/s", "WINDOW", "ALERTED"];

/// The cells of one row; the process column names the job when the carrier
/// is a helper, the destination its service.
fn cells(r: &Row) -> [String; 6] {
    let who = if r.job.is_empty() { r.process.clone() } else { format!("{} < {}", r.process, r.job) };
    let who = match &r.container {
        Some(c) => format!("{who} [{c}]"),
        None => who,
    };
    let dest = match &r.service {
        Some(s) => format!("{} ({s})", r.destination),
        None if r.destination != r.remote.rsplit_once(':').map_or("", |(ip, _)| ip) => format!("{} {}", r.destination, r.remote),
        None => r.remote.clone(),
    };
    // `sluice.exfil_tool_upload` -> `exfil_tool`: the rules' short names.
    let alert = r.alerted.iter().map(|a| a.trim_start_matches("sluice.").trim_end_matches("_upload")).collect::<Vec<_>>().join(",");
    // Names come from the traffic and from whoever named the process: no
    // control character reaches the terminal (an escape sequence could
    // rewrite the screen, or the title of the analyst's terminal).
    [r.pid.to_string(), escape_control(&who), escape_control(&dest), human_bytes(r.rate as u64), human_bytes(r.window_bytes), alert]
}

/// Column widths for `width` characters: the fixed columns first, the rest
/// shared by process and destination.
fn widths(width: u16) -> [u16; 6] {
    let fixed = 6 + 9 + 9 + 12 + 5;
    let flexible = width.saturating_sub(fixed).max(20);
    [6, flexible / 2, flexible - flexible / 2, 9, 9, 12]
}

fn cut(s: &str, w: u16) -> String {
    let w = w as usize;
    if s.chars().count() <= w {
        return s.to_string();
    }
    let mut out: String = s.chars().take(w.saturating_sub(1)).collect();
    out.push('~');
    out
}

/// The whole view as text, `width` columns wide, at most `height` rows of the table.
pub fn plain(s: &Snapshot, sort: Sort, width: u16, height: usize) -> String {
    let w = widths(width);
    let line = |cols: [String; 6]| -> String {
        let parts: Vec<String> = cols.iter().zip(w).map(|(c, n)| format!("{:<n$}", cut(c, n), n = n as usize)).collect();
        parts.join(" ").trim_end().to_string()
    };
    let mut out = vec![cut(&status(s, sort), width), line(HEADERS.map(String::from))];
    let rows = sorted(&s.rows, sort);
    if rows.is_empty() {
        out.push("(no uploads in the window)".into());
    }
    out.extend(rows.iter().take(height).map(|r| line(cells(r))));
    out.join("\n") + "\n"
}

/// The view as a ratatui frame: status, table, key help.
pub fn draw(frame: &mut Frame, s: &Snapshot, sort: Sort, note: &str) {
    let [top, body, bottom] = Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)]).areas(frame.area());
    frame.render_widget(Paragraph::new(status(s, sort)).style(Style::default().add_modifier(Modifier::REVERSED)), top);
    let w = widths(frame.area().width);
    let rows: Vec<TuiRow> = sorted(&s.rows, sort)
        .iter()
        .map(|r| {
            let style = if r.alerted.is_empty() { Style::default() } else { Style::default().add_modifier(Modifier::BOLD) };
            TuiRow::new(cells(r).into_iter().map(Cell::from)).style(style)
        })
        .collect();
    let table = Table::new(rows, w.map(Constraint::Length))
        .header(TuiRow::new(HEADERS).style(Style::default().add_modifier(Modifier::UNDERLINED)));
    frame.render_widget(table, body);
    let help = if note.is_empty() { "q quit  s sort (rate, total, process)".to_string() } else { note.to_string() };
    frame.render_widget(Paragraph::new(Line::from(help)), bottom);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pid: u32, process: &str, rate: f64, total: u64) -> Row {
        Row {
            pid,
            process: process.into(),
            job: String::new(),
            destination: "10.0.0.9".into(),
            service: None,
            remote: "10.0.0.9:443".into(),
            container: None,
            rate,
            window_bytes: total,
            alerted: Vec::new(),
        }
    }

    fn snap(rows: Vec<Row>) -> Snapshot {
        Snapshot {
            backend: "cgroup".into(),
            host: "node-1".into(),
            at: 0.0,
            tick_s: 5.0,
            window_s: 60.0,
            counters: vec![("drops".into(), 0)],
            rows,
        }
    }

    #[test]
    fn an_80_column_table_sorted_three_ways() {
        let mut mega = row(7, "mega-put", 10.0, 9_000_000);
        mega.job = "bash backup.sh --to mega".into();
        mega.service = Some("MEGA".into());
        mega.destination = "g.api.mega.co.nz".into();
        mega.alerted = vec!["sluice.exfil_tool_upload".into()];
        let s = snap(vec![mega, row(8, "curl", 1e6, 1_000_000)]);
        let text = plain(&s, Sort::Rate, 80, 20);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{text}");
        assert!(lines[0].starts_with("sluice top  node-1  cgroup  tick 5s/60s  sort rate  drops 0"), "{text}");
        assert!(lines[2].starts_with("8 ") && lines[3].contains("mega-put < bash") && lines[3].ends_with("exfil_tool"), "{text}");
        assert!(lines[3].contains("g.api.mega.co.nz (M~"), "{text}");
        assert!(plain(&s, Sort::Total, 80, 20).lines().nth(2).unwrap().starts_with("7 "));
        assert!(plain(&s, Sort::Process, 80, 20).lines().nth(2).unwrap().starts_with("8 "), "curl before mega-put");
        assert_eq!(Sort::Rate.next().next().next(), Sort::Rate);
    }

    #[test]
    fn names_cannot_write_escape_sequences_to_the_terminal() {
        let mut r = row(1, "evil\x1b]0;pwned\x07\x1b[2J", 0.0, 1);
        r.destination = "x.example\r\x1b[1A".into();
        let text = plain(&snap(vec![r]), Sort::Rate, 200, 20);
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text:?}");
        assert!(text.contains("evil"), "{text}");
    }

    #[test]
    fn an_empty_window_and_a_narrow_terminal() {
        assert!(plain(&snap(vec![]), Sort::Rate, 80, 20).contains("(no uploads in the window)"));
        let text = plain(&snap(vec![row(1, &"x".repeat(200), 0.0, 1)]), Sort::Rate, 40, 20);
        assert!(text.lines().skip(1).all(|l| l.chars().count() <= 80), "long names are cut: {text}");
    }
}
