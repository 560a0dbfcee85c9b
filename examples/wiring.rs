//! `make wiring`: writes the wiring into every file generated from it
//! (`mulligan::extension::wiring::outputs`), between the files' own
//! `# mulligan:begin NAME` / `# mulligan:end NAME` markers, and says which
//! files changed. The suite (tests/extension/generated.rs) fails while a
//! checked-in file differs from what this writes.
//!
//! An example, not a subcommand of mulligan: printing xDS messages as YAML
//! needs a descriptor pool that protoc builds from envoy-types' protos
//! (`rig::xds`, dev-dependencies), which the product has no use for.

use mulligan::extension::wiring::outputs::outputs;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = rig::repo_root();
    for output in outputs() {
        let path = root.join(output.path);
        let template =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let text = output.render(&template, &|m| {
            rig::xds::bootstrap_yaml(&m.type_name, &m.bytes)
        })?;
        if text == template {
            println!("{}: up to date", output.path);
        } else {
            std::fs::write(&path, text)?;
            println!("{}: written", output.path);
        }
    }
    Ok(())
}
