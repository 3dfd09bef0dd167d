//! Cursor pagination of the aggregated lists answered to clients.
//!
//! The cursor is opaque to clients; here it is the offset of the next item.
//! Backend-side pagination is followed when listing (see `session::factory`).

use serde_json::Value;

/// The client sent a cursor this gateway never issued.
#[derive(Debug, thiserror::Error)]
#[error("invalid cursor")]
pub struct InvalidCursor;

/// One page of `items` starting at `cursor`, and the cursor of the next page.
pub fn page<'a>(
    items: &'a [Value],
    cursor: Option<&str>,
    size: usize,
) -> Result<(&'a [Value], Option<String>), InvalidCursor> {
    let start = match cursor {
        None => 0,
        Some(c) => c
            .strip_prefix("o")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= items.len())
            .ok_or(InvalidCursor)?,
    };
    let end = start.saturating_add(size).min(items.len());
    let next = (end < items.len()).then(|| format!("o{end}"));
    Ok((&items[start..end], next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_all_pages_once() {
        let items: Vec<Value> = (0..250).map(Value::from).collect();
        let mut cursor = None;
        let mut seen = Vec::new();
        loop {
            let (chunk, next) = page(&items, cursor.as_deref(), 100).unwrap();
            seen.extend_from_slice(chunk);
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, items);
    }

    #[test]
    fn rejects_foreign_cursors() {
        let items: Vec<Value> = vec![Value::from(1)];
        assert!(page(&items, Some("garbage"), 10).is_err());
        assert!(page(&items, Some("o9"), 10).is_err());
        assert!(page(&items, Some("o1"), 10).unwrap().0.is_empty());
    }
}
