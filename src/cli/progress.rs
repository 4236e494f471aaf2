//! Progress bars per phase on stderr; notes always go to stderr, above the
//! bars on a terminal and as plain lines in a log.

use indicatif::{ProgressBar, ProgressStyle};
use pnp::progress::Progress;

#[derive(Default)]
pub struct Bars {
    bar: Option<ProgressBar>,
}

impl Bars {
    /// Ends the current bar, leaving it on screen.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

impl Progress for Bars {
    fn phase(&mut self, name: &str, total: usize) {
        self.finish();
        let b = ProgressBar::new(total as u64);
        b.set_style(
            ProgressStyle::with_template(
                "{msg:>20} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b.set_message(name.to_string());
        self.bar = Some(b);
    }

    fn tick(&mut self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }

    fn note(&mut self, msg: &str) {
        match &self.bar {
            // Hidden bars (no terminal) drop println: write the note directly.
            Some(b) if !b.is_hidden() => b.println(format!("note: {msg}")),
            _ => eprintln!("note: {msg}"),
        }
    }
}
