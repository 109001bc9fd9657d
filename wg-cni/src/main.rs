//! wg-cni: the CNI adapter over wg-netns. Its full CNI layer is tracked in its
//! own issue; until then the binary answers VERSION and refuses everything else
//! with a CNI error, writing only JSON to stdout.

use std::io::Write;

fn main() {
    let cmd = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let (body, code) = if cmd == "VERSION" {
        (
            r#"{"cniVersion":"1.1.0","supportedVersions":["0.3.1","0.4.0","1.0.0","1.1.0"]}"#
                .to_string(),
            0,
        )
    } else {
        (
            format!(
                r#"{{"cniVersion":"1.1.0","code":4,"msg":"unsupported CNI_COMMAND","details":"{} is not implemented yet"}}"#,
                cmd.escape_default()
            ),
            1,
        )
    };
    let _ = writeln!(out, "{body}");
    std::process::exit(code);
}
