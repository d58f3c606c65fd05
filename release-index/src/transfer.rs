//! systemd-sysupdate transfer files in the layout Flatcar's sysext-bakery publishes, so
//! existing Butane snippets and nodes keep working (see interop-formats.md B3).
//!
//! sysupdate can only verify a detached OpenPGP `SHA256SUMS.gpg`. A release published with
//! OpenPGP signatures (`bakery publish --openpgp`) gets `Verify=yes`, so nodes refuse a
//! `SHA256SUMS` that the keyring in `/etc/systemd/import-pubring.gpg` did not sign; otherwise
//! `Verify=false` as in Flatcar's files (the downloaded image is still checked against the
//! SHA256SUMS digest by sysupdate, and our node agent checks the Ed25519-signed index). Every
//! file is emitted as `.conf` (systemd < 257, Flatcar Stable/LTS) and `.transfer` (systemd ≥
//! 257) with identical content.

use sysext_model::{node, BaseUrl, ExtensionName, Version};

/// Whether sysupdate must check `SHA256SUMS.gpg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    /// `Verify=false`: the release has no OpenPGP signatures.
    No,
    /// `Verify=yes`: the release signs every `SHA256SUMS` with OpenPGP.
    Yes,
}

impl Verify {
    fn value(self) -> &'static str {
        match self {
            Verify::No => "false",
            Verify::Yes => "yes",
        }
    }
}

fn render(source_url: &BaseUrl, pattern: &str, name: &ExtensionName, verify: Verify) -> String {
    format!(
        "[Transfer]\nVerify={}\n[Source]\nType=url-file\nPath={source_url}\nMatchPattern={pattern}\n[Target]\nInstancesMax=3\nType=regular-file\nPath={}\nCurrentSymlink={}\n",
        verify.value(),
        node::image_dir(name),
        node::current_link(name),
    )
}

/// `<ext>.conf`: follows every version of the extension. `base_url` is the directory that
/// holds the images and `SHA256SUMS`.
pub fn any_version(name: &ExtensionName, base_url: &BaseUrl, verify: Verify) -> String {
    render(base_url, &format!("{name}-@v-%a.raw"), name, verify)
}

/// `<ext>-<major>.<minor>.conf`: patch releases of one minor only (Kubernetes does not
/// support skipping minors). Returns the file stem (`kubernetes-v1.31`) and the contents;
/// `None` if the version has no `MAJOR.MINOR.` prefix.
pub fn patch_channel(
    name: &ExtensionName,
    version: &Version,
    base_url: &BaseUrl,
    verify: Verify,
) -> Option<(String, String)> {
    let v = version.as_str();
    let prefix_len = v.bytes().take_while(|c| !c.is_ascii_digit()).count();
    let mut parts = v[prefix_len..].splitn(3, '.');
    let (major, minor, _patch) = (parts.next()?, parts.next()?, parts.next()?);
    if major.is_empty() || minor.is_empty() || !major.bytes().chain(minor.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let channel = format!("{}{major}.{minor}", &v[..prefix_len]);
    let contents = render(base_url, &format!("{name}-{channel}.@v-%a.raw"), name, verify);
    Some((format!("{name}-{channel}"), contents))
}

/// `noop.conf`: a transfer that never matches, so a bare `systemd-sysupdate update` on the
/// default component does not fail with "No transfer definitions found".
pub fn noop() -> &'static str {
    "[Source]\nType=regular-file\nPath=/\nMatchPattern=invalid@v.raw\n[Target]\nType=regular-file\nPath=/\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_minor_channel_matches_flatcar_byte_for_byte() {
        let name: ExtensionName = "kubernetes".parse().unwrap();
        let (stem, text) = patch_channel(
            &name,
            &"v1.32.2".parse().unwrap(),
            &"https://extensions.flatcar.org/extensions/kubernetes/".parse().unwrap(),
            Verify::No,
        )
        .unwrap();
        assert_eq!(stem, "kubernetes-v1.32");
        assert_eq!(
            text,
            "[Transfer]\nVerify=false\n[Source]\nType=url-file\nPath=https://extensions.flatcar.org/extensions/kubernetes/\nMatchPattern=kubernetes-v1.32.@v-%a.raw\n[Target]\nInstancesMax=3\nType=regular-file\nPath=/opt/extensions/kubernetes\nCurrentSymlink=/etc/extensions/kubernetes.raw\n"
        );
    }

    #[test]
    fn generic_and_noop() {
        let name: ExtensionName = "containerd".parse().unwrap();
        let text = any_version(&name, &"https://x/containerd/".parse().unwrap(), Verify::No);
        assert!(text.contains("\nMatchPattern=containerd-@v-%a.raw\n"), "{text}");
        assert!(text.starts_with("[Transfer]\nVerify=false\n"), "{text}");
        let signed = any_version(&name, &"https://x/containerd/".parse().unwrap(), Verify::Yes);
        assert_eq!(signed, text.replace("Verify=false", "Verify=yes"));
        assert!(text.contains("\nCurrentSymlink=/etc/extensions/containerd.raw\n"));
        let (stem, _) =
            patch_channel(&name, &"2.0.4".parse().unwrap(), &"https://x/".parse().unwrap(), Verify::No).unwrap();
        assert_eq!(stem, "containerd-2.0");
        assert!(patch_channel(&name, &"2024".parse().unwrap(), &"https://x/".parse().unwrap(), Verify::No).is_none());
        assert!(noop().contains("MatchPattern=invalid@v.raw"));
    }
}
