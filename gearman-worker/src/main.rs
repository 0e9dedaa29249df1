//! `gearman-worker` binary. Exit status: 0 success (also after a graceful
//! SIGTERM), 1 runtime failure or forced stop, 2 usage or configuration error.

fn main() -> std::process::ExitCode {
    gearman_worker::main_entry()
}
