//! Positional arguments of the measuring examples (`fleet_profile`,
//! `fleet_memory`, `round_trip_profile`): whole numbers, `_` allowed between
//! digits (`1_000_000`). A mistake ends the program with a message and exit
//! code 2 rather than a panic, and a count of zero, which would divide by
//! zero or report a mean over nothing, is refused.

// Each example uses only some of these.
#![allow(dead_code)]

/// The whole number in `arg` (`default` when absent), between `min` and
/// `max`; `what` names it in the message.
pub(crate) fn parse(
    arg: Option<&str>,
    what: &str,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, String> {
    let Some(arg) = arg else {
        return Ok(default);
    };
    let digits = arg.replace('_', "");
    match digits.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        Ok(_) => Err(format!("{what} must be between {min} and {max}, got {arg}")),
        Err(_) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            Err(format!("{what} must be between {min} and {max}, got {arg}"))
        }
        Err(_) => Err(format!("{what} needs a whole number, got {arg:?}")),
    }
}

/// The argument at `index` (after the program's name), as [`parse`] reads
/// it; on a mistake, prints it with `usage` and exits with code 2.
pub(crate) fn arg(index: usize, what: &str, default: u64, min: u64, max: u64, usage: &str) -> u64 {
    let arg = std::env::args().nth(index);
    parse(arg.as_deref(), what, default, min, max).unwrap_or_else(|e| fail(&e, usage))
}

/// Prints `message` and `usage`, then exits with code 2 (bad arguments).
pub(crate) fn fail(message: &str, usage: &str) -> ! {
    eprintln!("{message}\nusage: {usage}");
    std::process::exit(2)
}
