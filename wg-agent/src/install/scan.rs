//! The JSON-aware scanner: byte spans, no allocation of the document.

use super::{ChainError, Result};

/// Where the top-level `"plugins"` array is: `open` is the index of its
/// `[`, `elems` the `[start, end)` span of each element.
#[derive(Debug)]
pub(super) struct PluginsArray {
    pub(super) open: usize,
    pub(super) elems: Vec<(usize, usize)>,
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

fn expect(b: &[u8], i: usize, c: u8) -> Result<(), ChainError> {
    if b.get(i) == Some(&c) {
        Ok(())
    } else {
        Err(ChainError::Internal("unexpected byte while scanning"))
    }
}

/// `b[i]` is `"`: the index just past the closing quote.
fn string_end(b: &[u8], i: usize) -> Result<usize, ChainError> {
    expect(b, i, b'"')?;
    let mut i = i + 1;
    loop {
        match b.get(i) {
            None => return Err(ChainError::Internal("unterminated string")),
            Some(b'"') => return Ok(i + 1),
            Some(b'\\') => i += 2,
            Some(_) => i += 1,
        }
    }
}

/// The index just past the JSON value starting at `b[i]`.
fn value_end(b: &[u8], i: usize) -> Result<usize, ChainError> {
    match b.get(i) {
        None => Err(ChainError::Internal("value expected")),
        Some(b'"') => string_end(b, i),
        Some(b'{') | Some(b'[') => {
            let mut depth = 0usize;
            let mut i = i;
            loop {
                match b.get(i) {
                    None => return Err(ChainError::Internal("unterminated container")),
                    Some(b'"') => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    Some(b'{') | Some(b'[') => depth += 1,
                    Some(b'}') | Some(b']') => {
                        depth = depth
                            .checked_sub(1)
                            .ok_or(ChainError::Internal("unbalanced brackets"))?;
                        if depth == 0 {
                            return Ok(i + 1);
                        }
                    }
                    Some(_) => {}
                }
                i += 1;
            }
        }
        Some(_) => {
            let mut i = i;
            while i < b.len() && !is_ws(b[i]) && !matches!(b[i], b',' | b'}' | b']') {
                i += 1;
            }
            Ok(i)
        }
    }
}

/// Finds the top-level `"plugins"` array (the last one, as both serde_json
/// and Go's encoding/json keep the last of duplicate keys). `Ok(None)`
/// when there is no such key or its value is not an array.
pub(super) fn scan_plugins(b: &[u8]) -> Result<Option<PluginsArray>, ChainError> {
    let mut i = skip_ws(b, 0);
    expect(b, i, b'{')?;
    i = skip_ws(b, i + 1);
    let mut found = None;
    if b.get(i) == Some(&b'}') {
        return Ok(None);
    }
    loop {
        let key_end = string_end(b, i)?;
        let key: String = serde_json::from_slice(&b[i..key_end])?;
        i = skip_ws(b, key_end);
        expect(b, i, b':')?;
        i = skip_ws(b, i + 1);
        let v_end = value_end(b, i)?;
        if key == "plugins" {
            found = if b[i] == b'[' {
                Some(array_elems(b, i)?)
            } else {
                None
            };
        }
        i = skip_ws(b, v_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(found),
            _ => return Err(ChainError::Internal("object: , or } expected")),
        }
    }
}

fn array_elems(b: &[u8], open: usize) -> Result<PluginsArray, ChainError> {
    expect(b, open, b'[')?;
    let mut elems = Vec::new();
    let mut i = skip_ws(b, open + 1);
    if b.get(i) == Some(&b']') {
        return Ok(PluginsArray { open, elems });
    }
    loop {
        let end = value_end(b, i)?;
        elems.push((i, end));
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Ok(PluginsArray { open, elems }),
            _ => return Err(ChainError::Internal("array: , or ] expected")),
        }
    }
}

/// The whitespace right before byte `start`.
pub(super) fn leading_ws(b: &[u8], start: usize) -> &[u8] {
    let mut j = start;
    while j > 0 && is_ws(b[j - 1]) {
        j -= 1;
    }
    &b[j..start]
}
