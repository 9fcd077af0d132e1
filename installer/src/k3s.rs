//! The `ums` runtime in a k3s containerd template. k3s renders its containerd `config.toml` from
//! `/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl` (`config-v3.toml.tmpl` where
//! k3s ships containerd 2.x) at every start, overwriting `config.toml`; the template is a Go
//! template, so not TOML, and `{{ template "base" . }}` expands to k3s's own config (k3s docs,
//! "Configuring containerd", "Base template"). The runtime goes in as a block between two
//! marker comments appended to the template, created as base + block when there is none.

use std::path::Path;

use crate::config::{snippet, ConfigVersion, Edit};
use crate::Error;

/// The k3s template that expands to k3s's stock config.
pub const BASE: &str = "{{ template \"base\" . }}";
pub const BEGIN: &str =
    "# BEGIN ums runtime (added by ums-node-installer; `ums-node-installer uninstall` removes it)";
pub const END: &str = "# END ums runtime";

/// The config version a template renders, from its name (k3s's own naming).
pub fn template_version(path: &Path) -> Result<ConfigVersion, Error> {
    match path.file_name().and_then(|n| n.to_str()) {
        Some("config.toml.tmpl") => Ok(ConfigVersion::V2),
        Some("config-v3.toml.tmpl") => Ok(ConfigVersion::V3),
        _ => Err(Error::TemplateVersion {
            path: path.to_path_buf(),
        }),
    }
}

/// Whether a path names a k3s template rather than a containerd config.
pub fn is_template(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "tmpl")
}

fn block(version: ConfigVersion) -> String {
    format!("{BEGIN}\n{}{END}\n", snippet(version))
}

/// Byte range of the managed block (marker lines included, with their newlines).
fn find_block(path: &Path, text: &str) -> Result<Option<(usize, usize)>, Error> {
    let Some(start) = line_start(text, BEGIN) else {
        return Ok(None);
    };
    let Some(end_line) = line_start(&text[start..], END).map(|i| start + i) else {
        return Err(Error::BrokenBlock {
            path: path.to_path_buf(),
            marker: END,
        });
    };
    let end = text[end_line..]
        .find('\n')
        .map_or(text.len(), |i| end_line + i + 1);
    Ok(Some((start, end)))
}

/// Offset of the first line that is exactly `line`.
fn line_start(text: &str, line: &str) -> Option<usize> {
    let mut offset = 0;
    for l in text.split_inclusive('\n') {
        if l.trim_end_matches(['\n', '\r']) == line {
            return Some(offset);
        }
        offset += l.len();
    }
    None
}

/// The template with the runtime's block; `existing` is None when there is no template yet.
pub fn install(
    path: &Path,
    existing: Option<&str>,
    version: ConfigVersion,
) -> Result<(String, Edit), Error> {
    let block = block(version);
    let Some(text) = existing else {
        return Ok((format!("{BASE}\n\n{block}"), Edit::Added));
    };
    match find_block(path, text)? {
        Some((s, e)) if text[s..e] == block => Ok((text.to_string(), Edit::Unchanged)),
        Some((s, e)) => Ok((
            format!("{}{block}{}", &text[..s], &text[e..]),
            Edit::Updated,
        )),
        None => {
            let mut out = text.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push('\n');
            out.push_str(&block);
            Ok((out, Edit::Added))
        }
    }
}

/// The template without the block; None when nothing but the base would be left (the file the
/// install created is to be removed, so that k3s goes back to its stock config).
pub fn uninstall(path: &Path, text: &str) -> Result<(Option<String>, Edit), Error> {
    let Some((s, e)) = find_block(path, text)? else {
        return Ok((Some(text.to_string()), Edit::Unchanged));
    };
    let before = &text[..s];
    // The blank line the install put before the block goes with it.
    let before = before
        .strip_suffix('\n')
        .filter(|b| b.ends_with('\n'))
        .unwrap_or(before);
    let out = format!("{before}{}", &text[e..]);
    if out.trim() == BASE {
        return Ok((None, Edit::Removed));
    }
    Ok((Some(out), Edit::Removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl")
    }

    #[test]
    fn version_from_the_name() {
        assert_eq!(template_version(p()).unwrap(), ConfigVersion::V3);
        assert_eq!(
            template_version(Path::new("/x/config.toml.tmpl")).unwrap(),
            ConfigVersion::V2
        );
        assert!(template_version(Path::new("/x/other.tmpl")).is_err());
        assert!(is_template(p()) && !is_template(Path::new("/etc/containerd/config.toml")));
    }

    #[test]
    fn new_template_is_base_plus_block_and_goes_away_again() {
        let (t, edit) = install(p(), None, ConfigVersion::V3).unwrap();
        assert_eq!(edit, Edit::Added);
        assert!(
            t.starts_with("{{ template \"base\" . }}\n\n# BEGIN ums runtime"),
            "{t}"
        );
        assert!(t.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.ums]\n"));
        assert_eq!(
            install(p(), Some(&t), ConfigVersion::V3).unwrap(),
            (t.clone(), Edit::Unchanged)
        );
        assert_eq!(uninstall(p(), &t).unwrap(), (None, Edit::Removed));
    }

    #[test]
    fn existing_template_keeps_its_lines() {
        let own = "{{ template \"base\" . }}\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.custom]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        let path = Path::new("/x/config.toml.tmpl");
        let (t, edit) = install(path, Some(own), ConfigVersion::V2).unwrap();
        assert_eq!(edit, Edit::Added);
        assert!(t.starts_with(own), "{t}");
        assert_eq!(
            install(path, Some(&t), ConfigVersion::V2).unwrap(),
            (t.clone(), Edit::Unchanged)
        );
        // A block of another version is rewritten in place.
        let (v3, edit) = install(path, Some(&t), ConfigVersion::V3).unwrap();
        assert_eq!(edit, Edit::Updated);
        assert!(
            v3.starts_with(own) && v3.contains("io.containerd.cri.v1.runtime"),
            "{v3}"
        );
        assert_eq!(
            uninstall(path, &t).unwrap(),
            (Some(own.to_string()), Edit::Removed)
        );
        assert_eq!(
            uninstall(path, own).unwrap(),
            (Some(own.to_string()), Edit::Unchanged)
        );
    }

    #[test]
    fn unclosed_block_is_refused() {
        let t = format!("{BASE}\n{BEGIN}\n[x]\n");
        assert!(matches!(
            install(p(), Some(&t), ConfigVersion::V3),
            Err(Error::BrokenBlock { .. })
        ));
        assert!(matches!(uninstall(p(), &t), Err(Error::BrokenBlock { .. })));
    }
}
