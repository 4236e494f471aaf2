//! The `pnp` binary as the command-line tests start it: directly, or through
//! the runner cargo runs the tests with (`CARGO_TARGET_<triple>_RUNNER`, such
//! as tools/coop-lavapipe.sh's), so that the binary sees the same driver as
//! the tests.

use std::process::Command;

pub fn pnp_command() -> Command {
    let bin = env!("CARGO_BIN_EXE_pnp");
    match std::env::var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER") {
        Ok(runner)
            if cfg!(all(target_arch = "x86_64", target_os = "linux")) && !runner.is_empty() =>
        {
            let mut c = Command::new(runner);
            c.arg(bin);
            c
        }
        _ => Command::new(bin),
    }
}
