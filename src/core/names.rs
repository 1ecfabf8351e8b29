//! File names as clients send them, made safe to store: one path component, no control
//! characters, bounded length. Pure functions; never touches the file system.

/// Why a name cannot be used at all, even after cleaning.
#[derive(Debug, PartialEq, Eq)]
pub struct BadName(pub &'static str);

/// Cleans a client's file name into one that can only name a file inside the store.
///
/// Keeps the last component of a path (`a/b/c.txt` → `c.txt`, `..\\x` → `x`), drops control
/// characters, trims spaces and trailing dots, and shortens the name to `max_bytes` keeping
/// the extension. `.`, `..` and names that clean to nothing are refused.
pub fn sanitize(raw: &str, max_bytes: usize) -> Result<String, BadName> {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let trimmed = cleaned.trim().trim_end_matches(['.', ' ']);
    if trimmed.chars().all(|c| c == '.' || c == ' ') {
        return Err(BadName(
            "the name is empty once path parts and control characters are removed",
        ));
    }
    Ok(shorten(trimmed, max_bytes.max(8)))
}

/// The `n`th alternative for a name that is taken: `photo.jpg` → `photo (2).jpg`.
pub fn numbered(name: &str, n: u32, max_bytes: usize) -> String {
    let (stem, ext) = split_ext(name);
    let suffix = format!(" ({n}){ext}");
    let room = max_bytes.saturating_sub(suffix.len()).max(1);
    format!("{}{suffix}", cut(stem, room))
}

fn shorten(name: &str, max_bytes: usize) -> String {
    if name.len() <= max_bytes {
        return name.to_string();
    }
    let (stem, ext) = split_ext(name);
    if ext.len() >= max_bytes / 2 {
        return cut(name, max_bytes).to_string();
    }
    format!("{}{ext}", cut(stem, max_bytes - ext.len()))
}

/// `("photo", ".jpg")`; a leading dot is part of the stem (`.bashrc` has no extension).
fn split_ext(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(i) if i > 0 && name.len() - i <= 16 => name.split_at(i),
        _ => (name, ""),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_cleaned_or_refused() {
        assert_eq!(sanitize("../../etc/passwd", 200).unwrap(), "passwd");
        assert_eq!(sanitize("..\\..\\win.ini", 200).unwrap(), "win.ini");
        assert_eq!(sanitize("a\u{0}b\nc.txt", 200).unwrap(), "abc.txt");
        assert_eq!(sanitize("  report.pdf. ", 200).unwrap(), "report.pdf");
        assert!(sanitize("..", 200).is_err());
        assert!(sanitize(". .", 200).is_err());
        assert!(sanitize(".. .", 200).is_err());
        assert!(sanitize(".", 200).is_err());
        assert!(sanitize("dir/", 200).is_err());
        assert!(sanitize("\u{1}\u{2}", 200).is_err());
        assert_eq!(sanitize(".bashrc", 200).unwrap(), ".bashrc");
    }

    #[test]
    fn long_names_keep_their_extension_and_utf8() {
        let long = format!("{}.jpg", "é".repeat(300));
        let s = sanitize(&long, 200).unwrap();
        assert!(s.len() <= 200 && s.ends_with(".jpg"), "{s}");
    }

    proptest::proptest! {
        /// Whatever a client sends, the result names one entry inside the store.
        #[test]
        fn any_name_is_safe_or_refused(raw in "\\PC{0,300}", max in 8usize..300) {
            if let Ok(name) = sanitize(&raw, max) {
                proptest::prop_assert!(!name.contains('/') && !name.contains('\\'));
                proptest::prop_assert!(!name.chars().any(char::is_control));
                proptest::prop_assert!(name != "." && name != "..");
                proptest::prop_assert!(!name.is_empty() && name.len() <= max);
            }
        }
    }

    #[test]
    fn numbered_names() {
        assert_eq!(numbered("photo.jpg", 1, 200), "photo (1).jpg");
        assert_eq!(numbered("README", 3, 200), "README (3)");
        assert!(numbered(&"x".repeat(200), 12, 200).len() <= 200);
    }
}
