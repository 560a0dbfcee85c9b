//! The files generated from the wiring (`make wiring`): each is a
//! hand-written template (its skeleton and comments) with marked regions
//! that the wiring fills,
//!
//! ```yaml
//! # mulligan:begin retry_policy
//! ...written by `make wiring`...
//! # mulligan:end retry_policy
//! ```
//!
//! so the reference bootstrap runs what the Extension Server installs,
//! built by the same functions. A region's content is a list of xDS
//! messages, printed as proto YAML by the caller (printing needs a
//! descriptor pool: a dev-dependency, so the product carries none; see
//! `examples/wiring.rs`). Numbers a user may set stay placeholders
//! (`${NAME:-default}`), their defaults the wiring's own.
//!
//! To add an output: a function returning an [`Output`] (its path and
//! regions) beside the wiring it describes, listed in [`outputs`]; then
//! mark the regions in the file and run `make wiring`. The suite compares
//! every output with its file.

use prost::{Message, Name};

use super::standalone;

/// Opens a region: `# mulligan:begin NAME`.
pub const BEGIN: &str = "# mulligan:begin ";
/// Closes a region: `# mulligan:end NAME`.
pub const END: &str = "# mulligan:end ";

/// Every generated file.
pub fn outputs() -> Vec<Output> {
    vec![
        standalone::output(),
        crate::extension::patch_policy::output(),
    ]
}

/// One generated file.
pub struct Output {
    /// The file, from the repository's root.
    pub path: &'static str,
    pub regions: Vec<Region>,
}

/// What one marked region of a file holds.
pub struct Region {
    pub name: &'static str,
    pub shape: Shape,
    pub messages: Vec<Encoded>,
    /// Fields whose value a user may set when the file is rendered.
    pub placeholders: Vec<Placeholder>,
}

/// How a region's messages sit in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// The set fields of each message, as keys of the enclosing mapping.
    Fields,
    /// Each message as an item of the enclosing list.
    Items,
}

/// An xDS message: its full proto name and its bytes.
pub struct Encoded {
    pub type_name: String,
    pub bytes: Vec<u8>,
}

impl Encoded {
    pub fn of<M: Message + Name>(m: &M) -> Self {
        Self {
            type_name: M::full_name(),
            bytes: m.encode_to_vec(),
        }
    }
}

/// Every `key: value` in a region becomes `key: ${NAME:-value}`.
#[derive(Clone, Copy, Debug)]
pub struct Placeholder {
    /// `key`, or `key=value`: only the lines where it has that value (a
    /// `value:` of one header among others).
    pub key: &'static str,
    pub name: &'static str,
}

/// Why a template could not be filled.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: region {region:?} is not marked ({BEGIN}{region} ... {END}{region})")]
    Missing { path: String, region: String },
    #[error("{path}: region {region:?} has no {END}{region}")]
    Unclosed { path: String, region: String },
    #[error("{path}: region {region:?} is marked, but the wiring has no such region")]
    Unknown { path: String, region: String },
}

impl Output {
    /// The file's text: `template` (the file as it is) with every region's
    /// content written anew. `print` prints one message as YAML (a mapping,
    /// unindented).
    pub fn render(
        &self,
        template: &str,
        print: &dyn Fn(&Encoded) -> String,
    ) -> Result<String, OutputError> {
        let mut out = String::with_capacity(template.len());
        let mut lines = template.split_inclusive('\n');
        let mut seen = Vec::new();
        while let Some(line) = lines.next() {
            out.push_str(line);
            let Some(name) = line.trim().strip_prefix(BEGIN) else {
                continue;
            };
            let region = self.region(name)?;
            let end = format!("{END}{name}");
            let close = lines.by_ref().find(|l| l.trim() == end).ok_or_else(|| {
                self.error(name, |path, region| OutputError::Unclosed { path, region })
            })?;
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&region.text(indent, print));
            out.push_str(close);
            seen.push(name.to_string());
        }
        match self
            .regions
            .iter()
            .find(|r| !seen.iter().any(|s| s == r.name))
        {
            Some(r) => {
                Err(self.error(r.name, |path, region| OutputError::Missing { path, region }))
            }
            None => Ok(out),
        }
    }

    fn region(&self, name: &str) -> Result<&Region, OutputError> {
        self.regions
            .iter()
            .find(|r| r.name == name)
            .ok_or_else(|| self.error(name, |path, region| OutputError::Unknown { path, region }))
    }

    fn error(&self, region: &str, make: impl Fn(String, String) -> OutputError) -> OutputError {
        make(self.path.to_string(), region.to_string())
    }
}

impl Region {
    /// The region's lines, each indented by `indent`.
    fn text(&self, indent: &str, print: &dyn Fn(&Encoded) -> String) -> String {
        let mut out = String::new();
        for m in &self.messages {
            let yaml = print(m);
            let body = yaml.trim_end();
            if body == "{}" {
                continue;
            }
            for (i, line) in body.lines().enumerate() {
                let lead = match (self.shape, i) {
                    (Shape::Fields, _) => "",
                    (Shape::Items, 0) => "- ",
                    (Shape::Items, _) => "  ",
                };
                out.push_str(indent);
                out.push_str(&self.placeholder(&format!("{lead}{line}")));
                out.push('\n');
            }
        }
        out
    }

    /// `line` with its value made a placeholder, if its key has one.
    fn placeholder(&self, line: &str) -> String {
        let body = line.trim_start_matches([' ', '-']);
        let at = line.len() - body.len();
        for p in &self.placeholders {
            let (key, only) = p
                .key
                .split_once('=')
                .map_or((p.key, None), |(k, v)| (k, Some(v)));
            let value = body.strip_prefix(key).and_then(|r| r.strip_prefix(": "));
            if let Some(value) = value.filter(|v| only.is_none_or(|o| o == *v)) {
                return format!("{}{}: ${{{}:-{}}}", &line[..at], key, p.name, value);
            }
        }
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    /// In every generated file, the regions' names are the file's markers:
    /// each at most once.
    #[test]
    fn region_names_are_unique() {
        for out in super::outputs() {
            let mut names: Vec<_> = out.regions.iter().map(|r| r.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), out.regions.len(), "{}", out.path);
        }
    }
}
