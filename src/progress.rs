//! Progress of long command-line work (`dbrouter broadcast`, `dbrouter
//! purge`): a bar with counts, rate and ETA on a terminal (indicatif), and
//! plain lines at most every 5 seconds when the output is a pipe or a file,
//! so logs and scripts get a readable record instead of control codes.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a piped run prints a line.
const LINE_EVERY: Duration = Duration::from_secs(5);

pub struct Meter {
    bar: Option<ProgressBar>,
    what: &'static str,
    started: Instant,
    last_line: Option<Instant>,
}

impl Meter {
    /// A meter of `total` units of `what` ("transmissions", "ids").
    pub fn new(total: u64, what: &'static str) -> Meter {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            // The template is ours and fixed; should it not parse, draw the default.
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:30.cyan/blue} {percent:>3}% {msg} · {per_sec} · ETA {eta}",
            ) {
                bar.set_style(style.progress_chars("█▉ "));
            }
            bar
        });
        Meter {
            bar,
            what,
            started: Instant::now(),
            last_line: None,
        }
    }

    /// `done` of the total so far; `detail` says what they are.
    pub fn update(&mut self, done: u64, total: u64, detail: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(detail.to_string());
            }
            None => {
                if self.last_line.is_none_or(|at| at.elapsed() >= LINE_EVERY) {
                    self.last_line = Some(Instant::now());
                    eprintln!("{}", self.line(done, total, detail));
                }
            }
        }
    }

    /// The last word: the bar is cleared, a plain line stays.
    pub fn finish(self, done: u64, total: u64, detail: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!("{}", self.line(done, total, detail));
    }

    fn line(&self, done: u64, total: u64, detail: &str) -> String {
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / seconds;
        let eta = if rate > 0.0 && done < total {
            format!(
                ", about {} left",
                humantime::format_duration(Duration::from_secs(
                    ((total - done) as f64 / rate).ceil() as u64
                ))
            )
        } else {
            String::new()
        };
        format!(
            "{done} of {total} {} ({:.0}%): {detail}; {rate:.0}/s{eta}",
            self.what,
            if total == 0 {
                100.0
            } else {
                done as f64 * 100.0 / total as f64
            },
        )
    }
}
