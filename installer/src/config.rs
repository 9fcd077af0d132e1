//! The `ums` runtime in containerd's `config.toml`, edited with toml_edit so that comments,
//! order and formatting of everything else stay as they were.
//!
//! The runtimes table depends on the file's `version` (not on the daemon's: containerd 2.x
//! migrates a `version = 2` file on load, so its version-2 path is the right one there too):
//! - 2 (containerd 1.6/1.7): `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.ums]`
//! - 3 (containerd 2.x): `[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.ums]`
//!
//! Applying the edit to its own output changes nothing: keys that already hold the wanted value
//! are left untouched (with their formatting), so a second run is byte-identical.

use std::path::Path;

use toml_edit::{Array, DocumentMut, Item, Table, Value};

use crate::{Error, ANNOTATIONS, HANDLER, RUNTIME_TYPE};

/// containerd config file format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigVersion {
    /// `version = 2`: containerd 1.6 and 1.7.
    V2,
    /// `version = 3`: containerd 2.x.
    V3,
}

impl ConfigVersion {
    /// The keys of the CRI runtimes table in this format.
    pub fn runtimes_path(self) -> [&'static str; 4] {
        let plugin = match self {
            ConfigVersion::V2 => "io.containerd.grpc.v1.cri",
            ConfigVersion::V3 => "io.containerd.cri.v1.runtime",
        };
        ["plugins", plugin, "containerd", "runtimes"]
    }

    /// The version a parsed config declares.
    pub fn of(doc: &DocumentMut, path: &Path) -> Result<ConfigVersion, Error> {
        match doc.get("version").and_then(Item::as_integer) {
            Some(2) => Ok(ConfigVersion::V2),
            Some(3) => Ok(ConfigVersion::V3),
            Some(version) => Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            }),
            None => Err(Error::NoVersion {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// What an install or uninstall did to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edit {
    /// The runtime was not there and now is.
    Added,
    /// The runtime was there with other values; they are set now.
    Updated,
    /// Already as wanted (install) or already absent (uninstall): the text is unchanged.
    Unchanged,
    /// The runtime was there and is gone.
    Removed,
}

/// The keys of the runtime entry and their values.
fn wanted() -> Vec<(&'static str, Value)> {
    let annotations = || Value::Array(ANNOTATIONS.iter().copied().collect::<Array>());
    vec![
        ("runtime_type", Value::from(RUNTIME_TYPE)),
        ("container_annotations", annotations()),
        ("pod_annotations", annotations()),
    ]
}

/// Same value, whatever the quoting and whitespace.
fn same_value(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::String(a), Value::String(b)) => a.value() == b.value(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| same_value(x, y))
        }
        _ => false,
    }
}

fn parse(path: &Path, text: &str) -> Result<DocumentMut, Error> {
    text.parse::<DocumentMut>().map_err(|source| Error::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Adds the `ums` runtime to a config file's text (`path` only names it in errors).
pub fn install(path: &Path, text: &str) -> Result<(String, Edit), Error> {
    let mut doc = parse(path, text)?;
    let version = ConfigVersion::of(&doc, path)?;
    let edit = install_into(&mut doc, version, path)?;
    if edit == Edit::Unchanged {
        return Ok((text.to_string(), edit));
    }
    Ok((doc.to_string(), edit))
}

/// Removes the `ums` runtime from a config file's text, and the tables above it that the
/// install had to create (implicit and left empty).
pub fn uninstall(path: &Path, text: &str) -> Result<(String, Edit), Error> {
    let mut doc = parse(path, text)?;
    let version = ConfigVersion::of(&doc, path)?;
    let edit = remove_from(doc.as_table_mut(), &version.runtimes_path());
    if edit == Edit::Unchanged {
        return Ok((text.to_string(), edit));
    }
    Ok((doc.to_string(), edit))
}

/// The runtime's table alone, as the TOML lines a k3s template appends to its base.
pub fn snippet(version: ConfigVersion) -> String {
    let mut doc = DocumentMut::new();
    // A fresh document has no inline tables: the install cannot fail on it.
    let _ = install_into(&mut doc, version, Path::new("<snippet>"));
    doc.to_string()
}

fn install_into(doc: &mut DocumentMut, version: ConfigVersion, path: &Path) -> Result<Edit, Error> {
    let mut table = doc.as_table_mut();
    let mut walked = Vec::new();
    for key in version.runtimes_path() {
        walked.push(key);
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            // Only the runtime's own header is written, not one per missing parent.
            t.set_implicit(true);
            Item::Table(t)
        });
        table = item.as_table_mut().ok_or_else(|| Error::NotATable {
            path: path.to_path_buf(),
            key: walked.join("."),
        })?;
    }
    let Some(existing) = table.get_mut(HANDLER) else {
        let mut runtime = Table::new();
        for (k, v) in wanted() {
            runtime.insert(k, Item::Value(v));
        }
        table.insert(HANDLER, Item::Table(runtime));
        return Ok(Edit::Added);
    };
    walked.push(HANDLER);
    let runtime = existing.as_table_mut().ok_or_else(|| Error::NotATable {
        path: path.to_path_buf(),
        key: walked.join("."),
    })?;
    let mut edit = Edit::Unchanged;
    for (k, v) in wanted() {
        if runtime
            .get(k)
            .and_then(Item::as_value)
            .is_some_and(|have| same_value(have, &v))
        {
            continue;
        }
        runtime.insert(k, Item::Value(v));
        edit = Edit::Updated;
    }
    Ok(edit)
}

/// Removes `HANDLER` under `path` in `table`; on the way back, drops the implicit tables the
/// removal left empty.
fn remove_from(table: &mut Table, path: &[&str]) -> Edit {
    let Some((first, rest)) = path.split_first() else {
        return match table.remove(HANDLER) {
            Some(_) => Edit::Removed,
            None => Edit::Unchanged,
        };
    };
    let Some(child) = table.get_mut(first).and_then(Item::as_table_mut) else {
        return Edit::Unchanged;
    };
    let edit = remove_from(child, rest);
    if edit == Edit::Removed && child.is_implicit() && child.is_empty() {
        table.remove(first);
    }
    edit
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "config.toml";

    fn install_ok(text: &str) -> (String, Edit) {
        install(Path::new(P), text).unwrap()
    }

    #[test]
    fn minimal_v2_gets_only_the_runtime_header() {
        let (out, edit) = install_ok("version = 2\n");
        assert_eq!(edit, Edit::Added);
        assert_eq!(
            out,
            "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.ums]\n\
             runtime_type = \"io.containerd.ums.v1\"\n\
             container_annotations = [\"io.ums.*\"]\n\
             pod_annotations = [\"io.ums.*\"]\n"
        );
        let (again, edit) = install_ok(&out);
        assert_eq!((again.as_str(), edit), (out.as_str(), Edit::Unchanged));
        let (back, edit) = uninstall(Path::new(P), &out).unwrap();
        assert_eq!((back.as_str(), edit), ("version = 2\n", Edit::Removed));
    }

    #[test]
    fn v3_uses_the_cri_runtime_plugin() {
        let (out, _) = install_ok("version = 3\n");
        assert!(
            out.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.ums]"),
            "{out}"
        );
    }

    #[test]
    fn other_values_are_corrected_and_other_keys_kept() {
        let text = "version = 2 # keep\n\
            [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.ums]\n  \
            runtime_type = 'io.containerd.other.v1'\n  \
            pod_annotations = [ 'io.ums.*' ] # mine\n  \
            privileged_without_host_devices = true\n";
        let (out, edit) = install_ok(text);
        assert_eq!(edit, Edit::Updated);
        assert!(out.contains("version = 2 # keep\n"), "{out}");
        assert!(
            out.contains("pod_annotations = [ 'io.ums.*' ] # mine"),
            "{out}"
        );
        assert!(
            out.contains("privileged_without_host_devices = true"),
            "{out}"
        );
        assert!(
            out.contains("runtime_type = \"io.containerd.ums.v1\""),
            "{out}"
        );
        assert_eq!(install_ok(&out), (out.clone(), Edit::Unchanged));
    }

    #[test]
    fn uninstall_keeps_explicit_parents_and_other_runtimes() {
        let text = "version = 3\n\n\
            [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]\n\n\
            [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  \
            runtime_type = 'io.containerd.runc.v2'\n";
        let (out, _) = install_ok(text);
        let (back, edit) = uninstall(Path::new(P), &out).unwrap();
        assert_eq!((back.as_str(), edit), (text, Edit::Removed));
        let (same, edit) = uninstall(Path::new(P), &back).unwrap();
        assert_eq!((same.as_str(), edit), (text, Edit::Unchanged));
    }

    #[test]
    fn refuses_what_it_cannot_edit() {
        let p = Path::new(P);
        assert!(matches!(
            install(p, "root = '/x'\n"),
            Err(Error::NoVersion { .. })
        ));
        assert!(matches!(
            install(p, "version = 4\n"),
            Err(Error::UnsupportedVersion { version: 4, .. })
        ));
        assert!(matches!(
            install(p, "version = \n"),
            Err(Error::Parse { .. })
        ));
        let inline =
            "version = 2\n[plugins]\n\"io.containerd.grpc.v1.cri\" = { containerd = {} }\n";
        assert!(matches!(install(p, inline), Err(Error::NotATable { .. })));
    }

    #[test]
    fn snippet_is_the_runtime_table_alone() {
        let s = snippet(ConfigVersion::V3);
        assert!(
            s.starts_with("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.ums]\n"),
            "{s}"
        );
        assert!(!s.contains("version"), "{s}");
    }
}
