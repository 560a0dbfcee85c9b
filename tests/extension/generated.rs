//! The files generated from the wiring (`make wiring`) are what the wiring
//! generates now: a changed constant or function of the wiring fails here
//! until they are regenerated, and the generated reference bootstrap is one
//! Envoy accepts.

use mulligan::extension::wiring::outputs::{outputs, Encoded, Output, OutputError};

fn print(m: &Encoded) -> String {
    rig::xds::bootstrap_yaml(&m.type_name, &m.bytes)
}

fn checked_in(output: &Output) -> String {
    let path = rig::repo_root().join(output.path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first line where `have` and `want` differ, for the failure message.
fn first_difference(have: &str, want: &str) -> String {
    let (mut h, mut w) = (have.lines(), want.lines());
    for n in 1.. {
        match (h.next(), w.next()) {
            (None, None) => break,
            (a, b) if a == b => continue,
            (a, b) => {
                return format!("line {n}:\n  checked in: {a:?}\n  generated:  {b:?}");
            }
        }
    }
    "(the same lines, other line endings)".into()
}

#[test]
fn every_generated_file_is_up_to_date() {
    for output in outputs() {
        let have = checked_in(&output);
        let want = output
            .render(&have, &print)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            have == want,
            "{} differs from what the wiring generates: run `make wiring` and commit the result\n{}",
            output.path,
            first_difference(&have, &want)
        );
    }
}

/// A region the wiring has but the file does not mark is an error, not a
/// silent omission; so is a marked region the wiring lacks.
#[test]
fn a_region_missing_from_a_file_or_the_wiring_is_refused() {
    let output = outputs().remove(0);
    let first = output.regions[0].name;
    let text = checked_in(&output).replace(&format!("mulligan:begin {first}\n"), "x\n");
    assert!(matches!(
        output.render(&text, &print),
        Err(OutputError::Missing { .. })
    ));
    let extra = format!(
        "{}# mulligan:begin nothing\n# mulligan:end nothing\n",
        checked_in(&output)
    );
    assert!(matches!(
        output.render(&extra, &print),
        Err(OutputError::Unknown { .. })
    ));
}

/// The reference bootstrap, rendered with its defaults, is one Envoy
/// accepts (`envoy --mode validate`).
#[test]
fn the_reference_bootstrap_validates() {
    let app = ["127.0.0.1:18081".parse().expect("addr")];
    let text = rig::render::standalone(&app, 50051, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, text).expect("write");
    rig::envoy::validate(&path).unwrap_or_else(|e| panic!("{e}"));
}
