//! `sluice top`: a live view of the top uploaders, read from the running
//! agent's control socket (no second copy of the kernel programs). On a
//! terminal it redraws once a second (ratatui over crossterm, works in 80x24
//! over ssh); otherwise it prints a plain table each refresh, `--count` times.

pub mod table;
pub mod view;

use std::{
    io::IsTerminal,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};

use self::{table::Snapshot, view::Sort};

pub struct Options<'a> {
    pub socket: &'a Path,
    pub interval: Duration,
    /// Plain-text refreshes before exiting (None: until interrupted or `q`).
    pub count: Option<u64>,
    /// Plain text even on a terminal.
    pub plain: bool,
}

fn fetch(socket: &Path) -> Result<Snapshot> {
    let text = crate::control::request(socket, "top")?;
    serde_json::from_str(text.trim()).with_context(|| format!("the agent's answer is not a snapshot: {:.200}", text.trim()))
}

pub fn run(o: Options) -> Result<()> {
    // The first answer decides: no agent is an error, not an empty screen.
    let first = fetch(o.socket)?;
    if o.plain || !std::io::stdout().is_terminal() {
        return plain(o, first);
    }
    interactive(o, first)
}

fn plain(o: Options, mut snap: Snapshot) -> Result<()> {
    let (width, height) = ratatui::crossterm::terminal::size().unwrap_or((80, 24));
    let mut n = 0u64;
    loop {
        print!("{}", view::plain(&snap, Sort::Rate, width, height.saturating_sub(3) as usize));
        n += 1;
        if o.count.is_some_and(|c| n >= c) {
            return Ok(());
        }
        std::thread::sleep(o.interval);
        println!();
        snap = fetch(o.socket)?;
    }
}

fn interactive(o: Options, mut snap: Snapshot) -> Result<()> {
    let mut terminal = ratatui::init();
    let result = (|| -> Result<()> {
        let (mut sort, mut note, mut next) = (Sort::Rate, String::new(), Instant::now() + o.interval);
        loop {
            terminal.draw(|f| view::draw(f, &snap, sort, &note))?;
            let wait = next.saturating_duration_since(Instant::now());
            if event::poll(wait)? {
                if let Event::Key(k) = event::read()? {
                    if k.kind == KeyEventKind::Press {
                        match k.code {
                            KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                            KeyCode::Char('s') => sort = sort.next(),
                            _ => {}
                        }
                    }
                }
                continue;
            }
            next = Instant::now() + o.interval;
            // An agent that went away is said on screen; the view keeps its last rows.
            match fetch(o.socket) {
                Ok(s) => {
                    snap = s;
                    note.clear();
                }
                Err(e) => note = format!("{e:#}"),
            }
        }
    })();
    ratatui::restore();
    result
}
