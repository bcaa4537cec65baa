//! What the user sees while a transfer runs: an indicatif progress bar (rate, ETA) on a
//! terminal, plain progress lines otherwise (logs, CI), nothing with `--quiet`. Always on
//! stderr, so stdout stays clean for `--json` and for replies.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use bits_client::Event;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often plain progress lines are printed at most.
const LINE_EVERY: Duration = Duration::from_secs(2);

pub enum Display {
    Bar(ProgressBar),
    Lines {
        label: String,
        last: Option<Instant>,
        last_done: u64,
    },
    Quiet,
}

impl Display {
    pub fn new(label: &str, quiet: bool) -> Display {
        if quiet {
            return Display::Quiet;
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(label.to_string());
            Display::Bar(bar)
        } else {
            Display::Lines {
                label: label.to_string(),
                last: None,
                last_done: u64::MAX,
            }
        }
    }

    /// A message line that does not garble the bar. Its text may come from the server or a
    /// job file, so control characters are escaped.
    pub fn note(&self, msg: &str) {
        let msg = crate::report::escape(msg);
        match self {
            Display::Bar(bar) => bar.println(format!("bits: {msg}")),
            Display::Lines { .. } => eprintln!("bits: {msg}"),
            Display::Quiet => {}
        }
    }

    pub fn event(&mut self, ev: &Event<'_>) {
        match ev {
            Event::Progress { done, total } => self.progress(*done, *total),
            Event::SessionCreated { session } => self.note(&format!("session {session} created")),
            Event::Resumed { session, offset } => {
                self.note(&format!("resuming session {session} at byte {offset}"))
            }
            Event::Retrying {
                attempt,
                delay,
                error,
            } => self.note(&format!(
                "{error}; attempt {attempt} in {:.1} s",
                delay.as_secs_f64()
            )),
            Event::FragmentShrunk { size } => self.note(&format!(
                "the server refused the fragment size (413); fragments are now {size} bytes"
            )),
            Event::Restarted { error } => {
                self.note(&format!("{error}; starting over with a new session"))
            }
            Event::HostId { url } => self.note(&format!("the server asked to continue at {url}")),
            Event::HostIdFallback { url } => self.note(&format!(
                "the Host-Id host stayed unreachable; back to {url}"
            )),
            Event::FetchingReply { url } => {
                self.note(&format!("fetching the reply from {url}"));
                self.restart_label("reply");
            }
            Event::DownloadRestarted { reason } => {
                self.note(&format!("starting the download over: {reason}"))
            }
            Event::Closing => {}
            _ => {}
        }
    }

    fn restart_label(&mut self, label: &str) {
        match self {
            Display::Bar(bar) => {
                bar.set_prefix(label.to_string());
                bar.reset();
            }
            Display::Lines {
                label: l,
                last,
                last_done,
            } => {
                *l = label.to_string();
                *last = None;
                *last_done = u64::MAX;
            }
            Display::Quiet => {}
        }
    }

    fn progress(&mut self, done: u64, total: u64) {
        match self {
            Display::Bar(bar) => {
                if bar.length() != Some(total) {
                    bar.set_length(total);
                }
                bar.set_position(done);
            }
            Display::Lines {
                label,
                last,
                last_done,
            } => {
                let due = match last {
                    Some(t) => t.elapsed() >= LINE_EVERY,
                    None => true,
                };
                let finished = done == total && *last_done != done;
                if (due && *last_done != done) || finished {
                    let pct = (done * 100).checked_div(total).unwrap_or(100);
                    eprintln!("bits: {label}: {done}/{total} bytes ({pct}%)");
                    *last = Some(Instant::now());
                    *last_done = done;
                }
            }
            Display::Quiet => {}
        }
    }

    pub fn finish(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
