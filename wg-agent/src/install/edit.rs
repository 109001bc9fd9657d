//! The text-level edits of a conflist: `chain` splices our entry into its
//! top-level `"plugins"` array, `unchain` takes it out again, byte for
//! byte; both check their output by parsing it.

use serde::Serialize;
use serde_json::Value;

use super::scan::{leading_ws, scan_plugins};
use super::{ChainError, Result, PLUGIN_TYPE};

/// The plugin entry as text, laid out like the element it follows: on one
/// line when that element is on one line; else pretty-printed with that
/// element's indentation unit, each continuation line indented like it.
fn render_plugin(b: &[u8], last: (usize, usize), plugin: &Value) -> Result<String, ChainError> {
    let elem = &b[last.0..last.1];
    let before = leading_ws(b, last.0);
    let indent: &[u8] = match before.iter().rposition(|&c| c == b'\n') {
        Some(n) => &before[n + 1..],
        None => b"",
    };
    // The element's second line: its leading whitespace, less the
    // element's own indentation, is one indentation unit.
    let unit = elem.iter().position(|&c| c == b'\n').and_then(|n| {
        let rest = &elem[n + 1..];
        let ws_len = rest
            .iter()
            .take_while(|&&c| c == b' ' || c == b'\t')
            .count();
        let line_ws = &rest[..ws_len];
        line_ws.strip_prefix(indent).filter(|u| !u.is_empty())
    });
    let Some(unit) = unit else {
        return Ok(serde_json::to_string(plugin)?);
    };
    let newline = if elem.windows(2).any(|w| w == b"\r\n") {
        "\r\n"
    } else {
        "\n"
    };
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(unit);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    plugin.serialize(&mut ser)?;
    let pretty =
        String::from_utf8(out).map_err(|_| ChainError::Internal("serializer wrote non-UTF-8"))?;
    let indent = std::str::from_utf8(indent).map_err(|_| ChainError::Internal("indentation"))?;
    let mut text = String::new();
    for (n, line) in pretty.split('\n').enumerate() {
        if n > 0 {
            text.push_str(newline);
            text.push_str(indent);
        }
        text.push_str(line);
    }
    Ok(text)
}

pub(super) fn plugin_type(plugin: &Value) -> Result<&str, ChainError> {
    plugin
        .as_object()
        .and_then(|o| o.get("type"))
        .and_then(Value::as_str)
        .ok_or(ChainError::BadPlugin)
}

fn has_type(entry: &Value, ty: &str) -> bool {
    entry.get("type").and_then(Value::as_str) == Some(ty)
}

/// The document's top-level object and its `"plugins"` array, validated.
fn parse_conflist(conflist: &[u8]) -> Result<(Value, Vec<Value>), ChainError> {
    let doc: Value = serde_json::from_slice(conflist)?;
    let obj = doc.as_object().ok_or(ChainError::NotAnObject)?;
    let plugins = match obj.get("plugins") {
        None => return Err(ChainError::NoPlugins),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err(ChainError::PluginsNotArray),
    };
    Ok((doc, plugins))
}

/// `doc` with its `"plugins"` replaced by `plugins`: what an edit must parse to.
fn with_plugins(mut doc: Value, plugins: Vec<Value>) -> Value {
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("plugins".into(), Value::Array(plugins));
    }
    doc
}

fn check_parses_to(text: &[u8], expected: &Value) -> Result<(), ChainError> {
    let got: Value = serde_json::from_slice(text)
        .map_err(|_| ChainError::Internal("the edited text does not parse"))?;
    if &got != expected {
        return Err(ChainError::Internal(
            "the edited text parses to another document",
        ));
    }
    Ok(())
}

/// Inserts `plugin` as the last element of the conflist's top-level
/// `"plugins"` array, leaving every other byte as it was. `Ok(None)` when an
/// entry of the same `"type"` is already in the list (idempotent).
///
/// A `.conf`-shaped document (no `"plugins"`) is [`ChainError::NoPlugins`].
pub fn chain(conflist: &[u8], plugin: &Value) -> Result<Option<Vec<u8>>, ChainError> {
    let ty = plugin_type(plugin)?;
    let (doc, mut plugins) = parse_conflist(conflist)?;
    if plugins.iter().any(|p| has_type(p, ty)) {
        return Ok(None);
    }
    let arr = scan_plugins(conflist)?.ok_or(ChainError::Internal("plugins array not found"))?;
    if arr.elems.len() != plugins.len() {
        return Err(ChainError::Internal(
            "scanner and parser disagree on the plugins",
        ));
    }
    let (at, insert) = match arr.elems.last() {
        None => (arr.open + 1, serde_json::to_string(plugin)?.into_bytes()),
        Some(&(start, end)) => {
            let mut ins = b",".to_vec();
            ins.extend_from_slice(leading_ws(conflist, start));
            ins.extend_from_slice(render_plugin(conflist, (start, end), plugin)?.as_bytes());
            (end, ins)
        }
    };
    let mut out = Vec::with_capacity(conflist.len() + insert.len());
    out.extend_from_slice(&conflist[..at]);
    out.extend_from_slice(&insert);
    out.extend_from_slice(&conflist[at..]);
    plugins.push(plugin.clone());
    check_parses_to(&out, &with_plugins(doc, plugins))?;
    Ok(Some(out))
}

/// Removes every wg-cni entry (`"type": "wg-cni"`) from the top-level
/// `"plugins"` array: the inverse of [`chain`], byte for byte
/// (`unchain(chain(x)) == x`). `Ok(None)` when there is none.
pub fn unchain(conflist: &[u8]) -> Result<Option<Vec<u8>>, ChainError> {
    unchain_type(conflist, PLUGIN_TYPE)
}

/// [`unchain`] for entries of type `ty`.
pub fn unchain_type(conflist: &[u8], ty: &str) -> Result<Option<Vec<u8>>, ChainError> {
    let (doc, plugins) = parse_conflist(conflist)?;
    if !plugins.iter().any(|p| has_type(p, ty)) {
        return Ok(None);
    }
    let mut text = conflist.to_vec();
    // One entry at a time, last first; rescanning after each cut.
    loop {
        let arr = scan_plugins(&text)?.ok_or(ChainError::Internal("plugins array not found"))?;
        let mut ours = None;
        for (n, &(s, e)) in arr.elems.iter().enumerate() {
            let v: Value = serde_json::from_slice(&text[s..e])?;
            if has_type(&v, ty) {
                ours = Some(n);
            }
        }
        let Some(n) = ours else { break };
        // What chain inserted after element n-1 is `,` + whitespace + entry:
        // cut from the end of the previous element to the end of ours. A
        // first element goes with the separator that follows it.
        let (cut_from, cut_to) = if n > 0 {
            (arr.elems[n - 1].1, arr.elems[n].1)
        } else if let Some(next) = arr.elems.get(1) {
            (arr.elems[0].0, next.0)
        } else {
            (arr.elems[0].0, arr.elems[0].1)
        };
        text.drain(cut_from..cut_to);
    }
    let kept = plugins.into_iter().filter(|p| !has_type(p, ty)).collect();
    check_parses_to(&text, &with_plugins(doc, kept))?;
    Ok(Some(text))
}
