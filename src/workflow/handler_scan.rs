//! Finding the names a workflow handler file defines at top level, without running Python.

use std::collections::HashSet;

/// Top-level names of a Python source: `def`/`async def` functions, assignments and imports.
pub fn top_level_names(source: &str) -> HashSet<String> {
    let mut names = HashSet::new();
    for line in source.lines() {
        if line.starts_with([' ', '\t', '#']) {
            continue;
        }
        let line = line.trim_end();
        let def = line
            .strip_prefix("async def ")
            .or_else(|| line.strip_prefix("def "));
        if let Some(rest) = def {
            names.insert(identifier(rest).to_string());
        } else if let Some(rest) = line.strip_prefix("from ") {
            if let Some((_, imported)) = rest.split_once(" import ") {
                names.extend(imported_names(imported));
            }
        } else if let Some(rest) = line.strip_prefix("import ") {
            names.extend(imported_names(rest));
        } else if let Some((targets, value)) = line.split_once('=') {
            if value.starts_with('=') {
                continue;
            }
            for target in targets.split(',') {
                let target = target.trim().trim_matches(|c| c == '(' || c == ')');
                if identifier(target) == target {
                    names.insert(target.to_string());
                }
            }
        }
    }
    names.remove("");
    names
}

fn identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// Names bound by `a, b as c` (or `(a, b)`) of an import statement.
fn imported_names(list: &str) -> impl Iterator<Item = String> + '_ {
    list.trim_matches(|c| c == '(' || c == ')' || c == ' ')
        .split(',')
        .filter_map(|item| {
            let item = item.trim();
            let bound = item.rsplit(" as ").next()?.trim();
            let bound = bound.split('.').next()?;
            (identifier(bound) == bound && !bound.is_empty()).then(|| bound.to_string())
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_functions_assignments_and_imports() {
        let src = "import json\nfrom m import a, b as c\n\ndef pre(data, context):\n    def inner(): pass\n    return data\n\nasync def post(data, ctx):\n    pass\nagg = pre\nx == 3\none, (two) = make(1), make(2)\n";
        let names = super::top_level_names(src);
        for name in ["json", "a", "c", "pre", "post", "agg", "one", "two"] {
            assert!(names.contains(name), "{name} missing from {names:?}");
        }
        assert!(!names.contains("inner"));
        assert!(!names.contains("b"));
    }
}
