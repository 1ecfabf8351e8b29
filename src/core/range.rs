//! HTTP `Range: bytes=...` for one range, as downloads resume. Pure; multi-range requests
//! are answered with the whole file, which RFC 9110 allows.

/// What a `Range` header asks of a file of a known length.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// Send the whole file (no header, a form the box does not serve, or several ranges).
    Whole,
    /// Send bytes `start..=end`.
    Part { start: u64, end: u64 },
    /// The range lies outside the file: answer 416.
    Unsatisfiable,
}

/// Reads a `Range` header value against a file of `len` bytes.
pub fn parse(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let part = match (a.is_empty(), b.is_empty()) {
        (true, true) => return RangeRequest::Whole,
        // Suffix form: the last `b` bytes.
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return RangeRequest::Unsatisfiable,
            Ok(n) => (len.saturating_sub(n), len.wrapping_sub(1)),
            Err(_) => return RangeRequest::Whole,
        },
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeRequest::Whole;
            };
            let end = if b.is_empty() {
                len.wrapping_sub(1)
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e.min(len.wrapping_sub(1)),
                    _ => return RangeRequest::Whole,
                }
            };
            (start, end)
        }
    };
    if len == 0 || part.0 >= len {
        return RangeRequest::Unsatisfiable;
    }
    RangeRequest::Part {
        start: part.0,
        end: part.1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn forms() {
        assert_eq!(parse(None, 10), Whole);
        assert_eq!(parse(Some("bytes=0-4"), 10), Part { start: 0, end: 4 });
        assert_eq!(parse(Some("bytes=5-"), 10), Part { start: 5, end: 9 });
        assert_eq!(parse(Some("bytes=-3"), 10), Part { start: 7, end: 9 });
        assert_eq!(parse(Some("bytes=-30"), 10), Part { start: 0, end: 9 });
        assert_eq!(parse(Some("bytes=8-100"), 10), Part { start: 8, end: 9 });
        assert_eq!(parse(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-0"), 0), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-1,4-5"), 10), Whole);
        assert_eq!(parse(Some("items=0-1"), 10), Whole);
        assert_eq!(parse(Some("bytes=5-2"), 10), Whole);
    }
}
