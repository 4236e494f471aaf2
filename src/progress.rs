//! How long-running work reports itself, so the command line (progress bars)
//! and the web page (events) can show it their own way.

/// Progress of loading and translating.
pub trait Progress {
    /// A phase with `total` units of work begins.
    fn phase(&mut self, name: &str, total: usize);
    /// One unit done.
    fn tick(&mut self);
    /// Something the user should read (a truncated prompt, a fallback).
    fn note(&mut self, msg: &str);
    /// `done` of `total` bytes of `file` read (`total` 0: unknown).
    fn bytes(&mut self, _file: &str, _done: usize, _total: usize) {}
    /// Whether the user asked the run to stop: the pipeline asks before
    /// each step it submits and then fails with
    /// [`PnpError::Cancelled`](crate::pipeline::PnpError::Cancelled).
    fn cancelled(&self) -> bool {
        false
    }
}

/// A `Progress` that reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn phase(&mut self, _: &str, _: usize) {}
    fn tick(&mut self) {}
    fn note(&mut self, _: &str) {}
}

/// Wall-clock seconds of a phase (wasm32 in a browser has no `Instant`: it
/// reads `Date.now()`'s milliseconds).
pub struct Timer {
    #[cfg(not(target_arch = "wasm32"))]
    start: std::time::Instant,
    #[cfg(target_arch = "wasm32")]
    start_ms: f64,
}

impl Timer {
    pub fn start() -> Self {
        Timer {
            #[cfg(not(target_arch = "wasm32"))]
            start: std::time::Instant::now(),
            #[cfg(target_arch = "wasm32")]
            start_ms: js_sys::Date::now(),
        }
    }

    pub fn seconds(&self) -> f64 {
        #[cfg(not(target_arch = "wasm32"))]
        return self.start.elapsed().as_secs_f64();
        #[cfg(target_arch = "wasm32")]
        return (js_sys::Date::now() - self.start_ms) / 1000.0;
    }
}
