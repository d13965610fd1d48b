//! The measuring examples' positional arguments (`fleet_profile`,
//! `fleet_memory`, `round_trip_profile`, all shown in README's Performance
//! section) are read by `examples/cli`. Before it, each example read its
//! numbers with `.parse().expect("a number")`: a typo (`fleet_profile abc`,
//! `fleet_memory 1e6`) panicked with a backtrace, and a count of zero ran and
//! printed `NaN ns per sync` or `inf bytes` per device, or panicked dividing
//! by zero (`fleet_profile 0 10`: the bench rig's device draw; `fleet_profile
//! 10 0 0 4`: the median per sync). Expected: a message naming the argument,
//! exit code 2, and zero refused.

#[path = "../examples/cli/mod.rs"]
mod cli;

#[test]
fn counts_are_whole_numbers_in_range_and_mistakes_are_messages() {
    let max = u64::from(u32::MAX);
    // Absent: the default; `_` between digits as the README writes them.
    assert_eq!(cli::parse(None, "DEVICES", 100_000, 1, max), Ok(100_000));
    assert_eq!(
        cli::parse(Some("1_000_000"), "DEVICES", 7, 1, max),
        Ok(1_000_000)
    );
    assert_eq!(cli::parse(Some("0"), "LOOKAHEAD", 7, 0, 4096), Ok(0));
    assert_eq!(cli::parse(Some("4096"), "LOOKAHEAD", 7, 0, 4096), Ok(4096));

    // Zero devices or syncs: refused, naming the argument and the range.
    let e = cli::parse(Some("0"), "SYNCS", 7, 1, max).unwrap_err();
    assert!(e.contains("SYNCS") && e.contains("between 1 and"), "{e}");
    // Past the range, and past u64 itself: out of range, not "not a number".
    let e = cli::parse(Some("4097"), "LOOKAHEAD", 0, 0, 4096).unwrap_err();
    assert!(e.contains("between 0 and 4096"), "{e}");
    let e = cli::parse(Some("99999999999999999999999"), "DEVICES", 7, 1, max).unwrap_err();
    assert!(e.contains("between 1 and"), "{e}");
    // Not whole numbers.
    for bad in ["abc", "1e6", "-1", "", "_", "12.5", " 3"] {
        let e = cli::parse(Some(bad), "DEVICES", 7, 1, max).unwrap_err();
        assert!(e.contains("DEVICES needs a whole number"), "{bad:?}: {e}");
    }
}
