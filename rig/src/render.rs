//! Fills `${NAME}` and `${NAME:-default}` in a config template.

use std::{collections::HashMap, net::SocketAddr};

/// Renders `template`; a placeholder with neither a value nor a default is an
/// error, so a config can never start with a hole in it. Comment lines (`#`)
/// are copied as they are: they may talk about placeholders.
pub fn render(template: &str, vars: &HashMap<&str, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    for line in template.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            render_line(line, vars, &mut out)?;
        }
    }
    Ok(out)
}

fn render_line(line: &str, vars: &HashMap<&str, String>, out: &mut String) -> Result<(), String> {
    let mut rest = line;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed placeholder in {line:?}"))?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (vars.get(name), default) {
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(format!("no value for ${{{name}}}")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(())
}

/// A flow-style YAML list of `lb_endpoints` for the given addresses.
pub fn lb_endpoints(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs
        .iter()
        .map(|a| {
            format!(
                "{{endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}}}",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// A bootstrap renderer: app endpoints, mulligan's gRPC port, overrides.
pub type Bootstrap = fn(&[SocketAddr], u16, &[(&'static str, String)]) -> String;

/// How long Envoy waits for each of mulligan's answers in the tests whose
/// subject is the answer (a retry, a hold), instead of the shipped 200 ms.
/// On a loaded 2-core machine a debug-build mulligan can miss 200 ms, and
/// Envoy then fails open (the request ends as Envoy alone: proven with the
/// shipped value in `tests/fail_open_and_shutdown.rs`); a test expecting a
/// hold or a retry would then see the 503 pass and fail for the load, not
/// for mulligan.
pub const LOADED_MESSAGE_TIMEOUT: &str = "2s";

/// [`standalone`] with [`LOADED_MESSAGE_TIMEOUT`] unless `overrides` set
/// `MESSAGE_TIMEOUT` themselves: the reference bootstrap as the tests of
/// mulligan's answers run it.
pub fn tolerant(
    app: &[SocketAddr],
    mulligan_grpc_port: u16,
    overrides: &[(&'static str, String)],
) -> String {
    let mut all = vec![("MESSAGE_TIMEOUT", LOADED_MESSAGE_TIMEOUT.to_string())];
    all.extend(overrides.iter().cloned());
    standalone(app, mulligan_grpc_port, &all)
}

/// A bootstrap as JSON (Envoy Gateway's translation, wired, as the tests
/// run it) with mulligan's message timeout widened from the shipped 200 ms
/// to [`LOADED_MESSAGE_TIMEOUT`], for the same reason as [`tolerant`]. The
/// field may be spelt as proto JSON (`messageTimeout`) or by its name
/// (`message_timeout`); panics if it is neither: the wiring's timeout moved.
pub fn tolerant_json(bootstrap: &str) -> String {
    for field in ["messageTimeout", "message_timeout"] {
        let shipped = format!("\"{field}\":\"0.200s\"");
        if bootstrap.contains(&shipped) {
            let loaded = format!("\"{field}\":\"{LOADED_MESSAGE_TIMEOUT}\"");
            return bootstrap.replace(&shipped, &loaded);
        }
    }
    panic!("the wiring's message timeout moved: no 200 ms message timeout in the bootstrap");
}

/// The reference bootstrap with `overrides` on top of the rig's defaults:
/// every port 0 (Envoy picks), the given app endpoints and mulligan port.
pub fn standalone(
    app: &[SocketAddr],
    mulligan_grpc_port: u16,
    overrides: &[(&'static str, String)],
) -> String {
    bootstrap("envoy.yaml", app, mulligan_grpc_port, overrides)
}

fn bootstrap(
    file: &str,
    app: &[SocketAddr],
    mulligan_grpc_port: u16,
    overrides: &[(&'static str, String)],
) -> String {
    let path = super::repo_root()
        .join("envoy-config/standalone")
        .join(file);
    let template = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut vars: HashMap<&str, String> = HashMap::from([
        ("ADMIN_PORT", "0".to_string()),
        ("LISTEN_PORT", "0".to_string()),
        ("BASELINE_PORT", "0".to_string()),
        ("APP_ENDPOINTS", lb_endpoints(app)),
        ("MULLIGAN_GRPC_PORT", mulligan_grpc_port.to_string()),
    ]);
    for (k, v) in overrides {
        vars.insert(k, v.clone());
    }
    render(&template, &vars).unwrap_or_else(|e| panic!("rendering {}: {e}", path.display()))
}

/// The mulligan listener's route in a rendered bootstrap, for a test to
/// change as a user's route would be (a rewrite, a header policy).
pub fn route(v: &mut serde_yaml_ng::Value) -> &mut serde_yaml_ng::Value {
    &mut v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["routes"][0]
}

/// The cluster named `name` in a rendered bootstrap.
pub fn cluster<'a>(v: &'a mut serde_yaml_ng::Value, name: &str) -> &'a mut serde_yaml_ng::Value {
    v["static_resources"]["clusters"]
        .as_sequence_mut()
        .expect("clusters")
        .iter_mut()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

/// A YAML literal (a test's edit to a bootstrap).
pub fn yaml(text: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}
