//! `foundation-correlator`: correlates event batches for [`foundation_core::events::Correlator`].
//!
//! Speaks the port protocol on stdin/stdout: each request is a 4-byte big-endian length
//! and a MessagePack `CorrelateRequest`; each gets exactly one reply frame, a
//! `CorrelateReply` (the groups, or an error message for an undecodable or oversized
//! request). Exits with status 0 at end of input, 1 on a read or write error (a request
//! cut short by end of input included). It never panics on bad input.
//!
//! Environment:
//! * `FOUNDATION_CORRELATOR_MAX_FRAME` — largest request accepted, in bytes (default
//!   64 MiB); a larger one is skipped and answered with an error.
//! * `FOUNDATION_CORRELATOR_FAULT` — **test only**: `crash`, `hang` or `garbage`,
//!   optionally followed by `:<marker file>`. The correlator then misbehaves on a request
//!   (exits with status 70 / never answers / answers a frame that is not MessagePack).
//!   Without a marker it does so on every request; with one, only if it can create the
//!   marker file, i.e. once across restarts. Used by `foundation-core/tests/correlator.rs`.

use std::io::{self, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use foundation_core::events::Correlator;
use foundation_core::port::child::{read_frame, write_frame, Incoming};

const DEFAULT_MAX_FRAME: usize = 64 << 20;

#[derive(Clone, Copy)]
enum Fault {
    Crash,
    Hang,
    Garbage,
}

struct FaultPlan {
    fault: Fault,
    marker: Option<PathBuf>,
}

impl FaultPlan {
    fn from_env() -> Option<FaultPlan> {
        let spec = std::env::var("FOUNDATION_CORRELATOR_FAULT").ok()?;
        let (kind, marker) = match spec.split_once(':') {
            Some((k, m)) => (k.to_string(), Some(PathBuf::from(m))),
            None => (spec, None),
        };
        let fault = match kind.as_str() {
            "crash" => Fault::Crash,
            "hang" => Fault::Hang,
            "garbage" => Fault::Garbage,
            other => {
                eprintln!(
                    "foundation-correlator: ignoring unknown FOUNDATION_CORRELATOR_FAULT `{other}`"
                );
                return None;
            }
        };
        Some(FaultPlan { fault, marker })
    }

    /// The fault to inject on this request, if any.
    fn fire(&self) -> Option<Fault> {
        match &self.marker {
            None => Some(self.fault),
            Some(m) => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m)
                .ok()
                .map(|_| self.fault),
        }
    }
}

fn main() -> ExitCode {
    let max_frame = std::env::var("FOUNDATION_CORRELATOR_MAX_FRAME")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_FRAME);
    let faults = FaultPlan::from_env();
    match serve(max_frame, faults.as_ref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("foundation-correlator: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(max_frame: usize, faults: Option<&FaultPlan>) -> io::Result<()> {
    let mut input = BufReader::with_capacity(64 * 1024, io::stdin().lock());
    let mut output = BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    loop {
        let reply = match read_frame(&mut input, max_frame)? {
            Incoming::End => return Ok(()),
            Incoming::TooLarge(len) => {
                rmp_serde::to_vec_named(&foundation_core::events::CorrelateReply::Error(format!(
                    "request of {len} bytes exceeds the limit of {max_frame}"
                )))
                .unwrap_or_default()
            }
            Incoming::Frame(request) => match faults.and_then(FaultPlan::fire) {
                Some(Fault::Crash) => {
                    eprintln!("foundation-correlator: injected crash");
                    std::process::exit(70);
                }
                Some(Fault::Hang) => loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                },
                Some(Fault::Garbage) => b"\xc1 this is not MessagePack".to_vec(),
                None => Correlator::answer(&request),
            },
        };
        write_frame(&mut output, &reply)?;
        output.flush()?;
    }
}
